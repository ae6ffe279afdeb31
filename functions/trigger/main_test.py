"""Tests of the Trigger on a real local deployment: threshold and mutual exclusion."""
import sqlite3
import threading
import time
import types

from functions.trigger import main as trigger
from rlops import simulation, testing
from rlops import warehouse as warehouse_lib
from rlops.config import Config, DataConfig, EnvironmentConfig, GcpConfig, PipelineConfig
from tfx_pipeline import local_runner


def _serve_traffic(config, requests):
  paths = local_runner.LocalPaths(config.workdir)
  store = warehouse_lib.Warehouse(paths.warehouse)
  testing.log_policy_traffic(simulation.MovieLensModel.from_config(config), paths.serving, store,
                             requests, seed=requests)
  store.close()
  time.sleep(1.1)  # Let the second of these records end: windows end at whole seconds.


def test_fires_only_past_its_threshold_and_never_twice_at_once(tmp_path):
  config = Config(data=DataConfig(seed=4), environment=EnvironmentConfig(num_movies=10, rank_k=5),
                  pipeline=PipelineConfig(samples=2000, bootstrap_samples=50),
                  workdir=str(tmp_path / "work"))
  local_runner.run(config, "startup")
  time.sleep(1.1)
  outcome = trigger.maybe_retrain(config, threshold=1)
  assert not outcome["started"] and outcome["new_records"] == 0

  _serve_traffic(config, 1500)
  outcome = trigger.maybe_retrain(config, threshold=1501)
  assert not outcome["started"] and outcome["new_records"] == 1500
  assert "fewer than 1501" in outcome["reason"]

  with trigger._exclusive(config.workdir) as held:  # pylint: disable=protected-access
    assert held
    assert trigger.maybe_retrain(config, threshold=1)["reason"] == "a retraining run is in progress"

  outcome = trigger.maybe_retrain(config, threshold=1500)
  assert outcome["started"] and outcome["result"]["trained"] and outcome["new_records"] == 1500

  _serve_traffic(config, 1000)
  outcomes = []
  threads = [threading.Thread(target=lambda: outcomes.append(trigger.maybe_retrain(config, 500)))
             for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=300)
  assert sorted(o["started"] for o in outcomes) == [False, True]


def test_trains_exactly_the_window_it_counted(tmp_path):
  config = Config(data=DataConfig(seed=4), environment=EnvironmentConfig(num_movies=10, rank_k=5),
                  pipeline=PipelineConfig(samples=1000, bootstrap_samples=20),
                  workdir=str(tmp_path / "work"))
  local_runner.run(config, "startup")
  time.sleep(1.1)
  counted_at = float(int(time.time()))
  paths = local_runner.LocalPaths(config.workdir)
  store = warehouse_lib.Warehouse(paths.warehouse)
  model = simulation.MovieLensModel.from_config(config)
  testing.log_policy_traffic(model, paths.serving, store, 300, seed=1, event_time=counted_at - 0.5)
  # Logged after the count's end: a run that recomputed its window later would train on them.
  testing.log_policy_traffic(model, paths.serving, store, 200, seed=2, event_time=counted_at + 0.5)
  store.close()
  time.sleep(max(0.0, counted_at + 1.2 - time.time()))

  outcome = trigger.maybe_retrain(config, threshold=300, now=counted_at)
  assert outcome["started"] and outcome["new_records"] == 300
  assert outcome["window"]["end"] == counted_at
  result = outcome["result"]
  assert result["trained"] and result["window"] == outcome["window"]
  assert result["samples"] + result["evaluation"]["eval_records"] == 300


class _SqliteBigQuery:
  """Stands in for the BigQuery client: runs the exact SQL text on SQLite, the dataset
  attached under its BigQuery name so "`project.dataset`.predictions" resolves."""

  def __init__(self, path: str, gcp):
    self.queries = []
    self._connection = sqlite3.connect(":memory:")
    self._connection.execute("ATTACH DATABASE ? AS ?", (path, f"{gcp.project}.{gcp.dataset}"))

  def query(self, sql):
    self.queries.append(sql)
    cursor = self._connection.execute(sql)
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    return types.SimpleNamespace(result=lambda: rows)


