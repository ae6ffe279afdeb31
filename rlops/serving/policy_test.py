"""Tests of the serving rule and of what a version must satisfy before it serves."""
import json
import os
import shutil

import numpy as np
import pytest

from rlops import model_io, testing, training
from rlops.config import AgentConfig
from rlops.serving import policy


def test_neural_model_serves_its_greedy_arm(tmp_path):
  model = testing.small_model()
  config = AgentConfig(name="neural_epsilon_greedy", epsilon=0.2, hidden_units=(8,))
  agent = model_io.new_agent(config, model.num_movies, model.rank_k)
  rng = np.random.default_rng(1)
  users = rng.integers(0, model.num_users, size=512)
  actions = rng.integers(0, model.num_movies, size=512).astype(np.int32)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions),
                           batch_size=128)
  model_io.save(agent, config, model.num_movies, model.rank_k, str(tmp_path / "5"), {})
  serving_model = policy.load_model(str(tmp_path / "5"), "5")
  observations = model.observe(np.arange(50))
  probabilities = model_io.probabilities(model_io.load_serving_policy(str(tmp_path / "5")),
                                         observations)
  np.testing.assert_array_equal(serving_model.greedy(observations), probabilities.argmax(axis=1))
  actions, propensities = serving_model.act(observations, np.random.default_rng(0))
  greedy = actions == probabilities.argmax(axis=1)
  assert set(propensities[greedy]) == {1 - 0.2 + 0.2 / model.num_movies}
  assert set(propensities[~greedy]) <= {0.2 / model.num_movies}


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
    ({"agent": {"name": "neural_epsilon_greedy", "hidden_units": [8]}}, AssertionError,
     "not bound to checkpointed values"),  # Another agent's checkpoint.
])
def test_a_version_that_fails_validation_does_not_load(tmp_path, trained_model, changes, error,
                                                       reason):
  directory = _edited(trained_model, str(tmp_path / "bad"), **changes)
  with pytest.raises(error, match=reason):
    policy.load_model(directory, "bad")
