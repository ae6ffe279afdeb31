"""The Logger function as deployed: functions-framework with a Pub/Sub CloudEvent."""
import os

import httpx
import pytest

from functions import testing_utils
from functions.logger import main as logger
from rlops import log_sinks
from rlops import warehouse as warehouse_lib

SOURCE = os.path.join(os.path.dirname(logger.__file__), "main.py")


def _message(count, start=0):
  ids = [f"req-{index}" for index in range(start, start + count)]
  return {"predictions": [{"request_id": rid, "event_time": 10.0, "observation": [0.5, -1.0],
                           "action": 3, "propensity": 0.9, "model_version": "7",
                           "source": "endpoint"} for rid in ids],
          "feedback": [{"request_id": rid, "event_time": 11.0, "reward": 4.0} for rid in ids]}


def test_cloud_event_entry_point_writes_and_deduplicates(tmp_path):
  path = str(tmp_path / "warehouse.sqlite")
  with testing_utils.functions_framework(SOURCE, "log_records", {logger.WAREHOUSE_ENV: path}) as url:
    sink = log_sinks.CloudEventSink(url)
    sink.deliver(_message(30))
    sink.deliver(_message(30))  # At-least-once delivery: the same message again.
    sink.deliver(_message(10, start=25))
    headers, body = log_sinks.pubsub_cloud_event({"predictions": [{"request_id": "x"}]})
    assert httpx.post(url, headers=headers, json=body).status_code == 500
    headers, body = log_sinks.pubsub_cloud_event({})
    body["message"]["data"] = "not base64 json"
    assert httpx.post(url, headers=headers, json=body).status_code == 500
  records = warehouse_lib.Warehouse(path).rewarded_records()
  assert sorted(records["request_id"]) == sorted(f"req-{i}" for i in range(35))
  assert (records["reward"] == 4.0).all() and (records["action"] == 3).all()


def test_unknown_fields_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="unknown message fields"):
    logger.write_message({"predicitons": []}, str(tmp_path / "w.sqlite"))
