"""Tests of the Trigger on a real local deployment: threshold and mutual exclusion."""
import sqlite3
import threading
import time
import types

from google.api_core import exceptions
from google.cloud import aiplatform_v1

from functions.trigger import main as trigger
from rlops import simulation, testing, workdirs
from rlops import warehouse as warehouse_lib
from rlops.config import Config, DataConfig, EnvironmentConfig, GcpConfig, PipelineConfig
from tfx_pipeline import local_runner


def _serve_traffic(config, requests):
  paths = workdirs.LocalPaths(config.workdir)
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
  paths = workdirs.LocalPaths(config.workdir)
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
  """Records the Vertex AI requests; answers PipelineJob.list with the running jobs or
  with one succeeded run of span 3 ending at `window_end` (as the SDK's job objects:
  `runtime_config.parameters` of the schema 2.0.0 pipeline); job ids exist once created."""

  def __init__(self, running=(), window_end=None):
    self.requests = []
    self.job_ids = set()
    fake = self

    class PipelineJob:
      def __init__(self, **kwargs):
        fake.requests.append(("PipelineJob", kwargs))
        self.job_id = kwargs["job_id"]
        self.resource_name = f"projects/p/locations/r/pipelineJobs/{self.job_id}"

      def submit(self, **kwargs):
        fake.requests.append(("submit", kwargs))
        if self.job_id in fake.job_ids:
          raise exceptions.AlreadyExists(f"PipelineJob {self.job_id} already exists")
        fake.job_ids.add(self.job_id)

      @staticmethod
      def list(**kwargs):
        fake.requests.append(("PipelineJob.list", kwargs))
        if "SUCCEEDED" not in kwargs["filter"]:
          return [types.SimpleNamespace(resource_name=name) for name in running]
        if window_end is None:
          return []
        parameters = aiplatform_v1.PipelineJob.RuntimeConfig(parameters={
            "window_end": aiplatform_v1.Value(double_value=window_end),
            "span": aiplatform_v1.Value(int_value=3)}).parameters
        return [types.SimpleNamespace(runtime_config=types.SimpleNamespace(parameters=parameters))]

    self.PipelineJob = PipelineJob  # pylint: disable=invalid-name


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
  store.insert_feedback([{"request_id": "no-such-prediction", "event_time": 1500.0,
                          "reward": 1.0}])
  store.close()
  template = "gs://my-rlops-bucket/retrain.json"

  bigquery = _SqliteBigQuery(path, gcp)
  outcome = trigger.maybe_submit_retraining(config, 8, template, _FakeAiplatform(window_end=1000.0),
                                            bigquery)
  assert not outcome["started"] and outcome["new_records"] == 7
  assert outcome["unmatched_feedback"] == 1  # Counted apart, not trained on.
  assert "`my-rlops-project.rlops`.predictions" in bigquery.queries[0]

  vertex = _FakeAiplatform(window_end=1000.0)
  outcome = trigger.maybe_submit_retraining(config, 7, template, vertex, bigquery, now=2000.5)
  assert outcome["started"] and outcome["job"].endswith("/rlops-movielens-retrain-4-1000-2000")
  (_, listed), (_, succeeded), (_, job), (_, submitted) = vertex.requests
  names = '(display_name="rlops-movielens-startup" OR display_name="rlops-movielens-retrain")'
  assert listed["filter"] == names + (' AND (state="PIPELINE_STATE_QUEUED" OR '
                                      'state="PIPELINE_STATE_PENDING" OR '
                                      'state="PIPELINE_STATE_RUNNING")')
  assert succeeded["filter"] == names + ' AND (state="PIPELINE_STATE_SUCCEEDED")'
  assert job["job_id"] == "rlops-movielens-retrain-4-1000-2000"
  assert job["template_path"] == template and job["enable_caching"] is False
  assert job["parameter_values"]["window_end"] > 1000.0
  assert "event_time >= 1000.0 AND event_time < 2000.0" in job["parameter_values"]["input_config"]
  assert '"start_span_number": 4' in job["parameter_values"]["range_config"]
  assert (job["project"], job["location"]) == (gcp.project, gcp.region)
  assert submitted == {"service_account": None}

  busy = _FakeAiplatform(running=["projects/p/locations/r/pipelineJobs/job-1"], window_end=1000.0)
  outcome = trigger.maybe_submit_retraining(config, 1, template, busy, bigquery)
  assert not outcome["started"] and "job-1" in outcome["reason"]
  assert [name for name, _ in busy.requests] == ["PipelineJob.list"]

  # A redelivered tick (same time, same window) asks for the same job id: not started twice.
  again = trigger.maybe_submit_retraining(config, 7, template, vertex, bigquery, now=2000.5)
  assert not again["started"] and "exists already" in again["reason"]
  assert [request[1]["job_id"] for request in vertex.requests if request[0] == "PipelineJob"] == [
      "rlops-movielens-retrain-4-1000-2000"] * 2

  # Before any run of the pipeline succeeded there is no model to warm-start or serve.
  fresh = _FakeAiplatform()
  outcome = trigger.maybe_submit_retraining(config, 1, template, fresh, bigquery)
  assert not outcome["started"] and "startup pipeline first" in outcome["reason"]
  assert [name for name, _ in fresh.requests] == ["PipelineJob.list"] * 2


def test_production_window_ends_a_lateness_margin_before_the_tick(tmp_path):
  gcp = GcpConfig(project="my-rlops-project", region="us-central1", bucket="gs://my-rlops-bucket",
                  dataset="rlops", endpoint_name="rlops-movielens",
                  pipeline_image="europe-docker.pkg.dev/p/r/pipeline:1",
                  serving_image="europe-docker.pkg.dev/p/r/serving:1")
  config = Config(gcp=gcp, pipeline=PipelineConfig(feedback_lateness=300.0)).validate()
  path = str(tmp_path / "warehouse.sqlite")
  store = warehouse_lib.Warehouse(path)
  prediction = {"request_id": "late", "event_time": 1800.0, "observation": [1.0], "action": 0,
                "propensity": 0.5, "model_version": "1", "source": "endpoint"}
  store.insert_predictions([prediction])
  store.close()
  bigquery = _SqliteBigQuery(path, gcp)
  # At the tick of 2000 its feedback has not arrived: the window ends at 1700, before it.
  first = trigger.maybe_submit_retraining(config, 1, "t.json", _FakeAiplatform(window_end=1000.0),
                                          bigquery, now=2000.0)
  assert first["window"] == {"span": 4, "begin": 1000.0, "end": 1700.0}
  store = warehouse_lib.Warehouse(path)
  store.insert_feedback([{"request_id": "late", "event_time": 2050.0, "reward": 1.0}])
  store.close()
  # The window after the one trained up to 1700 holds it, with its late reward.
  vertex = _FakeAiplatform(window_end=1700.0)
  second = trigger.maybe_submit_retraining(config, 1, "t.json", vertex, bigquery, now=2400.0)
  assert second["started"] and second["new_records"] == 1
  assert second["window"] == {"span": 4, "begin": 1700.0, "end": 2100.0}


def test_tick_time_is_the_cloud_events_time_to_the_second():
  assert trigger.tick_time({"time": "2023-11-14T22:13:20.123456789Z"}) == 1_700_000_000.0
