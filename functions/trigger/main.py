"""Trigger function: starts the retraining pipeline once enough new rewarded records
have arrived since the last trained window, and never while a retraining runs.

Locally the pipeline runs with LocalDagRunner (`tfx_pipeline.local_runner`) under a
file lock. In production (a config with a gcp section) it counts the records in
BigQuery with the same SQL and submits the compiled retraining pipeline to Vertex
Pipelines unless one is queued or running.
"""
import contextlib
import fcntl
import json
import os
from typing import Any, Dict, Iterator, Optional

import functions_framework

from rlops import warehouse as warehouse_lib
from rlops.config import Config
from tfx_pipeline import vertex_runner

LOCK_FILE = "retrain.lock"
# Fewest new records on which a drop of the served reward starts a retraining early.
DRIFT_MIN_RECORDS = 200


@contextlib.contextmanager
def _exclusive(workdir: str) -> Iterator[bool]:
  """Yields whether this process holds the workdir's retraining lock (non-blocking)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOCK_FILE), "w") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def new_rewarded_records(config: Config) -> Dict[str, Any]:
  """Rewarded records in the window the next retraining would read."""
  # TFX is needed only by the local path: the deployed function runs without it.
  from tfx_pipeline import local_runner, metadata  # pylint: disable=import-outside-toplevel
  paths = local_runner.LocalPaths(config.workdir)
  window = local_runner.next_window(metadata.connect(paths.metadata))
  store = warehouse_lib.Warehouse(paths.warehouse)
  try:
    return {**window, "count": store.count_rewarded(window["begin"], window["end"])}
  finally:
    store.close()


def maybe_retrain(config: Config, threshold: int) -> Dict[str, Any]:
  """Runs the retraining pipeline if `threshold` new rewarded records are waiting."""
  if threshold < 1:
    raise ValueError(f"threshold must be positive, got {threshold}")
  with _exclusive(config.workdir) as acquired:
    if not acquired:
      return {"started": False, "reason": "a retraining run is in progress"}
    waiting = new_rewarded_records(config)
    reason = f"{waiting['count']} new rewarded records, at least {threshold}"
    if waiting["count"] < threshold:
      shortfall = served_reward_shortfall(config, waiting)
      if shortfall is None or shortfall <= config.pipeline.drift_shortfall:
        return {"started": False, "new_records": waiting["count"],
                "reason": f"{waiting['count']} new rewarded records, fewer than {threshold}"}
      reason = (f"early: served reward {shortfall:.3f} below the serving model's prediction "
                f"on {waiting['count']} new records")
    from tfx_pipeline import local_runner  # pylint: disable=import-outside-toplevel
    result = local_runner.run(config, "retrain")
    return {"started": True, "new_records": waiting["count"], "reason": reason, "result": result}


def served_reward_shortfall(config: Config, waiting: Dict[str, Any]) -> Optional[float]:
  """How far the new records' reward falls below the newest pushed model's prediction;
  None when the check is off, no model is pushed, or fewer than DRIFT_MIN_RECORDS wait."""
  if config.pipeline.drift_shortfall is None or waiting["count"] < DRIFT_MIN_RECORDS:
    return None
  from rlops import model_io  # pylint: disable=import-outside-toplevel
  from tfx_pipeline import local_runner  # pylint: disable=import-outside-toplevel
  serving = local_runner.LocalPaths(config.workdir).serving
  try:
    directory = os.path.join(serving, model_io.latest_version(serving))
  except FileNotFoundError:
    return None
  store = warehouse_lib.Warehouse(local_runner.LocalPaths(config.workdir).warehouse)
  try:
    records = store.rewarded_records(waiting["begin"], waiting["end"])
  finally:
    store.close()
  agent, _ = model_io.load_agent(directory)
  return model_io.reward_shortfall(agent, records["observation"], records["action"],
                                   records["reward"])


def maybe_submit_retraining(config: Config, threshold: int, template_path: str,
                            aiplatform=None, bigquery_client=None) -> Dict[str, Any]:
  """Production: submits the compiled retraining pipeline if `threshold` new rewarded
  records are in BigQuery and no retraining is queued or running."""
  gcp = config.gcp
  running = vertex_runner.running_jobs(gcp, config.pipeline.name, "retrain", aiplatform)
  if running:
    return {"started": False, "reason": f"a retraining run is in progress: {running[0]}"}
  window = vertex_runner.next_window(gcp, aiplatform)
  if bigquery_client is None:
    from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
    bigquery_client = bigquery.Client(project=gcp.project)
  sql = warehouse_lib.count_query(window["begin"], window["end"], gcp.table_prefix)
  count = next(iter(bigquery_client.query(sql).result()))["records"]
  if count < threshold:
    return {"started": False, "new_records": count,
            "reason": f"{count} new rewarded records, fewer than {threshold}"}
  request = vertex_runner.job_request(gcp, config.pipeline.name, template_path, "retrain",
                                      window, window["span"])
  return {"started": True, "new_records": count, "job": vertex_runner.submit(request, aiplatform)}


@functions_framework.cloud_event
def trigger(cloud_event) -> Optional[Dict[str, Any]]:
  """Cloud Function entry point on the scheduler's tick. Env: RLOPS_CONFIG, RETRAIN_THRESHOLD,
  and in production RETRAIN_TEMPLATE (the compiled retraining pipeline, gs://...)."""
  del cloud_event
  config = Config.from_json(os.environ["RLOPS_CONFIG"]).validate()
  threshold = int(os.environ.get("RETRAIN_THRESHOLD", "1000"))
  if config.gcp is not None:
    outcome = maybe_submit_retraining(config, threshold, os.environ["RETRAIN_TEMPLATE"])
  else:
    outcome = maybe_retrain(config, threshold)
  print(json.dumps({k: v for k, v in outcome.items() if k != "result"}))
  return outcome
