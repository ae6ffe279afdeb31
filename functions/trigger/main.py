"""Trigger function: starts the retraining pipeline once enough new rewarded records
have arrived since the last trained window, and never while a retraining runs.

Locally the pipeline runs with LocalDagRunner (`tfx_pipeline.local_runner`) under a
file lock. In production (a config with a gcp section) it counts the records in
BigQuery with the same SQL and submits the compiled retraining pipeline to Vertex
Pipelines, unless a run of this pipeline (startup or retraining) is queued or
running or none has succeeded yet. The job id is the window's (`vertex_runner.job_id`)
and the window ends at the scheduler tick's time, so a redelivered tick asks for the
same job, which Vertex refuses to create twice.
"""
import contextlib
import datetime
import fcntl
import json
import os
from typing import Any, Dict, Iterator, Optional

import functions_framework
from google.api_core import exceptions

from rlops import warehouse as warehouse_lib
from rlops import workdirs
from rlops.config import Config
from tfx_pipeline import vertex_runner, windows

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


def _waiting(window: Optional[windows.Window], count: int, unmatched: int,
             threshold: int) -> Dict[str, Any]:
  """The outcome when the window holds fewer than `threshold` records: nothing started."""
  if window is None:
    return {"started": False, "new_records": 0,
            "reason": "no whole second has passed since the last trained window"}
  return {"started": False, "new_records": count, "unmatched_feedback": unmatched,
          "window": window.to_dict(),
          "reason": f"{count} new rewarded records in {window}, fewer than {threshold}"}


def maybe_retrain(config: Config, threshold: int, now: Optional[float] = None) -> Dict[str, Any]:
  """Locally: counts the rewarded records of the next window (ending at the last whole
  second before `now`) and, with `threshold` or more, retrains on exactly that window."""
  if threshold < 1:
    raise ValueError(f"threshold must be positive, got {threshold}")
  # Only the local path reads ML Metadata: the deployed function runs without it. TFX, a long
  # import, loads only once a retraining starts (`windows.submit_retraining`).
  from tfx_pipeline import metadata  # pylint: disable=import-outside-toplevel
  with _exclusive(config.workdir) as acquired:
    if not acquired:
      return {"started": False, "reason": "a retraining run is in progress"}
    paths = workdirs.LocalPaths(config.workdir)
    window = windows.next_window(metadata.last_trained_window(metadata.connect(paths.metadata)),
                                 now)
    count, unmatched, shortfall = 0, 0, None
    if window is not None:
      store = warehouse_lib.Warehouse(paths.warehouse)
      try:
        count = store.count_rewarded(window.begin, window.end)
        unmatched = store.count_unmatched_feedback(window.begin, window.end)
        if count < threshold:
          shortfall = served_reward_shortfall(config, store, window, count)
      finally:
        store.close()
    if window is None or (count < threshold and shortfall is None):
      return _waiting(window, count, unmatched, threshold)
    reason = (f"{count} new rewarded records, at least {threshold}" if shortfall is None else
              f"early: served reward {shortfall:.3f} below the serving model's prediction "
              f"on {count} new records")
    return {"started": True, "new_records": count, "unmatched_feedback": unmatched,
            "window": window.to_dict(), "reason": reason,
            "result": windows.submit_retraining(config, window)}


def served_reward_shortfall(config: Config, store: warehouse_lib.Warehouse,
                            window: windows.Window, count: int) -> Optional[float]:
  """How far the window's served reward falls below the newest pushed model's prediction,
  when by more than `config.agent.drift_shortfall` on at least DRIFT_MIN_RECORDS records;
  else None."""
  if config.agent.drift_shortfall is None or count < DRIFT_MIN_RECORDS:
    return None
  from rlops import model_io  # pylint: disable=import-outside-toplevel
  serving = workdirs.LocalPaths(config.workdir).serving
  try:
    directory = os.path.join(serving, model_io.latest_version(serving))
  except FileNotFoundError:
    return None
  records = store.rewarded_records(window.begin, window.end)
  agent, _ = model_io.load_agent(directory)
  shortfall = model_io.reward_shortfall(agent, records["observation"], records["action"],
                                        records["reward"])
  return shortfall if shortfall > config.agent.drift_shortfall else None


def maybe_submit_retraining(config: Config, threshold: int, template_path: str,
                            aiplatform=None, bigquery_client=None,
                            now: Optional[float] = None) -> Dict[str, Any]:
  """Production: counts the next window's rewarded records in BigQuery and, with
  `threshold` or more, no run of this pipeline queued or running and a first run
  succeeded, submits the compiled retraining pipeline on exactly that window."""
  gcp = config.gcp
  running = vertex_runner.running_jobs(gcp, config.pipeline.name, aiplatform)
  if running:
    return {"started": False, "reason": f"a run of this pipeline is in progress: {running[0]}"}
  last = vertex_runner.last_trained_window(gcp, config.pipeline.name, aiplatform)
  if last is None:
    return {"started": False, "reason": "no run of this pipeline has succeeded yet: "
                                        "run the startup pipeline first"}
  window = windows.next_window(last, now, lateness=config.pipeline.feedback_lateness)
  count = unmatched = 0
  if window is not None:
    if bigquery_client is None:
      from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
      bigquery_client = bigquery.Client(project=gcp.project)
    sql = warehouse_lib.count_query(window.begin, window.end, gcp.table_prefix)
    row = next(iter(bigquery_client.query(sql).result()))
    count, unmatched = row["records"], row["unmatched_feedback"]
  if window is None or count < threshold:
    return _waiting(window, count, unmatched, threshold)
  try:
    submitted = windows.submit_retraining(config, window, template_path=template_path,
                                          aiplatform=aiplatform)
  except exceptions.AlreadyExists:
    return {"started": False, "new_records": count, "window": window.to_dict(),
            "reason": f"the job of {window} exists already"}
  return {"started": True, "new_records": count, "unmatched_feedback": unmatched,
          "window": window.to_dict(), **submitted}


def tick_time(cloud_event) -> float:
  """The tick's time in Unix seconds, to the second: a redelivered tick has the same."""
  return datetime.datetime.strptime(cloud_event["time"][:19], "%Y-%m-%dT%H:%M:%S").replace(
      tzinfo=datetime.timezone.utc).timestamp()


@functions_framework.cloud_event
def trigger(cloud_event) -> Optional[Dict[str, Any]]:
  """Cloud Function entry point on the scheduler's tick. Env: RLOPS_CONFIG, RETRAIN_THRESHOLD,
  and in production RETRAIN_TEMPLATE (the compiled retraining pipeline, gs://...)."""
  config = Config.from_json(os.environ["RLOPS_CONFIG"]).validate()
  threshold = int(os.environ.get("RETRAIN_THRESHOLD", "1000"))
  if config.gcp is not None:
    outcome = maybe_submit_retraining(config, threshold, os.environ["RETRAIN_TEMPLATE"],
                                      now=tick_time(cloud_event))
  else:
    outcome = maybe_retrain(config, threshold)
  print(json.dumps({k: v for k, v in outcome.items() if k != "result"}))
  return outcome
