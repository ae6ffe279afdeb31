"""TF-Agents bandit agents from config, and the serving policy with exact propensities."""
from typing import Callable, NamedTuple, Optional

import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.agents import tf_agent
from tf_agents.bandits.agents import lin_ucb_agent
from tf_agents.bandits.agents import linear_bandit_agent
from tf_agents.bandits.agents import linear_thompson_sampling_agent
from tf_agents.bandits.agents import neural_epsilon_greedy_agent
from tf_agents.bandits.policies import linear_bandit_policy
from tf_agents.networks import q_network
from tf_agents.policies import tf_policy
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import policy_step
from tf_agents.trajectories import time_step as ts

from rlops import exploration
from rlops.config import AgentConfig


def create_agent(config: AgentConfig, time_step_spec, action_spec) -> tf_agent.TFAgent:
  """Builds the agent `config.name` for the given (array or tensor) specs, float32 variables."""
  config.validate()
  time_step_spec = tensor_spec.from_spec(time_step_spec)
  action_spec = tensor_spec.from_spec(action_spec)
  if config.is_linear:
    agent_class = (lin_ucb_agent.LinearUCBAgent if config.name == "linucb"
                   else linear_thompson_sampling_agent.LinearThompsonSamplingAgent)
    return agent_class(
        time_step_spec=time_step_spec,
        action_spec=action_spec,
        alpha=config.effective_alpha,
        tikhonov_weight=config.tikhonov_weight,
        gamma=config.forgetting,
        dtype=tf.float32)
  network = q_network.QNetwork(
      input_tensor_spec=time_step_spec.observation,
      action_spec=action_spec,
      fc_layer_params=tuple(config.hidden_units))
  return neural_epsilon_greedy_agent.NeuralEpsilonGreedyAgent(
      time_step_spec=time_step_spec,
      action_spec=action_spec,
      reward_network=network,
      optimizer=tf.keras.optimizers.Adam(learning_rate=config.learning_rate),
      epsilon=config.epsilon)


def restart(observations) -> ts.TimeStep:
  """First time steps for a batch of contexts, batch size from the tensor (works in tf.function)."""
  observations = tf.convert_to_tensor(observations, tf.float32)
  return ts.restart(observations, tf.shape(observations)[:1])


class LinearArms(NamedTuple):
  """Per-arm parameters of a linear agent: theta [K, d] and the inverse of A + lambda·I
  [K, d, d]."""
  theta: tf.Tensor
  inverse_cov: tf.Tensor


def linear_arms(agent: linear_bandit_agent.LinearBanditAgent) -> LinearArms:
  """Solves each arm's linear system once, so that acting is a few small matrix products."""
  cov = tf.stack(agent.cov_matrix)
  dim = cov.shape[-1]
  inverse_cov = tf.linalg.inv(cov + agent._tikhonov_weight * tf.eye(dim, dtype=cov.dtype))  # pylint: disable=protected-access
  theta = tf.einsum("kij,kj->ki", inverse_cov, tf.stack(agent.data_vector))
  return LinearArms(theta=theta, inverse_cov=inverse_cov)


def linear_scores(arms: LinearArms, observations: tf.Tensor, alpha: float,
                  sample: bool = False) -> tf.Tensor:
  """[batch, K] LinUCB scores (mean + alpha·std), or LinTS draws when `sample`."""
  mean = tf.einsum("bi,ki->bk", observations, arms.theta)
  variance = tf.einsum("bi,kij,bj->bk", observations, arms.inverse_cov, observations)
  std = tf.sqrt(tf.maximum(variance, 0.0))
  if sample:
    return mean + alpha * std * tf.random.normal(tf.shape(mean), dtype=mean.dtype)
  return mean + alpha * std


def exploring_action_fn(agent: tf_agent.TFAgent, config: AgentConfig) -> Callable:
  """`act(observations) -> actions` of the agent's own exploration rule, fast.

  Linear agents act from `linear_arms` (the same rule as TF-Agents' policies,
  without a linear solve per arm and call); the neural agent uses its
  epsilon-greedy collect policy.
  """
  if config.is_linear:
    sample = config.name == "lints"

    @tf.function
    def act(observations):
      scores = linear_scores(linear_arms(agent), observations, config.effective_alpha, sample)
      return tf.argmax(scores, axis=-1, output_type=tf.int32)
  else:
    policy = agent.collect_policy

    @tf.function
    def act(observations):
      return policy.action(restart(observations)).action
  return act


