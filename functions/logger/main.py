"""Logger function: writes prediction logs and feedback to the warehouse.

Production: a Cloud Function on the Pub/Sub topic the endpoint and the Simulator
publish to (entry point `log_records`). Locally: the same code, called in process
by `rlops.log_sinks.InProcessSink`, or served by functions-framework:

    RLOPS_WAREHOUSE=rlops-work/warehouse.sqlite functions-framework \\
        --source functions/logger/main.py --target log_records --signature-type cloudevent

A message is JSON: {"predictions": [...], "feedback": [...]}, either list optional,
rows as in `rlops.warehouse`. Delivery is at least once; rows are de-duplicated by
request_id, so a redelivered message changes nothing.
"""
import base64
import functools
import json
import os
from typing import Any, Dict

import functions_framework

from rlops import warehouse as warehouse_lib

WAREHOUSE_ENV = "RLOPS_WAREHOUSE"


@functools.lru_cache(maxsize=None)
def _warehouse(path: str) -> warehouse_lib.Warehouse:
  return warehouse_lib.Warehouse(path)


def write_message(message: Dict[str, Any], warehouse_path: str) -> Dict[str, int]:
  """Writes one message's rows; returns how many were new (not duplicates)."""
  unknown = set(message) - {"predictions", "feedback"}
  if unknown:
    raise ValueError(f"unknown message fields: {sorted(unknown)}")
  store = _warehouse(warehouse_path)
  return {"predictions": store.insert_predictions(message.get("predictions", [])),
          "feedback": store.insert_feedback(message.get("feedback", []))}


def decode_pubsub_event(data: Dict[str, Any]) -> Dict[str, Any]:
  """The JSON message inside a Pub/Sub `messagePublished` CloudEvent's data."""
  try:
    return json.loads(base64.b64decode(data["message"]["data"]))
  except (KeyError, TypeError, ValueError) as error:
    raise ValueError(f"not a Pub/Sub message with JSON data: {error}") from error


@functions_framework.cloud_event
def log_records(cloud_event) -> None:
  """Cloud Function entry point: a Pub/Sub message of prediction logs and feedback."""
  path = os.environ.get(WAREHOUSE_ENV)
  if not path:
    raise RuntimeError(f"{WAREHOUSE_ENV} is not set")
  write_message(decode_pubsub_event(cloud_event.data), path)