class _FakeAiplatform:
  """Records the Vertex AI requests; answers with the given jobs and artifacts."""

  def __init__(self, running=(), window_end=None):
    self.requests = []
    fake = self

    class PipelineJob:
      def __init__(self, **kwargs):
        fake.requests.append(("PipelineJob", kwargs))
        self.resource_name = "projects/p/locations/r/pipelineJobs/job-2"

      def submit(self, **kwargs):
        fake.requests.append(("submit", kwargs))

      @staticmethod
      def list(**kwargs):
        fake.requests.append(("PipelineJob.list", kwargs))
        return [types.SimpleNamespace(resource_name=name) for name in running]

    class Artifact:
      @staticmethod
      def list(**kwargs):
        fake.requests.append(("Artifact.list", kwargs))
        metadata = {} if window_end is None else {"window_end": window_end, "span": 3}
        return [types.SimpleNamespace(metadata=metadata)]

    self.PipelineJob, self.Artifact = PipelineJob, Artifact  # pylint: disable=invalid-name


def test_production_trigger_counts_in_bigquery_sql_and_submits_once(tmp_path):
  gcp = GcpConfig(project="my-rlops-project", region="us-central1", bucket="gs://my-rlops-bucket",
                  dataset="rlops", endpoint_name="rlops-movielens",
                  pipeline_image="europe-docker.pkg.dev/p/r/pipeline:1",
                  serving_image="europe-docker.pkg.dev/p/r/serving:1")
  config = Config(gcp=gcp).validate()
  path = str(tmp_path / "warehouse.sqlite")
  store = warehouse_lib.Warehouse(path)
  for index, event_time in enumerate([500.0] * 5 + [1500.0] * 7):
    rid = f"r{index}"
    store.insert_predictions([{"request_id": rid, "event_time": event_time, "observation": [1.0],
                               "action": 0, "propensity": 0.5, "model_version": "1",
                               "source": "endpoint"}])
    store.insert_feedback([{"request_id": rid, "event_time": event_time, "reward": 1.0}])
  store.close()
  template = "gs://my-rlops-bucket/retrain.json"

  bigquery = _SqliteBigQuery(path, gcp)
  outcome = trigger.maybe_submit_retraining(config, 8, template, _FakeAiplatform(window_end=1000.0),
                                            bigquery)
  assert not outcome["started"] and outcome["new_records"] == 7
  assert "`my-rlops-project.rlops`.predictions" in bigquery.queries[0]

  vertex = _FakeAiplatform(window_end=1000.0)
  outcome = trigger.maybe_submit_retraining(config, 7, template, vertex, bigquery)
  assert outcome["started"] and outcome["job"].endswith("job-2")
  (_, listed), (_, artifacts), (_, job), (_, submitted) = vertex.requests
  assert 'display_name="rlops-movielens-retrain"' in listed["filter"]
  assert artifacts["filter"] == 'schema_title="tfx.Model"'
  assert job["template_path"] == template and job["enable_caching"] is False
  assert job["parameter_values"]["window_end"] > 1000.0
  assert "p.event_time >= 1000.0" in job["parameter_values"]["input_config"]
  assert '"start_span_number": 4' in job["parameter_values"]["range_config"]
  assert (job["project"], job["location"]) == (gcp.project, gcp.region)
  assert submitted == {"service_account": None}

  busy = _FakeAiplatform(running=["projects/p/locations/r/pipelineJobs/job-1"], window_end=1000.0)
  outcome = trigger.maybe_submit_retraining(config, 1, template, busy, bigquery)
  assert not outcome["started"] and "job-1" in outcome["reason"]
  assert [name for name, _ in busy.requests] == ["PipelineJob.list"]
