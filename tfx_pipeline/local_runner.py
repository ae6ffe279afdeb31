"""Runs the pipeline with LocalDagRunner: MLMD, warehouse and pushed models under the workdir."""
import contextlib
import os
import threading
from typing import Any, Callable, Dict, Iterator, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from rlops import warehouse as warehouse_lib
from rlops import workdirs
from rlops.config import Config
from tfx_pipeline import metadata, windows
from tfx_pipeline import pipeline as pipeline_lib


def next_window(store, now: Optional[float] = None) -> Optional[windows.Window]:
  """The window after the last one a Trainer recorded in `store` (None: none has passed)."""
  return windows.next_window(metadata.last_trained_window(store), now)


@contextlib.contextmanager
def _reporting_components(metadata_path: str, report: Optional[Callable[[str, float], None]],
                          poll_seconds: float = 0.5) -> Iterator[None]:
  """While running, calls `report(component id, seconds)` as each component's execution
  ends in ML Metadata (read on a connection of its own, in a background thread)."""
  if report is None:
    yield
    return
  store = metadata.connect(metadata_path)
  seen = {execution.id for execution in store.get_executions()}
  ended = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED,
           metadata_store_pb2.Execution.FAILED)
  stop = threading.Event()

  def poll() -> None:
    done = False
    while not done:
      done = stop.wait(poll_seconds)  # A last look after the run ends.
      for execution in store.get_executions():
        if execution.id not in seen and execution.last_known_state in ended:
          seen.add(execution.id)
          report(metadata.node_id(store, execution),
                 (execution.last_update_time_since_epoch - execution.create_time_since_epoch)
                 / 1000)

  thread = threading.Thread(target=poll, name="rlops-component-progress", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


def run(config: Config, mode: str, window: Optional[windows.Window] = None,
        on_component: Optional[Callable[[str, float], None]] = None) -> Dict[str, Any]:
  """Runs the startup or retraining pipeline; returns what was trained and what became of it.

  Args:
    config: The validated configuration.
    mode: "startup" or "retrain".
    window: The records to train on; None: the window after the last trained one.
      A retraining with no rewarded records in it trains nothing and says so.
    on_component: Called with (component id, seconds) as each component finishes.
  """
  config.validate()
  windows.check_mode(mode)
  paths = workdirs.LocalPaths(config.workdir)
  os.makedirs(paths.workdir, exist_ok=True)
  store = metadata.connect(paths.metadata)
  window = window or next_window(store)
  if window is None:
    return {"mode": mode, "trained": False, "window": None,
            "reason": "no whole second has passed since the last trained window ended"}
  warehouse = warehouse_lib.Warehouse(paths.warehouse)
  try:
    new_records = warehouse.count_rewarded(window.begin, window.end)
  finally:
    warehouse.close()
  if mode == windows.RETRAIN and new_records == 0:
    return {"mode": mode, "trained": False, "window": window.to_dict(),
            "reason": f"no new rewarded records in the window {window}"}
  dsl = pipeline_lib.create_pipeline(
      config, mode, window, pipeline_root=paths.pipeline_root, warehouse=paths.warehouse,
      push_directory=paths.serving,
      metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
          paths.metadata))
  with _reporting_components(paths.metadata, on_component):
    tfx.orchestration.LocalDagRunner().run(dsl)
  trained = [model for model in metadata.artifacts_of_type(store, "Model")
             if metadata.properties(model).get("window_end") == window.end]
  return {"mode": mode, "trained": True, "window": window.to_dict(),
          **metadata.model_outcome(store, trained[-1])}
