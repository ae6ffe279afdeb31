"""The Logger function as deployed: functions-framework with a Pub/Sub CloudEvent."""
import base64
import json
import concurrent.futures
import os
import sqlite3

import httpx
import pytest
from cloudevents.http import CloudEvent
from google.cloud import pubsub_v1
from werkzeug import exceptions

from functions import testing_utils
from functions.logger import main as logger
from rlops import bigquery
from rlops import bigquery_test
from rlops import log_sinks
from rlops import warehouse as warehouse_lib
from rlops.serving import outbox

SOURCE = os.path.join(os.path.dirname(logger.__file__), "main.py")
TOPIC = "projects/rlops-test/topics/rlops-logs"


@pytest.fixture(autouse=True)
def _fresh_warehouses():
  log_sinks._warehouse.cache_clear()  # pylint: disable=protected-access
  yield
  log_sinks._warehouse.cache_clear()  # pylint: disable=protected-access


def _message(count, start=0):
  ids = [f"req-{index}" for index in range(start, start + count)]
  return {"predictions": [{"request_id": rid, "event_time": 10.0, "observation": [0.5, -1.0],
                           "action": 3, "propensity": 0.9, "model_version": "7",
                           "source": "endpoint"} for rid in ids],
          "feedback": [{"request_id": rid, "event_time": 11.0, "reward": 4.0} for rid in ids]}


def test_cloud_event_entry_point_writes_and_deduplicates(tmp_path):
  path = str(tmp_path / "warehouse.sqlite")
  with testing_utils.functions_framework(SOURCE, "log_records",
                                         {logger.WAREHOUSE_ENV: path}) as url:
    sink = log_sinks.CloudEventSink(url)
    sink.deliver(_message(30))
    sink.deliver(_message(30))  # At-least-once delivery: the same message again.
    sink.deliver(_message(10, start=25))
    headers, body = log_sinks.pubsub_cloud_event({})
    body["message"]["data"] = "not base64 json"
    assert httpx.post(url, headers=headers, json=body).status_code == 400  # Not acknowledged.
  records = warehouse_lib.Warehouse(path).rewarded_records()
  assert sorted(records["request_id"]) == sorted(f"req-{i}" for i in range(35))
  assert (records["reward"] == 4.0).all() and (records["action"] == 3).all()


def test_rows_the_warehouse_cannot_store_are_rejected_alone_without_limits(tmp_path):
  """A NaN reward, a row missing fields and a negative propensity are refused alone: the rest
  is stored, and the message answered 422 with the reasons (not acknowledged: Pub/Sub keeps
  it, and dead-letters it after its delivery attempts)."""
  path = str(tmp_path / "warehouse.sqlite")
  message = _message(4)
  message["predictions"][1] = {"request_id": "req-1"}
  message["predictions"][2]["propensity"] = -0.25
  message["feedback"][3]["reward"] = float("nan")
  with testing_utils.functions_framework(SOURCE, "log_records",
                                         {logger.WAREHOUSE_ENV: path}) as url:
    headers, body = log_sinks.pubsub_cloud_event(message)
    response = httpx.post(url, headers=headers, json=body)
  assert response.status_code == 422 and response.json()["error"] == "3 row(s) refused"
  assert [reason.split(":")[0] for reason in response.json()["reasons"]] == [
      "request_id 'req-1'", "request_id 'req-2'", "request_id 'req-3'"]
  store = warehouse_lib.Warehouse(path)
  assert list(store.rewarded_records()["request_id"]) == ["req-0"]
  with sqlite3.connect(path) as connection:
    assert sorted(row[0] for row in connection.execute("SELECT request_id FROM predictions")) == [
        "req-0", "req-3"]
    assert sorted(row[0] for row in connection.execute("SELECT request_id FROM feedback")) == [
        "req-0", "req-1", "req-2"]