def greedy_policy(agent: tf_agent.TFAgent) -> tf_policy.TFPolicy:
  """The deterministic policy that picks the arm of highest estimated reward."""
  if isinstance(agent, linear_bandit_agent.LinearBanditAgent):
    # alpha = 0 and theta given: TF-Agents' fast path, one matmul with the
    # per-arm parameters the agent keeps up to date after every train step.
    return linear_bandit_policy.LinearBanditPolicy(
        action_spec=agent.action_spec,
        cov_matrix=agent.cov_matrix,
        data_vector=agent.data_vector,
        num_samples=agent.num_samples,
        time_step_spec=agent.time_step_spec,
        alpha=0.0,
        theta=agent._variable_collection.theta,  # pylint: disable=protected-access
        tikhonov_weight=agent._tikhonov_weight)  # pylint: disable=protected-access
  if isinstance(agent, neural_epsilon_greedy_agent.NeuralEpsilonGreedyAgent):
    return agent.policy.wrapped_policy
  raise TypeError(f"no greedy policy for {type(agent).__name__}")


def estimated_rewards_fn(agent: tf_agent.TFAgent) -> Callable:
  """`estimated_rewards(observations) -> [batch, K]`: the agent's reward estimate of every arm.

  Linear agents: the per-arm ridge mean (no confidence bonus: with a small
  Tikhonov weight an arm without data would score far above every other and
  take the whole round between two retrainings). The neural agent: its
  reward network's output.
  """
  if isinstance(agent, linear_bandit_agent.LinearBanditAgent):
    return lambda observations: linear_scores(linear_arms(agent), observations, alpha=0.0)
  if isinstance(agent, neural_epsilon_greedy_agent.NeuralEpsilonGreedyAgent):
    network = agent._reward_network  # pylint: disable=protected-access
    return lambda observations: network(observations, training=False)[0]
  raise TypeError(f"no reward estimates for {type(agent).__name__}")


def exploration_probabilities(agent: tf_agent.TFAgent, rule: AgentConfig,
                              trained_records: float, observations: tf.Tensor) -> tf.Tensor:
  """[batch, K] exact probabilities of the serving policy: `exploration.probabilities` over
  the agent's estimated rewards and, with the rule's optimism, the linear upper bounds."""
  if rule.optimism:
    if not isinstance(agent, linear_bandit_agent.LinearBanditAgent):
      raise TypeError(f"optimism needs a linear agent, got {type(agent).__name__}")
    arms = linear_arms(agent)
    return exploration.probabilities(linear_scores(arms, observations, alpha=0.0), rule,
                                      trained_records,
                                      linear_scores(arms, observations, alpha=rule.optimism))
  return exploration.probabilities(estimated_rewards_fn(agent)(observations), rule,
                                    trained_records)


class ExactExplorationPolicy(tf_policy.TFPolicy):
  """The serving policy: an exploration rule over the agent's estimated rewards.

  The action probabilities are `rlops.exploration.probabilities`, the function
  the endpoint, the Evaluator and the regret computations use, so every
  propensity is exact. `info.log_probability` is the log of the chosen arm's
  probability (TF-Agents' own `EpsilonGreedyPolicy` reports 1 - epsilon for
  the greedy arm).
  """

  def __init__(self, agent: tf_agent.TFAgent, rule: AgentConfig, trained_records: float,
               name: Optional[str] = None):
    rule.validate()
    spec = agent.action_spec
    if spec.minimum != 0:
      raise ValueError(f"actions must start at 0, got minimum {spec.minimum}")
    self._agent = agent
    self._rule = rule
    self._trained_records = float(trained_records)
    super().__init__(agent.time_step_spec, spec, emit_log_probability=True, name=name)

  def _variables(self):
    return self._agent.policy.variables()

  def probabilities(self, time_step) -> tf.Tensor:
    """[batch, K] probability of each arm."""
    return exploration_probabilities(self._agent, self._rule, self._trained_records,
                                     tf.cast(time_step.observation, tf.float32))

  def _distribution(self, time_step, policy_state):
    distribution = tfp.distributions.Categorical(
        probs=self.probabilities(time_step), dtype=self.action_spec.dtype)
    return policy_step.PolicyStep(distribution, policy_state, ())


def serving_policy(agent: tf_agent.TFAgent, rule: AgentConfig,
                   trained_records: float) -> ExactExplorationPolicy:
  """The agent's serving policy under the exploration `rule`, for a model trained on
  `trained_records` records."""
  return ExactExplorationPolicy(agent, rule, trained_records)
