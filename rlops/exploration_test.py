"""Tests of the exploration rules: exact probabilities on NumPy and TF, shrinking cost."""
import numpy as np
import pytest
import tensorflow as tf

from rlops import exploration
from rlops.config import AgentConfig, Config, ConfigError, EnvironmentConfig

INVERSE_GAP = AgentConfig(exploration="inverse_gap", gamma_scale=2.0, propensity_floor=0.0)


def test_inverse_gap_gives_each_other_arm_its_formula_and_the_greedy_arm_the_rest():
  rewards = np.array([[1.0, 3.0, 2.0, 3.0]])
  probabilities = exploration.probabilities(rewards, INVERSE_GAP, trained_records=100)
  gamma = 2.0 * 10
  expected = np.array([1 / (4 + gamma * 2), 0.0, 1 / (4 + gamma * 1), 1 / 4])
  expected[1] = 1 - expected.sum()  # ties: the lower index is the greedy arm
  np.testing.assert_allclose(probabilities[0], expected)


@pytest.mark.parametrize("rule", [
    INVERSE_GAP, AgentConfig(exploration="inverse_gap", propensity_floor=0.01),
    AgentConfig(exploration="epsilon_greedy", epsilon=0.3, propensity_floor=0.0),
    AgentConfig(exploration="epsilon_greedy", epsilon=0.0, propensity_floor=0.02)])
def test_numpy_and_tensorflow_agree_and_rows_are_distributions(rule):
  rewards = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
  numpy_probabilities = exploration.probabilities(rewards, rule, 400)
  traced = tf.function(lambda r: exploration.probabilities(r, rule, 400))
  np.testing.assert_allclose(traced(tf.constant(rewards)).numpy(), numpy_probabilities, atol=1e-6)
  np.testing.assert_allclose(numpy_probabilities.sum(axis=1), 1.0, atol=1e-9)
  assert numpy_probabilities.min() >= rule.propensity_floor - 1e-9
  np.testing.assert_array_equal(numpy_probabilities.argmax(axis=1), rewards.argmax(axis=1))


def test_optimism_measures_each_gap_to_the_upper_bound_and_keeps_the_greedy_arm():
  rule = AgentConfig(exploration="inverse_gap", gamma_scale=2.0, optimism=1.0)
  rewards = np.array([[1.0, 3.0, 2.0, 0.0]])
  upper = np.array([[2.5, 3.5, 2.5, 9.0]])  # Arm 3 is barely known: its bound passes the best.
  probabilities = exploration.probabilities(rewards, rule, 100, upper)
  gamma = 2.0 * 10
  expected = np.array([1 / (4 + gamma * 0.5), 0.0, 1 / (4 + gamma * 0.5), 1 / 4])
  expected[1] = 1 - expected.sum()  # The best estimate stays greedy; no arm gets above 1 / K.
  np.testing.assert_allclose(probabilities[0], expected)
  traced = tf.function(lambda r, u: exploration.probabilities(r, rule, 100, u))
  np.testing.assert_allclose(traced(tf.constant(rewards), tf.constant(upper)).numpy(),
                             probabilities, atol=1e-12)


def test_epsilon_greedy_is_exact():
  rule = AgentConfig(exploration="epsilon_greedy", epsilon=0.2, propensity_floor=0.0)
  probabilities = exploration.probabilities(np.array([[0.0, 1.0, 0.5, 0.2]]), rule, 10)
  np.testing.assert_allclose(probabilities[0], [0.05, 0.85, 0.05, 0.05])


def test_inverse_gap_cost_falls_with_training_records():
  rng = np.random.default_rng(1)
  true_rewards = rng.uniform(1, 5, size=(200, 20))
  regrets = [exploration.expected_regret(exploration.probabilities(true_rewards, INVERSE_GAP, n),
                                         true_rewards) for n in (100, 1_000, 10_000, 100_000)]
  assert all(later < earlier for earlier, later in zip(regrets, regrets[1:]))
  assert regrets[-1] < regrets[0] / 10  # cost ~ 1 / gamma ~ 1 / sqrt(n)


def test_settings_are_validated_and_round_trip():
  with pytest.raises(ConfigError, match="unknown exploration rule"):
    AgentConfig(exploration="softmax").validate()
  with pytest.raises(ConfigError, match="forgetting"):
    AgentConfig(forgetting=0.0).validate()
  with pytest.raises(ConfigError, match="optimism needs a linear agent"):
    AgentConfig(name="neural_epsilon_greedy", exploration="inverse_gap", optimism=1.0).validate()
  with pytest.raises(ConfigError, match="optimism needs a linear agent"):
    AgentConfig(optimism=1.0).validate()  # epsilon_greedy has no gaps.
  with pytest.raises(ConfigError, match="propensity_floor must be at most 1 / num_movies"):
    Config(environment=EnvironmentConfig(num_movies=20, rank_k=4),
           agent=AgentConfig(propensity_floor=0.1)).validate()
  config = Config(agent=AgentConfig(exploration="inverse_gap", gamma_scale=3.0,
                                    propensity_floor=0.002, forgetting=0.9, optimism=0.5))
  assert Config.from_json(config.to_json()) == config