def test_rows_outside_the_models_limits_are_rejected_alone(tmp_path):
  path = str(tmp_path / "warehouse.sqlite")
  message = _message(4)
  message["predictions"][1]["action"] = 999999  # The model has 10 actions.
  message["predictions"][2]["observation"] = [0.5, -1.0, 2.0]  # It takes 2 values.
  message["feedback"][3]["reward"] = 1e9
  env = {logger.WAREHOUSE_ENV: path,
         "RLOPS_ROW_LIMITS": json.dumps({"rank_k": 2, "num_actions": 10})}
  with testing_utils.functions_framework(SOURCE, "log_records", env) as url:
    headers, body = log_sinks.pubsub_cloud_event(message)
    assert httpx.post(url, headers=headers, json=body).status_code == 422  # Not acknowledged.
  store = warehouse_lib.Warehouse(path)
  records = store.rewarded_records()
  # Of four records, one keeps both its prediction and its feedback within the limits.
  assert list(records["request_id"]) == ["req-0"]
  assert store.count_rewarded() == 1


def _delivered_to(url: str, outbox_path: str) -> outbox.OutboxLogger:
  """The outbox found at `outbox_path`, delivered to the Logger served at `url`, then closed."""
  logs = outbox.OutboxLogger(outbox_path, log_sinks.CloudEventSink(url), batch_seconds=0.01)
  logs.start()
  try:
    assert logs.flush(timeout=60.0)
  finally:
    logs.close()
  return logs


def _stored_predictions(path: str):
  with sqlite3.connect(path) as connection:
    return sorted(row[0] for row in connection.execute("SELECT request_id FROM predictions"))


