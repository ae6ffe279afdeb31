"""Trigger function: starts the retraining pipeline once enough new rewarded records
have arrived since the last trained window, and never while a retraining runs.

Locally the pipeline runs with LocalDagRunner (`tfx_pipeline.local_runner`);
production submits a Vertex PipelineJob instead.
"""
import contextlib
import fcntl
import json
import os
from typing import Any, Dict, Iterator, Optional

import functions_framework

from rlops import warehouse as warehouse_lib
from rlops.config import Config
from tfx_pipeline import local_runner, metadata

LOCK_FILE = "retrain.lock"


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
    if waiting["count"] < threshold:
      return {"started": False, "new_records": waiting["count"],
              "reason": f"{waiting['count']} new rewarded records, fewer than {threshold}"}
    result = local_runner.run(config, "retrain")
    return {"started": True, "new_records": waiting["count"], "result": result}


@functions_framework.cloud_event
def trigger(cloud_event) -> Optional[Dict[str, Any]]:
  """Cloud Function entry point on the scheduler's tick. Env: RLOPS_CONFIG, RETRAIN_THRESHOLD."""
  del cloud_event
  config = Config.from_json(os.environ["RLOPS_CONFIG"]).validate()
  outcome = maybe_retrain(config, int(os.environ.get("RETRAIN_THRESHOLD", "1000")))
  print(json.dumps({k: v for k, v in outcome.items() if k != "result"}))
  return outcome
