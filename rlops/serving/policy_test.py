"""Tests of the serving rule and of what a version must satisfy before it serves."""
import json
import os
import shutil

import numpy as np
import pytest

from rlops import model_io, testing, training
from rlops.config import AgentConfig
from rlops.serving import policy


@pytest.mark.parametrize("config", [
    AgentConfig(name="neural_epsilon_greedy", epsilon=0.2, hidden_units=(8,)),
    AgentConfig(exploration="inverse_gap", gamma_scale=5.0, propensity_floor=0.01),
    AgentConfig(name="lints", exploration="inverse_gap", gamma_scale=5.0, optimism=0.5),
])
def test_the_endpoint_serves_the_saved_policys_exact_probabilities(tmp_path, config):
  model = testing.small_model()
  agent = model_io.new_agent(config, model.num_movies, model.rank_k)
  rng = np.random.default_rng(1)
  users = rng.integers(0, model.num_users, size=512)
  actions = rng.integers(0, model.num_movies, size=512).astype(np.int32)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions),
                           batch_size=128)
  model_io.save(agent, config, model.num_movies, model.rank_k, str(tmp_path / "5"),
                {"trained_records": 512.0})
  serving_model = policy.load_model(str(tmp_path / "5"), "5")
  observations = model.observe(np.arange(model.num_users))
  # The endpoint's NumPy path and the saved TF policy compute the same rule.
  probabilities = model_io.probabilities(model_io.load_serving_policy(str(tmp_path / "5")),
                                         observations)
  np.testing.assert_allclose(serving_model.probabilities(observations), probabilities, atol=1e-5)
  actions, propensities = serving_model.act(np.repeat(observations[:1], 20000, axis=0),
                                            np.random.default_rng(0))
  np.testing.assert_allclose(propensities, probabilities[0][actions], atol=1e-5)
  # Actions are drawn with exactly those probabilities.
  frequencies = np.bincount(actions, minlength=model.num_movies) / len(actions)
  np.testing.assert_allclose(frequencies, probabilities[0], atol=0.015)


def _edited(trained_model: str, directory: str, **changes) -> str:
  """A copy of `trained_model` whose metadata has `changes` (nested for "agent")."""
  shutil.copytree(trained_model, directory)
  metadata = model_io.read_metadata(directory)
  metadata["agent"].update(changes.pop("agent", {}))
  metadata.update(changes)
  with open(os.path.join(directory, model_io.METADATA_FILE), "w") as f:
    json.dump(metadata, f)
  return directory


@pytest.mark.parametrize("changes, error, reason", [
    ({"epsilon": 1.5, "agent": {"epsilon": 1.5}}, ValueError, "epsilon must be in"),
    ({"epsilon": 0.25}, ValueError, "differs from the agent's"),
    ({"rank_k": 0}, ValueError, "rank_k must be between"),
    ({"num_movies": "20"}, ValueError, "num_movies must be an integer"),
    ({"model_version": ""}, ValueError, "model_version must be a non-empty string"),
    ({"model_version": "v" * 65}, ValueError, "longer than 64 bytes"),
    ({"model_version": "v\ud800"}, ValueError, "not valid Unicode"),  # Its rows not storable.
    ({"agent": {"name": "neural_epsilon_greedy", "hidden_units": [8]}}, AssertionError,
     "not bound to checkpointed values"),  # Another agent's checkpoint.
    # NaN fails every comparison: each setting is checked for what it must be.
    ({"agent": {"exploration": "inverse_gap", "gamma_scale": float("nan")}}, ValueError,
     "agent.gamma_scale must be a finite number, got nan"),
    ({"agent": {"exploration": "inverse_gap"}, "trained_records": float("nan")}, ValueError,
     "trained_records must be a finite non-negative number"),
    ({"agent": {"tikhonov_weight": "0.001"}}, ValueError,
     "agent.tikhonov_weight must be a finite number, got '0.001'"),
    ({"agent": {"name": "neural_epsilon_greedy", "hidden_units": ["a"]}}, ValueError,
     "agent.hidden_units must be a list of integers"),
    ({"agent": {"name": "neural_epsilon_greedy", "hidden_units": [10**30]}}, ValueError,
     "hidden_units must be layer sizes"),
    # A floor above 1 / K: the logged propensities would not be the policy's.
    ({"agent": {"propensity_floor": 0.5}}, ValueError, "propensity_floor must be at most"),
])
def test_a_version_that_fails_validation_does_not_load(tmp_path, trained_model, changes, error,
                                                       reason):
  directory = _edited(trained_model, str(tmp_path / "bad"), **changes)
  with pytest.raises(error, match=reason):
    policy.load_model(directory, None)


def test_a_version_whose_rule_gives_no_distribution_does_not_load(tmp_path, trained_model,
                                                                  monkeypatch):
  monkeypatch.setattr(policy.exploration, "probabilities",
                      lambda estimates, *args: np.full(estimates.shape, np.nan))
  with pytest.raises(ValueError, match="gives no distribution over its actions"):
    policy.load_model(trained_model, None)