def test_an_older_servers_outbox_line_is_forwarded_as_written_and_its_bad_row_refused_alone(
    tmp_path):
  """An outbox line of an older server, with an escaped lone surrogate (the standard library's
  JSON, which no warehouse stores): the outbox forwards its lines as they are, the served
  Logger refuses that row alone, with its reason, and stores the rest, and the outbox sets
  the refused row aside in its dead-letter file."""
  path = str(tmp_path / "warehouse.sqlite")
  rows = _message(4)["predictions"]
  rows[2] = {**rows[2], "request_id": "x\ud800"}
  with open(tmp_path / "outbox.jsonl", "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  log_path = str(tmp_path / "logger.log")
  with testing_utils.functions_framework(SOURCE, "log_records", {logger.WAREHOUSE_ENV: path},
                                         log_path=log_path) as url:
    logs = _delivered_to(url, str(tmp_path / "outbox.jsonl"))
  assert logs.failures == 0 and logs.dead_letters == 1
  with open(logs.dead_letter_path) as f:
    [dead] = [json.loads(line) for line in f]
  assert dead["row"] == rows[2] and "request_id is not valid Unicode" in dead["reason"]
  assert _stored_predictions(path) == ["req-0", "req-1", "req-3"]
  with open(log_path) as f:
    assert "request_id is not valid Unicode" in f.read()


def test_a_message_that_is_not_one_is_refused_with_400_and_the_outbox_sets_its_line_aside(
    tmp_path):
  """A line that parses alone but not once joined into a message (a UTF-8 BOM before it): the
  served Logger answers the message 400 with the reason, not 500, so the outbox delivers its
  lines one by one and sets that one aside instead of retrying the batch for ever."""
  path = str(tmp_path / "warehouse.sqlite")
  lines = [log_sinks.encode_message(row) for row in _message(3)["predictions"]]
  lines[1] = b"\xef\xbb\xbf" + lines[1]
  with open(tmp_path / "outbox.jsonl", "wb") as f:
    f.writelines(line + b"\n" for line in lines)
  env = {logger.WAREHOUSE_ENV: path}
  with testing_utils.functions_framework(SOURCE, "log_records", env) as url:
    headers, body = log_sinks.pubsub_cloud_event(b"not json")
    response = httpx.post(url, headers=headers, json=body)
    assert response.status_code == 400 and "not a log message" in response.json()["error"]
    logs = _delivered_to(url, str(tmp_path / "outbox.jsonl"))
  assert logs.failures == 0 and logs.dead_letters == 1
  assert _stored_predictions(path) == ["req-0", "req-2"]


def test_a_message_in_the_standard_librarys_json_is_read_and_its_bad_rows_refused_alone(tmp_path):
  """An older publisher's message, with a NaN token and an escaped lone surrogate (neither is
  JSON orjson reads): the Logger reads it, and under limits refuses those two rows alone."""
  path = str(tmp_path / "warehouse.sqlite")
  message = _message(3)
  message["predictions"][0]["request_id"] = "x\ud800"
  message["feedback"][1]["reward"] = float("nan")
  headers, body = log_sinks.pubsub_cloud_event({})
  body["message"]["data"] = base64.b64encode(json.dumps(message).encode()).decode()
  env = {logger.WAREHOUSE_ENV: path,
         "RLOPS_ROW_LIMITS": json.dumps({"rank_k": 2, "num_actions": 10})}
  with testing_utils.functions_framework(SOURCE, "log_records", env) as url:
    assert httpx.post(url, headers=headers, json=body).status_code == 422  # Not acknowledged.
  records = warehouse_lib.Warehouse(path).rewarded_records()
  assert list(records["request_id"]) == ["req-2"]


def test_a_row_nested_too_deep_to_show_is_refused_alone(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv(logger.WAREHOUSE_ENV, str(tmp_path / "warehouse.sqlite"))
  message = _message(2)
  deep = json.dumps(message).replace("[0.5, -1.0]", "[" * 1000 + "0.5" + "]" * 1000, 1)
  with pytest.raises(exceptions.HTTPException) as refused:
    logger.log_records(pubsub_delivery(TOPIC, deep.encode(), {}, message_id="1"))
  assert refused.value.response.status_code == 422  # Refused, not a failure to retry.
  warning = json.loads(capsys.readouterr().out)  # With the row, if it can be written again.
  assert "req-0" in (warning.get("rejected_reasons") or [warning["rejected_rows"][0]["reason"]])[0]
  records = warehouse_lib.Warehouse(str(tmp_path / "warehouse.sqlite")).rewarded_records()
  assert list(records["request_id"]) == ["req-1"]


def test_unknown_fields_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="unknown message fields"):
    log_sinks.write_rows({"predicitons": []}, str(tmp_path / "w.sqlite"))


class FakePublisher:
  """Stands in for `pubsub_v1.PublisherClient`: records each publish call, as sent."""

  def __init__(self, error=None):
    self.published = []
    self._error = error

  def publish(self, topic, data, **attributes):
    self.published.append((topic, data, attributes))
    future = concurrent.futures.Future()
    if self._error:
      future.set_exception(self._error)
    else:
      future.set_result(str(len(self.published)))
    return future


def pubsub_delivery(topic, data, attributes, message_id):
  """The CloudEvent a Cloud Function on `topic` receives for a published message."""
  publish_time = "2024-05-01T12:00:00.123Z"
  return CloudEvent(
      {"specversion": "1.0", "id": message_id, "type": log_sinks.PUBSUB_EVENT_TYPE,
       "source": f"//pubsub.googleapis.com/{topic}", "time": publish_time,
       "datacontenttype": "application/json"},
      {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes,
                   "messageId": message_id, "message_id": message_id,
                   "publishTime": publish_time, "publish_time": publish_time},
       "subscription": "projects/rlops-test/subscriptions/eventarc-us-central1-log-records-sub-1"})


def test_pubsub_sink_publishes_json_bytes_and_waits_for_pubsub():
  publisher = FakePublisher()
  message = {"predictions": [{"request_id": "r-1", "event_time": 10.5, "observation": [0.5, -1.0],
                              "action": 3, "propensity": 0.9, "model_version": "7",
                              "source": "endpoint"}]}
  log_sinks.PubSubSink(TOPIC, publisher=publisher).deliver(message)
  assert publisher.published == [(TOPIC, (
      b'{"predictions":[{"request_id":"r-1","event_time":10.5,"observation":[0.5,-1.0],'
      b'"action":3,"propensity":0.9,"model_version":"7","source":"endpoint"}]}'), {})]
  failing = log_sinks.PubSubSink(TOPIC, publisher=FakePublisher(error=RuntimeError("unavailable")))
  with pytest.raises(RuntimeError, match="unavailable"):  # The outbox retries.
    failing.deliver(message)
  with pytest.raises(ValueError, match="projects/PROJECT/topics/TOPIC"):
    log_sinks.PubSubSink("rlops-logs")


