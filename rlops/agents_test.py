"""Tests of the agent factory, the fast linear scores and the exact-propensity serving policy."""
import numpy as np
import pytest
import tensorflow as tf

from rlops import agents, environment, exploration, testing, training
from rlops.config import AGENT_NAMES, AgentConfig, ConfigError


def _env(batch_size=8, seed=0):
  return environment.MovieLensEnvironment(testing.small_model(), batch_size=batch_size, seed=seed)


def _trained_agent(name, samples=800):
  env = _env()
  config = AgentConfig(name=name)
  agent = agents.create_agent(config, env.time_step_spec(), env.action_spec())
  training.train_online(agent, env, samples, agents.exploring_action_fn(agent, config))
  return agent


def test_unknown_agent_is_a_config_error():
  env = _env()
  with pytest.raises(ConfigError, match="unknown agent 'dqn'"):
    agents.create_agent(AgentConfig(name="dqn"), env.time_step_spec(), env.action_spec())


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_every_agent_has_a_greedy_and_a_serving_policy(name):
  agent = _trained_agent(name, samples=80)
  observations = testing.small_model().user_vectors[:5]
  greedy = agents.greedy_policy(agent).action(agents.restart(observations)).action.numpy()
  for rule in (AgentConfig(exploration="epsilon_greedy", epsilon=0.2),
               AgentConfig(exploration="inverse_gap")):
    probabilities = agents.serving_policy(agent, rule, 80).probabilities(
        agents.restart(observations))
    np.testing.assert_array_equal(np.argmax(probabilities, axis=1), greedy)


def test_linear_scores_match_tf_agents_linucb():
  agent = _trained_agent("linucb")
  observations = tf.constant(testing.small_model().user_vectors)
  act = agents.exploring_action_fn(agent, AgentConfig(name="linucb"))
  theirs = agent.policy.action(agents.restart(observations)).action.numpy()
  assert (act(observations).numpy() == theirs).mean() > 0.99
  arms = agents.linear_arms(agent)
  np.testing.assert_allclose(arms.theta.numpy(), agent.theta.numpy(), rtol=1e-3, atol=1e-3)


def test_serving_propensities_are_exact():
  agent = _trained_agent("linucb", samples=200)
  epsilon, num_actions = 0.3, testing.small_model().num_movies
  policy = agents.serving_policy(
      agent, AgentConfig(exploration="epsilon_greedy", epsilon=epsilon, propensity_floor=0.0), 200)
  observations = np.repeat(testing.small_model().user_vectors[:1], 20_000, axis=0)
  time_step = agents.restart(observations)
  probabilities = policy.probabilities(time_step).numpy()
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
  greedy = int(agents.greedy_policy(agent).action(agents.restart(observations[:1])).action[0])
  expected = np.full(num_actions, epsilon / num_actions)
  expected[greedy] = 1 - epsilon + epsilon / num_actions
  np.testing.assert_allclose(probabilities[0], expected, rtol=1e-6)
  step = policy.action(time_step, seed=1)
  actions = step.action.numpy()
  np.testing.assert_allclose(np.exp(step.info.log_probability.numpy()), expected[actions],
                             rtol=1e-5)
  frequencies = np.bincount(actions, minlength=num_actions) / len(actions)
  # Binomial standard error at n = 20,000 is at most 0.0035; allow 4 of them.
  np.testing.assert_allclose(frequencies, expected, atol=0.014)


def test_epsilon_must_be_a_probability():
  agent = _trained_agent("linucb", samples=8)
  with pytest.raises(ConfigError, match=r"epsilon must be in \[0, 1\]"):
    agents.serving_policy(agent, AgentConfig(epsilon=1.5), 8)


def test_inverse_gap_policy_follows_the_rule_and_explores_less_when_trained_more():
  agent = _trained_agent("linucb", samples=400)
  observations = testing.small_model().user_vectors
  estimates = agents.estimated_rewards_fn(agent)(tf.constant(observations)).numpy()
  rule = AgentConfig(exploration="inverse_gap", gamma_scale=5.0, propensity_floor=0.0)
  costs = []
  for records in (100, 10_000):
    probabilities = agents.serving_policy(agent, rule, records).probabilities(
        agents.restart(observations)).numpy()
    np.testing.assert_allclose(probabilities, exploration.probabilities(estimates, rule, records),
                               atol=1e-5)
    costs.append(1 - probabilities.max(axis=1).mean())
  assert costs[1] < costs[0] / 5
