"""Production rehearsal: the compiled startup and retraining pipelines, run task by task
through TFX's Vertex container entrypoint, with the ExecutorInput Vertex sends.

The warehouse is a SQLite file behind a fake BigQuery client (same SQL); the
Vertex AI SDK is a fake recording every request. See `vertex_rehearsal`.
"""
import dataclasses
import json
import os

import pytest

from custom_components import artifacts
from rlops import warehouse as warehouse_lib
from rlops.config import PipelineConfig
from tfx_pipeline import vertex_rehearsal
from tfx_pipeline import vertex_runner
from tfx_pipeline import windows
from tfx_pipeline.vertex_runner_test import CONFIG

# A wide gate tolerance blesses the retrained model too, so that both runs push.
REHEARSAL_CONFIG = dataclasses.replace(
    CONFIG, pipeline=PipelineConfig(samples=2000, bootstrap_samples=20, gate_tolerance=10.0))
GCP = REHEARSAL_CONFIG.gcp
STARTUP_WINDOW = windows.Window(span=1, begin=1_700_000_000.0, end=1_700_003_600.0)
RETRAIN_WINDOW = windows.Window(span=2, begin=STARTUP_WINDOW.end, end=1_700_007_200.0)
SERVED_RECORDS = 1500
MODEL_RESOLVER = "latest_blessed_model_resolver-model-resolver"
BLESSING_RESOLVER = "latest_blessed_model_resolver-model-blessing-resolver"


def _executor_modules(spec):
  executors = spec["pipelineSpec"]["deploymentSpec"]["executors"].values()
  return sorted({e["container"]["args"][1].rsplit(".", 1)[0]
                 for e in executors if "container" in e})


def _serve(store, startup_records):
  """Logs SERVED_RECORDS predictions and their rewards in the retraining window."""
  predictions, feedback = [], []
  for i in range(SERVED_RECORDS):
    event_time = RETRAIN_WINDOW.begin + i
    predictions.append({
        "request_id": f"endpoint-{i:05d}", "event_time": event_time,
        "observation": startup_records["observation"][i].tolist(),
        "action": int(startup_records["action"][i]), "propensity": 1 / 20,
        "model_version": "1", "source": "endpoint"})
    feedback.append({"request_id": f"endpoint-{i:05d}", "event_time": event_time + 1,
                     "reward": float(startup_records["reward"][i])})
  store.insert_predictions(predictions)
  store.insert_feedback(feedback)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
  """Startup, then records served, then retraining: (Rehearsal, {mode: task outputs})."""
  workdir = tmp_path_factory.mktemp("rehearsal")
  warehouse_path = str(workdir / "warehouse.sqlite")
  warehouse_lib.Warehouse(warehouse_path).close()
  specs = {}
  for mode in windows.MODES:
    path = vertex_runner.compile_pipeline(REHEARSAL_CONFIG, mode, str(workdir / f"{mode}.json"))
    with open(path) as f:
      specs[mode] = json.load(f)
  outputs = {}
  with vertex_rehearsal.Rehearsal(str(workdir), warehouse_path, GCP.region,
                                  preload=_executor_modules(specs[windows.STARTUP])) as run:
    outputs[windows.STARTUP] = run.run_job(
        specs[windows.STARTUP],
        vertex_runner.pipeline_parameters(STARTUP_WINDOW, gcp=GCP, mode=windows.STARTUP),
        job_id="rlops-movielens-startup-1")
    store = warehouse_lib.Warehouse(warehouse_path)
    try:
      _serve(store, store.rewarded_records(STARTUP_WINDOW.begin, STARTUP_WINDOW.end))
    finally:
      store.close()
    outputs[windows.RETRAIN] = run.run_job(
        specs[windows.RETRAIN],
        vertex_runner.pipeline_parameters(RETRAIN_WINDOW, gcp=GCP, mode=windows.RETRAIN),
        job_id="rlops-movielens-retrain-2")
  return run, outputs, warehouse_path


def _single(outputs, task, key):
  artifact, = outputs[task][key]
  return artifact


def test_every_task_of_both_pipelines_ran_through_the_entrypoint(rehearsal):
  _, outputs, _ = rehearsal
  assert set(outputs[windows.STARTUP]) == {
      "Generator", "Ingester", "Trainer", "Evaluator", "Pusher", MODEL_RESOLVER,
      BLESSING_RESOLVER}
  assert set(outputs[windows.RETRAIN]) == set(outputs[windows.STARTUP]) - {"Generator"}
  # Nothing was blessed before startup: its resolvers resolved nothing.
  assert outputs[windows.STARTUP][MODEL_RESOLVER] == {"model": []}