def test_sink_from_env_selects_pubsub_by_topic_and_creates_the_client_lazily(monkeypatch, tmp_path):
  publishers = []
  monkeypatch.setattr(pubsub_v1, "PublisherClient",
                      lambda: publishers.append(FakePublisher()) or publishers[-1])
  monkeypatch.setenv("RLOPS_WAREHOUSE", str(tmp_path / "w.sqlite"))
  monkeypatch.delenv("RLOPS_LOG_URL", raising=False)
  monkeypatch.delenv("RLOPS_LOG_TOPIC", raising=False)
  assert isinstance(log_sinks.sink_from_env(), log_sinks.InProcessSink)  # The local default.
  monkeypatch.setenv("RLOPS_LOG_TOPIC", TOPIC)
  sink = log_sinks.sink_from_env()
  assert isinstance(sink, log_sinks.PubSubSink) and sink.topic_path == TOPIC
  assert not publishers
  sink.deliver(_message(1))
  sink.deliver(_message(1, start=1))
  assert len(publishers) == 1 and [topic for topic, _, _ in publishers[0].published] == [TOPIC] * 2


def test_what_pubsub_sink_publishes_the_deployed_entry_point_writes(tmp_path, monkeypatch):
  path = str(tmp_path / "warehouse.sqlite")
  monkeypatch.setenv(logger.WAREHOUSE_ENV, path)
  publisher = FakePublisher()
  sink = log_sinks.PubSubSink(TOPIC, publisher=publisher)
  sink.deliver(_message(20))
  sink.deliver(_message(10, start=15))
  for index, (topic, data, attributes) in enumerate(publisher.published):
    event = pubsub_delivery(topic, data, attributes, message_id=str(1000 + index))
    logger.log_records(event)
    logger.log_records(event)  # At-least-once delivery: the same event again.
  records = warehouse_lib.Warehouse(path).rewarded_records()
  assert sorted(records["request_id"]) == sorted(f"req-{i}" for i in range(25))
  assert (records["reward"] == 4.0).all() and (records["action"] == 3).all()


def test_deployed_entry_point_merges_into_bigquery(monkeypatch, capsys):
  client = bigquery_test.FakeClient()
  projects = []
  monkeypatch.setattr(bigquery, "make_client", lambda project: projects.append(project) or client)
  monkeypatch.setenv(logger.WAREHOUSE_ENV, bigquery_test.URI)
  message = _message(3)
  event = pubsub_delivery(TOPIC, log_sinks.encode_message(message), {}, message_id="42")
  logger.log_records(event)
  logger.log_records(event)  # Redelivered: the same MERGE again, which inserts nothing.

  assert projects == [bigquery_test.PROJECT]  # One client, created on the first event.
  setup = len(bigquery_test.ENSURE_REQUESTS)
  assert client.requests[:setup] == bigquery_test.ENSURE_REQUESTS  # On the first event only.
  merges = client.requests[setup:]
  assert [sql for _, sql, _ in merges] == [bigquery_test.PREDICTIONS_MERGE,
                                           bigquery_test.FEEDBACK_MERGE] * 2
  assert merges[0] == merges[2] and merges[1] == merges[3]
  table = f"{bigquery_test.PROJECT}.{bigquery_test.DATASET}"
  rows = bigquery_test.merged_rows(client)
  assert rows[f"{table}.predictions"] == message["predictions"] * 2
  assert rows[f"{table}.feedback"] == message["feedback"] * 2
  assert log_sinks.write_rows(message, bigquery_test.URI) == ({"predictions": 0, "feedback": 0},
                                                               [])
  capsys.readouterr()
  # Refused alone, without a query, and not acknowledged: Pub/Sub keeps the message.
  with pytest.raises(exceptions.HTTPException) as refused:
    logger.log_records(pubsub_delivery(TOPIC, log_sinks.encode_message(
        {"predictions": [dict(message["predictions"][0], propensity=2.0)]}), {},
        message_id="43"))
  assert refused.value.response.status_code == 422
  assert len(client.requests) == setup + 6
  warning = json.loads(capsys.readouterr().out)
  assert warning["severity"] == "WARNING" and "propensity" in warning["rejected_rows"][0]["reason"]
