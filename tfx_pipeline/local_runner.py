"""Runs the pipeline with LocalDagRunner: MLMD, warehouse and pushed models under the workdir."""
import dataclasses
import os
import time
from typing import Any, Dict

from tfx import v1 as tfx

from rlops import warehouse as warehouse_lib
from rlops.config import Config
from tfx_pipeline import metadata
from tfx_pipeline import pipeline as pipeline_lib


@dataclasses.dataclass(frozen=True)
class LocalPaths:
  """Where a local deployment keeps its state, all under one working directory."""
  workdir: str

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.workdir, "pipeline_root")

  @property
  def metadata(self) -> str:
    return os.path.join(self.workdir, "metadata.sqlite")

  @property
  def warehouse(self) -> str:
    return os.path.join(self.workdir, "warehouse.sqlite")

  @property
  def serving(self) -> str:
    """Pusher's base directory: one numbered folder per pushed model version."""
    return os.path.join(self.workdir, "serving")


def next_window(store) -> Dict[str, Any]:
  """The next span number and its window [begin, end), from the end of the last trained
  window to the last whole second: records of the unfinished second go to the next one."""
  span, begin = metadata.last_trained_window(store)
  end = float(int(time.time()))
  if end <= begin:
    time.sleep(begin + 1 - time.time())
    end = begin + 1
  return {"span": span + 1, "begin": begin, "end": end}


def run(config: Config, mode: str) -> Dict[str, Any]:
  """Runs the startup or retraining pipeline; returns what was trained and what became of it.

  A retraining run with no new rewarded records since the last trained span
  trains nothing and says so.
  """
  config.validate()
  paths = LocalPaths(config.workdir)
  os.makedirs(paths.workdir, exist_ok=True)
  store = metadata.connect(paths.metadata)
  window = next_window(store)
  warehouse = warehouse_lib.Warehouse(paths.warehouse)
  try:
    new_records = warehouse.count_rewarded(window["begin"], window["end"])
  finally:
    warehouse.close()
  if mode == pipeline_lib.RETRAIN and new_records == 0:
    return {"mode": mode, "trained": False, "window": window,
            "reason": f"no new rewarded records since the last trained window ended at {window['begin']}"}
  tfx.orchestration.LocalDagRunner().run(pipeline_lib.create_pipeline(
      config, mode, span=window["span"], window_begin=window["begin"], window_end=window["end"],
      pipeline_root=paths.pipeline_root, warehouse=paths.warehouse, push_directory=paths.serving,
      metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
          paths.metadata)))
  trained = [model for model in metadata.artifacts_of_type(store, "Model")
             if metadata.properties(model).get("window_end") == window["end"]]
  return {"mode": mode, "trained": True, "window": window,
          **metadata.model_outcome(store, trained[-1])}
