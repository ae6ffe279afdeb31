"""Tests of the Generator executor on a real SQLite warehouse with Beam's DirectRunner."""
import numpy as np

from custom_components.artifacts import Interactions
from custom_components.generator import executor
from rlops import environment
from rlops import warehouse as warehouse_lib
from rlops.config import Config, DataConfig, EnvironmentConfig, PipelineConfig


def test_logs_every_record_once_with_the_reward_of_its_own_user(tmp_path):
  config = Config(data=DataConfig(seed=2), environment=EnvironmentConfig(num_movies=10, rank_k=4),
                  pipeline=PipelineConfig(samples=executor.CHUNK_SIZE + 500))
  path = str(tmp_path / "warehouse.sqlite")
  interactions = Interactions()
  interactions.uri = str(tmp_path / "interactions")
  executor.Executor().Do({}, {"interactions": [interactions]},
                         {"config": config.to_json(), "event_time": 1000.0, "warehouse": path})

  records = warehouse_lib.Warehouse(path).rewarded_records()
  samples = config.pipeline.samples
  expected_ids = [executor.request_id("gen-1000", index) for index in range(samples)]
  assert sorted(records["request_id"]) == expected_ids  # no duplicates, no gaps
  assert interactions.get_int_custom_property("record_count") == samples
  model = environment.MovieLensModel.from_config(config)
  np.testing.assert_allclose(records["propensity"], 1.0 / model.num_movies)
  # Each reward is the approximate rating of exactly the user whose context was logged.
  distances = ((records["observation"][:, None, :] - model.user_vectors[None]) ** 2).sum(-1)
  users = distances.argmin(axis=1)
  np.testing.assert_allclose(records["reward"], model.reward(users, records["action"]), rtol=1e-5)
  # Uniform actions.
  counts = np.bincount(records["action"], minlength=model.num_movies)
  assert counts.min() > 0.7 * samples / model.num_movies
