"""Tests of off-policy evaluation on a synthetic linear-reward bandit with known values."""
from typing import NamedTuple

import numpy as np
import pytest

from rlops import off_policy

DIM, ARMS, NOISE = 5, 6, 1.0
THETA = np.random.default_rng(0).normal(size=(DIM, ARMS))
LOGGING_SCORES = np.random.default_rng(1).normal(scale=0.3, size=(DIM, ARMS))
LOGGING = ("uniform", "softmax")
ESTIMATORS = ("ips", "snips", "dr")


class Log(NamedTuple):
  observations: np.ndarray
  actions: np.ndarray
  propensities: np.ndarray
  rewards: np.ndarray
  logging_probs: np.ndarray
  expected_rewards: np.ndarray


def _logging_probs(observations: np.ndarray, logging: str) -> np.ndarray:
  if logging == "uniform":
    return np.full((len(observations), ARMS), 1 / ARMS)
  scores = np.exp(observations @ LOGGING_SCORES)
  return scores / scores.sum(axis=1, keepdims=True)


def _log(num: int, seed: int, logging: str = "uniform") -> Log:
  """`num` records of the logging policy on the bandit with rewards x·theta_a + N(0, NOISE²)."""
  rng = np.random.default_rng(seed)
  observations = rng.normal(size=(num, DIM))
  expected = observations @ THETA
  probs = _logging_probs(observations, logging)
  actions = (rng.random((num, 1)) < probs.cumsum(axis=1)).argmax(axis=1)
  rows = np.arange(num)
  rewards = expected[rows, actions] + rng.normal(scale=NOISE, size=num)
  return Log(observations, actions, probs[rows, actions], rewards, probs, expected)


def _epsilon_greedy(expected_rewards: np.ndarray, epsilon: float) -> np.ndarray:
  """Action probabilities of epsilon-greedy over the truly best arm."""
  best = np.eye(ARMS)[expected_rewards.argmax(axis=1)]
  return (1 - epsilon) * best + epsilon / ARMS


def _estimate(log: Log, target_probs: np.ndarray, **kwargs) -> dict:
  return off_policy.estimate_policy_value(
      target_probs, log.observations, log.actions, log.propensities, log.rewards, ARMS, **kwargs)


def test_estimators_match_hand_computed_values():
  target = np.array([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])
  actions, propensities, rewards = np.array([0, 1, 1]), np.array([0.5, 0.25, 0.5]), np.ones(3)
  # Weights 1, 4 and 0.
  assert off_policy.ips(target, actions, propensities, rewards) == pytest.approx(5 / 3)
  assert off_policy.snips(target, actions, propensities, rewards) == pytest.approx(1.0)
  estimates = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 5.0]])
  # Direct terms 1, 3, 1; corrections 1 * (1 - 2), 4 * (1 - 3), 0.
  assert off_policy.doubly_robust(target, actions, propensities, rewards,
                                  estimates) == pytest.approx((0 - 5 + 1) / 3)
  assert off_policy.policy_value(target, estimates) == pytest.approx(5 / 3)


@pytest.mark.parametrize("logging", LOGGING)
def test_estimates_are_within_three_standard_errors_of_the_true_value(logging):
  log = _log(20_000, seed=10, logging=logging)
  target = _epsilon_greedy(log.expected_rewards, epsilon=0.1)
  true_value = off_policy.policy_value(target, log.expected_rewards)
  result = _estimate(log, target)
  for name in ESTIMATORS:
    # The 95% interval spans about 2 * 1.96 standard errors.
    standard_error = (result[name]["high"] - result[name]["low"]) / (2 * 1.96)
    assert 0 < standard_error < 0.1, name
    assert abs(result[name]["value"] - true_value) < 3 * standard_error, name


def test_doubly_robust_varies_less_than_ips():
  estimates = {"ips": [], "dr": []}
  for seed in range(30):
    log = _log(500, seed=100 + seed)
    target = _epsilon_greedy(log.expected_rewards, epsilon=0.1)
    args = (target, log.actions, log.propensities, log.rewards)
    estimates["ips"].append(off_policy.ips(*args))
    model = off_policy.fit_reward_model(log.observations, log.actions, log.rewards, ARMS)
    estimates["dr"].append(off_policy.doubly_robust(*args, model))
  assert np.std(estimates["dr"]) < 0.8 * np.std(estimates["ips"])


@pytest.mark.parametrize("logging", LOGGING)
def test_evaluating_the_logging_policy_gives_the_mean_reward(logging):
  log = _log(1000, seed=20, logging=logging)
  args = (log.logging_probs, log.actions, log.propensities, log.rewards)
  mean = np.mean(log.rewards)
  assert off_policy.ips(*args) == pytest.approx(mean, rel=1e-12, abs=0)
  assert off_policy.snips(*args) == pytest.approx(mean, rel=1e-12, abs=0)
  result = _estimate(log, log.logging_probs)
  assert result["effective_sample_size"] == pytest.approx(1000)


def test_bootstrap_intervals_cover_the_true_value():
  population = _log(200_000, seed=1)
  true_value = off_policy.policy_value(_epsilon_greedy(population.expected_rewards, 0.1),
                                       population.expected_rewards)
  covered = {name: 0 for name in ESTIMATORS}
  seeds = range(200, 240)
  for seed in seeds:
    log = _log(1000, seed=seed, logging="softmax")
    result = _estimate(log, _epsilon_greedy(log.expected_rewards, 0.1), seed=seed)
    for name in ESTIMATORS:
      low, value, high = result[name]["low"], result[name]["value"], result[name]["high"]
      assert low < value < high, (seed, name)
      covered[name] += low <= true_value <= high
  for name in ESTIMATORS:
    assert covered[name] >= 0.8 * len(seeds), (name, covered)


