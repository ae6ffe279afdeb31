"""Logger function: writes prediction logs and feedback to the warehouse.

Production: a Cloud Function on the Pub/Sub topic the endpoint and the Simulator
publish to (`rlops.log_sinks.PubSubSink`; entry point `log_records`), writing to
BigQuery with RLOPS_WAREHOUSE=bq://project.dataset. Locally: the same code on a
SQLite file, called in process by `rlops.log_sinks.InProcessSink`, or served by
functions-framework:

    RLOPS_WAREHOUSE=rlops-work/warehouse.sqlite functions-framework \\
        --source functions/logger/main.py --target log_records --signature-type cloudevent

A message is JSON: {"predictions": [...], "feedback": [...]}, either list optional,
rows as in `rlops.warehouse`. Delivery is at least once; rows are de-duplicated by
request_id, so a redelivered message changes nothing. A failure raises, so Pub/Sub
redelivers the message.
"""
import base64
import functools
import json
import os
from typing import Any, Dict

import functions_framework

from rlops import bigquery

WAREHOUSE_ENV = "RLOPS_WAREHOUSE"


@functools.lru_cache(maxsize=None)
def _warehouse(uri: str):
  """One warehouse (and BigQuery client) per URI and function instance, across invocations."""
  return bigquery.warehouse_from_uri(uri)


def write_message(message: Dict[str, Any], warehouse_uri: str) -> Dict[str, int]:
  """Writes one message's rows; returns how many were new (not duplicates).

  Args:
    message: {"predictions": [...], "feedback": [...]}.
    warehouse_uri: "bq://project.dataset" or the path of a SQLite warehouse.
  """
  unknown = set(message) - {"predictions", "feedback"}
  if unknown:
    raise ValueError(f"unknown message fields: {sorted(unknown)}")
  store = _warehouse(warehouse_uri)
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
  uri = os.environ.get(WAREHOUSE_ENV)
  if not uri:
    raise RuntimeError(f"{WAREHOUSE_ENV} is not set")
  write_message(decode_pubsub_event(cloud_event.data), uri)