def test_generator_writes_custom_typed_interactions_to_bigquery(rehearsal):
  run, outputs, warehouse_path = rehearsal
  interactions = _single(outputs[windows.STARTUP], "Generator", "interactions")
  titles = {a["name"]: a["schema_title"] for a in run.metadata.artifacts}
  assert titles[interactions["name"]] == artifacts.Interactions.TYPE_NAME
  assert interactions["metadata"]["record_count"] == 2000
  merges = [r for r in run.requests() if r["api"] == "bigquery.query"
            and r["query"].startswith("MERGE `rlops-test.rlops_logs.")]
  assert {r["query"].split("`")[1] for r in merges} == {
      "rlops-test.rlops_logs.predictions", "rlops-test.rlops_logs.feedback"}
  store = warehouse_lib.Warehouse(warehouse_path)
  try:
    assert store.count_rewarded(STARTUP_WINDOW.begin, STARTUP_WINDOW.end) == 2000
  finally:
    store.close()


def test_ingester_reads_each_window_with_the_training_query(rehearsal):
  run, outputs, _ = rehearsal
  reads = [r for r in run.requests() if r["api"] == "beam.ReadFromBigQuery"]
  assert [(r["query"], r["use_standard_sql"]) for r in reads] == [
      (warehouse_lib.training_query(w.begin, w.end, GCP.table_prefix), True)
      for w in (STARTUP_WINDOW, RETRAIN_WINDOW)]
  for mode in windows.MODES:
    examples = _single(outputs[mode], "Ingester", "examples")
    assert json.loads(examples["metadata"]["split_names"]) == ["train", "eval"]
    for split in ("train", "eval"):
      assert os.listdir(os.path.join(examples["uri"], f"Split-{split}"))


def test_trainer_records_the_window_given_as_parameters(rehearsal):
  _, outputs, _ = rehearsal
  for mode, window in ((windows.STARTUP, STARTUP_WINDOW), (windows.RETRAIN, RETRAIN_WINDOW)):
    model = _single(outputs[mode], "Trainer", "model")
    assert model["metadata"]["window_end"] == window.end
    assert model["metadata"]["span"] == window.span


def test_retraining_warm_starts_from_the_latest_blessed_model(rehearsal):
  _, outputs, _ = rehearsal
  startup_model = _single(outputs[windows.STARTUP], "Trainer", "model")
  startup_blessing = _single(outputs[windows.STARTUP], "Evaluator", "blessing")
  assert startup_blessing["metadata"]["blessed"] == 1
  # The entrypoint rewrote the Evaluator's model id into the Vertex artifact name the
  # model resolver's query looks for.
  assert startup_blessing["metadata"]["current_model_id"] == startup_model["name"]
  retrain = outputs[windows.RETRAIN]
  assert _single(retrain, BLESSING_RESOLVER, "model_blessing")["name"] == startup_blessing["name"]
  assert _single(retrain, MODEL_RESOLVER, "model")["name"] == startup_model["name"]
  retrained = _single(retrain, "Trainer", "model")
  assert retrained["metadata"]["warm_started_from"] == os.path.join(
      startup_model["uri"], "Format-Serving")


def test_each_blessed_model_replaces_the_last_on_the_one_endpoint(rehearsal):
  run, outputs, _ = rehearsal
  pushed = [_single(outputs[mode], "Pusher", "pushed_model") for mode in windows.MODES]
  assert [p["metadata"]["pushed"] for p in pushed] == [1, 1]
  location = "projects/rlops-test/locations/europe-west4"
  endpoint = f"{location}/endpoints/1"
  models = [f"{location}/models/1", f"{location}/models/2"]
  assert [p["metadata"]["pushed_destination"] for p in pushed] == models
  lookup = {"api": "aiplatform.Endpoint.list", "filter": 'display_name="rlops-endpoint"'}
  init = {"api": "aiplatform.init", "project": "rlops-test", "location": "europe-west4"}

  def push(model, pushed_model, create):
    return ([init, lookup] + ([{"api": "aiplatform.Endpoint.create",
                                "display_name": "rlops-endpoint"}] if create else [])
            + [lookup,
               {"api": "aiplatform.Model.upload", "artifact_uri": pushed_model["uri"],
                "serving_container_image_uri": GCP.serving_image},
               {"api": "aiplatform.Model.deploy", "model": model, "endpoint": endpoint,
                "machine_type": "n1-standard-2", "min_replica_count": 1,
                "max_replica_count": 2, "traffic_percentage": 100},
               init, lookup,
               {"api": "aiplatform.Endpoint.list_models", "endpoint": endpoint}])

  expected = (push(models[0], pushed[0], create=True) + push(models[1], pushed[1], create=False)
              + [{"api": "aiplatform.Endpoint.undeploy", "endpoint": endpoint,
                  "deployed_model_id": "1001"}])
  calls = [r for r in run.requests() if r["api"].startswith("aiplatform.")]
  assert [{k: v for k, v in call.items() if k in want} for call, want in zip(calls, expected)
          ] == expected
  assert len(calls) == len(expected)
  with open(run.aiplatform_state_path) as f:
    state = json.load(f)
  only, = state["endpoints"]
  assert only["deployed_models"] == [{"id": "1002", "model": models[1]}]
  assert only["traffic_split"] == {"1002": 100}