def test_narrower_confidence_gives_a_nested_interval():
  log = _log(2000, seed=30)
  target = _epsilon_greedy(log.expected_rewards, 0.1)
  wide, narrow = _estimate(log, target, confidence=0.95), _estimate(log, target, confidence=0.5)
  for name in ESTIMATORS:
    assert wide[name]["low"] < narrow[name]["low"] < narrow[name]["high"] < wide[name]["high"]


def test_reward_model_is_cross_fitted():
  log = _log(400, seed=40)
  changed_rewards = log.rewards.copy()
  changed_rewards[0] += 100.0
  before, after = (off_policy.fit_reward_model(log.observations, log.actions, rewards, ARMS)
                   for rewards in (log.rewards, changed_rewards))
  np.testing.assert_array_equal(after[0], before[0])
  # The change does reach the records of the other fold.
  assert np.sum(np.any(after != before, axis=1)) >= 100


def test_reward_model_recovers_the_linear_rewards():
  log = _log(20_000, seed=50, logging="softmax")
  estimates = off_policy.fit_reward_model(log.observations, log.actions, log.rewards, ARMS,
                                          folds=3)
  assert np.mean(np.abs(estimates - log.expected_rewards)) < 0.08


def test_reward_model_falls_back_to_the_mean_for_an_arm_never_taken():
  log = _log(200, seed=60)
  actions = np.minimum(log.actions, ARMS - 2)
  estimates = off_policy.fit_reward_model(log.observations, actions, log.rewards, ARMS,
                                          folds=2)
  # Each fold's estimate for the unseen arm is the other fold's mean reward.
  values = np.unique(estimates[:, -1])
  assert len(values) == 2
  for value in values:
    np.testing.assert_allclose(value, log.rewards[estimates[:, -1] != value].mean())


@pytest.mark.parametrize("logging", LOGGING)
def test_a_better_policy_gets_a_higher_estimate(logging):
  log = _log(3000, seed=70, logging=logging)
  greedy = _estimate(log, _epsilon_greedy(log.expected_rewards, epsilon=0.0))
  uniform = _estimate(log, np.full((3000, ARMS), 1 / ARMS))
  for name in ESTIMATORS:
    assert greedy[name]["low"] > uniform[name]["high"], name


def _valid_args(num: int = 4):
  return dict(target_probs=np.full((num, 3), 1 / 3), actions=np.arange(num) % 3,
              propensities=np.full(num, 0.5), rewards=np.ones(num))


@pytest.mark.parametrize("change, message", [
    (dict(rewards=np.ones(3)), "one row per record, got lengths .*rewards=3"),
    (dict(propensities=np.array([0.5, 0.0, 0.5, 0.5])), r"propensities must be in \(0, 1\]"),
    (dict(propensities=np.array([0.5, 1.5, 0.5, 0.5])), r"propensities must be in \(0, 1\]"),
    (dict(target_probs=np.full((4, 3), 0.3)), "rows must sum to 1 .*row 0 sums to 0.9"),
    (dict(target_probs=np.array([[1.5, -0.5, 0.0]] * 4)), "must be non-negative"),
    (dict(actions=np.array([0, 1, 3, 0])), r"actions must be in \[0, 3\)"),
    (dict(actions=np.array([0, -1, 2, 0])), r"actions must be in \[0, 3\)"),
    (dict(actions=np.array([0.0, 1.0, 2.0, 0.0])), "actions must be integers"),
    (dict(rewards=np.array([1.0, np.nan, 1.0, 1.0])), "rewards must be finite"),
    (_valid_args(num=0), "empty: there are no records"),
])
@pytest.mark.parametrize("estimator", [off_policy.ips, off_policy.snips])
def test_invalid_records_are_rejected(estimator, change, message):
  with pytest.raises(ValueError, match=message):
    estimator(**{**_valid_args(), **change})


def test_invalid_inputs_to_the_other_entry_points_are_rejected():
  args = _valid_args()
  observations = np.zeros((4, 2))
  with pytest.raises(ValueError, match="reward_estimates must have the shape"):
    off_policy.doubly_robust(**args, reward_estimates=np.zeros((4, 2)))
  with pytest.raises(ValueError, match="one row per record, got lengths observations=3"):
    off_policy.fit_reward_model(observations[:3], args["actions"], args["rewards"], 3)
  with pytest.raises(ValueError, match="folds must be between 2"):
    off_policy.fit_reward_model(observations, args["actions"], args["rewards"], 3, folds=5)
  with pytest.raises(ValueError, match="num_actions is 4"):
    off_policy.estimate_policy_value(observations=observations, num_actions=4, **args)
  with pytest.raises(ValueError, match="probability 0 to every logged action"):
    off_policy.estimate_policy_value(**{**args, "target_probs": np.eye(3)[[1, 2, 0, 2]]},
                                     observations=observations, num_actions=3)
  with pytest.raises(ValueError, match="action_probs rows must sum to 1"):
    off_policy.policy_value(np.full((2, 2), 0.4), np.zeros((2, 2)))
