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
  """Per-arm parameters of a linear agent: theta [K, d] and the inverse of A + lambda·I [K, d, d]."""
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


class ExactEpsilonGreedyPolicy(tf_policy.TFPolicy):
  """Epsilon-greedy over a deterministic policy, with exact propensities.

  The greedy arm has probability 1 - epsilon + epsilon / K and every other arm
  epsilon / K, so every arm keeps a positive propensity for off-policy
  estimation. `info.log_probability` is the log of the chosen arm's exact
  probability (TF-Agents' own `EpsilonGreedyPolicy` reports 1 - epsilon for
  the greedy arm).
  """

  def __init__(self, greedy: tf_policy.TFPolicy, epsilon: float, name: Optional[str] = None):
    if not 0.0 <= epsilon <= 1.0:
      raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    self._greedy = greedy
    self._epsilon = epsilon
    spec = greedy.action_spec
    if spec.minimum != 0:
      raise ValueError(f"actions must start at 0, got minimum {spec.minimum}")
    self._num_actions = int(spec.maximum) + 1
    super().__init__(greedy.time_step_spec, spec, emit_log_probability=True, name=name)

  @property
  def epsilon(self) -> float:
    return self._epsilon

  def _variables(self):
    return self._greedy.variables()

  def probabilities(self, time_step) -> tf.Tensor:
    """[batch, K] probability of each arm."""
    greedy_action = self._greedy.action(time_step).action
    one_hot = tf.one_hot(greedy_action, self._num_actions)
    return self._epsilon / self._num_actions + (1.0 - self._epsilon) * one_hot

  def _distribution(self, time_step, policy_state):
    distribution = tfp.distributions.Categorical(
        probs=self.probabilities(time_step), dtype=self.action_spec.dtype)
    return policy_step.PolicyStep(distribution, policy_state, ())


def serving_policy(agent: tf_agent.TFAgent, epsilon: float) -> ExactEpsilonGreedyPolicy:
  return ExactEpsilonGreedyPolicy(greedy_policy(agent), epsilon)
