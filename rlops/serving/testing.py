"""Helpers of the serving tests: pushing versions, reading the warehouse, waiting."""
import json
import os
import shutil
import sqlite3
import time
from typing import Dict, Optional, Sequence

import numpy as np


def push(trained_model: str, serving: str, version) -> str:
  """Writes serving/<version> as a whole: a copy under a temporary name, then a rename."""
  temporary = os.path.join(serving, f".tmp-{version}")
  shutil.copytree(trained_model, temporary)
  destination = os.path.join(serving, str(version))
  os.rename(temporary, destination)
  return destination


def logged_predictions(warehouse_path) -> Dict[str, tuple]:
  """request_id -> (observation, action, propensity, model_version, source) in the warehouse."""
  if not os.path.exists(warehouse_path):
    return {}
  with sqlite3.connect(warehouse_path) as connection:
    rows = connection.execute("SELECT request_id, observation, action, propensity, model_version, "
                              "source FROM predictions").fetchall()
  return {row[0]: (json.loads(row[1]), *row[2:]) for row in rows}


def until(predicate, timeout: float = 20.0) -> None:
  """Waits until `predicate()` is true; fails after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.02)


def instances(observations: np.ndarray, ids: Optional[Sequence[str]] = None) -> dict:
  """A prediction request body of `observations`, with `ids` as request ids if given."""
  return {"instances": [{"observation": [float(x) for x in row],
                         **({"request_id": ids[i]} if ids else {})}
                        for i, row in enumerate(observations)]}
