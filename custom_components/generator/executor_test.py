"""Tests of the Generator executor with Beam's DirectRunner, on SQLite and on (fake) BigQuery."""
import numpy as np

from custom_components import keys
from custom_components.artifacts import Interactions
from custom_components.generator import executor
from custom_components.generator.component import Generator
from rlops import bigquery
from rlops import bigquery_test
from rlops import simulation
from rlops import testing
from rlops import warehouse as warehouse_lib
from rlops.config import Config, DataConfig, EnvironmentConfig, PipelineConfig


def _generate(config, interactions, warehouse):
  component = Generator(data=config.data, environment=config.environment,
                        samples=config.pipeline.samples, event_time=1000.0, warehouse=warehouse)
  executor.Executor().Do({}, {keys.INTERACTIONS_KEY: [interactions]}, component.exec_properties)


def test_logs_every_record_once_with_the_reward_of_its_own_user(tmp_path):
  config = Config(data=DataConfig(seed=2), environment=EnvironmentConfig(num_movies=10, rank_k=4),
                  pipeline=PipelineConfig(samples=executor.CHUNK_SIZE + 500))
  path = str(tmp_path / "warehouse.sqlite")
  interactions = Interactions()
  interactions.uri = str(tmp_path / "interactions")
  _generate(config, interactions, path)

  records = warehouse_lib.Warehouse(path).rewarded_records()
  samples = config.pipeline.samples
  expected_ids = [executor.request_id("gen-1000", index) for index in range(samples)]
  assert sorted(records["request_id"]) == expected_ids  # no duplicates, no gaps
  assert interactions.get_int_custom_property("record_count") == samples
  model = simulation.MovieLensModel.from_config(config)
  np.testing.assert_allclose(records["propensity"], 1.0 / model.num_movies)
  # Each reward is the approximate rating of exactly the user whose context was logged.
  users = testing.users_of(model, records["observation"])
  np.testing.assert_allclose(records["reward"], model.reward(users, records["action"]), rtol=1e-5)
  # Uniform actions.
  counts = np.bincount(records["action"], minlength=model.num_movies)
  assert counts.min() > 0.7 * samples / model.num_movies


def test_writes_every_record_exactly_once_to_bigquery_by_merge(tmp_path, monkeypatch):
  # Beam's DirectRunner runs in memory, in this process: the workers get the fake client.
  client = bigquery_test.FakeClient()
  projects = []
  monkeypatch.setattr(bigquery, "make_client", lambda project: projects.append(project) or client)
  config = Config(environment=EnvironmentConfig(num_movies=10, rank_k=4),
                  pipeline=PipelineConfig(samples=2 * executor.CHUNK_SIZE + 300))
  interactions = Interactions()
  interactions.uri = str(tmp_path / "interactions")
  _generate(config, interactions, bigquery_test.URI)

  assert projects and set(projects) == {bigquery_test.PROJECT}
  # Each worker's setup makes sure the tables exist; the first creates them.
  setup = [request for request in client.requests if request[0] != "query"]
  assert setup == (bigquery_test.ENSURE_REQUESTS +
                   bigquery_test.EXISTING_REQUESTS * (len(projects) - 1))
  queries = [request[1] for request in client.requests if request[0] == "query"]
  chunks = -(-config.pipeline.samples // executor.CHUNK_SIZE)
  assert sorted(queries) == sorted([bigquery_test.FEEDBACK_MERGE] * chunks +
                                   [bigquery_test.PREDICTIONS_MERGE] * chunks)
  table = f"{bigquery_test.PROJECT}.{bigquery_test.DATASET}"
  rows = bigquery_test.merged_rows(client)
  expected_ids = [executor.request_id("gen-1000", index)
                  for index in range(config.pipeline.samples)]
  assert sorted(row["request_id"] for row in rows[f"{table}.predictions"]) == expected_ids
  assert sorted(row["request_id"] for row in rows[f"{table}.feedback"]) == expected_ids
  model = simulation.MovieLensModel.from_config(config)
  assert {(row["propensity"], row["model_version"], row["source"], len(row["observation"]))
          for row in rows[f"{table}.predictions"]} == {
              (1.0 / model.num_movies, executor.LOGGING_POLICY, "generator", model.rank_k)}
  assert interactions.get_string_custom_property("warehouse") == bigquery_test.URI
  assert interactions.get_int_custom_property("record_count") == config.pipeline.samples
