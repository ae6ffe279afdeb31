"""Tests of the offline comparison of learning settings."""
import numpy as np
import pytest

from rlops import offline_evaluation, testing
from rlops.config import AgentConfig, ConfigError


def _logged(model, count, seed=0):
  rng = np.random.default_rng(seed)
  users = rng.integers(0, model.num_users, size=count)
  actions = rng.integers(0, model.num_movies, size=count).astype(np.int32)
  return {"event_time": np.arange(count, dtype=np.float64), "observation": model.observe(users),
          "action": actions, "propensity": np.full(count, 1 / model.num_movies, np.float32),
          "reward": model.reward(users, actions)}


def test_settings_parse_over_the_base_and_are_validated():
  setting = offline_evaluation.parse_setting("name=lints,alpha=0.5,exploration=inverse_gap,"
                                             "hidden_units=8x4", AgentConfig())
  assert setting == AgentConfig(name="lints", alpha=0.5, exploration="inverse_gap",
                                hidden_units=(8, 4))
  assert offline_evaluation.describe(
      {**vars(setting), "hidden_units": [8, 4]}, AgentConfig()) == (
          "name=lints,alpha=0.5,hidden_units=8x4,exploration=inverse_gap")
  for bad in ("colour=red", "alpha", "forgetting=2"):
    with pytest.raises(ConfigError):
      offline_evaluation.parse_setting(bad, AgentConfig())


def test_a_learning_setting_ranks_above_one_that_cannot_learn():
  model = testing.small_model()
  records = _logged(model, 1500)
  learns = AgentConfig(exploration="inverse_gap")
  # A huge ridge penalty keeps every estimate at 0: the greedy arm is arbitrary.
  stuck = AgentConfig(exploration="inverse_gap", tikhonov_weight=1e9)
  rows = offline_evaluation.compare(records, [stuck, learns], model.num_movies, model.rank_k,
                                    bootstrap_samples=20)
  assert [row["setting"]["tikhonov_weight"] for row in rows] == [0.001, 1e9]
  assert rows[0]["train_records"] == 1050 and rows[0]["eval_records"] == 450
  assert rows[0]["versus_logging"]["dr"]["low"] > 0  # better than uniform beyond doubt
