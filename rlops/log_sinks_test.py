"""Tests of the sinks' error classification and of rows checked against the model's limits."""
import http.server
import json
import sqlite3
import threading

import httpx
import pytest

from rlops import log_sinks
from rlops.serving import outbox

LIMITS = log_sinks.RowLimits(rank_k=2, num_actions=3, min_propensity=0.01, min_reward=0.0,
                             max_reward=5.0)


def _prediction(request_id: str, **changes):
  return {"request_id": request_id, "event_time": 1.0, "observation": [0.5, 1.0], "action": 1,
          "propensity": 0.5, "model_version": "1", "source": "endpoint", **changes}


def _feedback(request_id: str, **changes):
  return {"request_id": request_id, "event_time": 1.0, "reward": 4.0, **changes}


def _table(path, table: str) -> list:
  """The table's rows, sorted: by request_id, its first column."""
  with sqlite3.connect(path) as connection:
    return sorted(connection.execute(f"SELECT * FROM {table}"))


def _ids(path, table: str) -> list:
  return [row[0] for row in _table(path, table)]


def test_rows_outside_the_model_are_rejected_alone_with_a_reason(tmp_path):
  path = tmp_path / "warehouse.sqlite"
  sink = log_sinks.InProcessSink(str(path), LIMITS)
  message = {"predictions": [_prediction("ok-1"), _prediction("short", observation=[0.5]),
                             _prediction("action", action=999999),
                             _prediction("tiny", propensity=1e-300),
                             _prediction("when", event_time=float("nan")), _prediction("ok-2")],
             "feedback": [_feedback("ok-1"), _feedback("huge", reward=1e9),
                          _feedback("nan", reward=float("nan")), _feedback("ok-2")]}
  with pytest.raises(log_sinks.RejectedMessage) as raised:
    sink.deliver(message)
  reason = str(raised.value)
  assert reason.startswith("6 row(s) rejected")
  for expected in ("'short': observation has 1 values, the model takes 2",
                   "'when': event_time must be a finite number",
                   "'action': action 999999 is not below 3", "'tiny': propensity 1e-300",
                   "'huge': reward 1000000000.0 is outside", "'nan': reward must be"):
    assert expected in reason
  assert _ids(path, "predictions") == ["ok-1", "ok-2"]
  assert _ids(path, "feedback") == ["ok-1", "ok-2"]


def test_rows_within_the_limits_are_stored_as_without_limits(tmp_path):
  good = {"predictions": [_prediction("p-1", observation=[0.1, 2.0 ** -20]),
                          _prediction("p-2", event_time=1.7e9, action=2, propensity=1.0)],
          "feedback": [_feedback("p-1", reward=0.0), _feedback("p-2", reward=5.0)]}
  bad = {"predictions": [_prediction("long", observation=[0.5, 1.0, 1.5]),
                         _prediction("sent", source=None)],
         "feedback": [_feedback("low", reward=-1.0)]}
  message = {kind: bad[kind][:1] + good[kind] + bad[kind][1:] for kind in good}
  limited, plain = str(tmp_path / "limited.sqlite"), str(tmp_path / "plain.sqlite")
  counts, rejected = log_sinks.write_rows(message, limited, LIMITS)
  assert counts == log_sinks.write_rows(good, plain)[0] == {"predictions": 2, "feedback": 2}
  assert [entry["row"]["request_id"] for entry in rejected] == ["long", "sent", "low"]
  assert "'sent': source must be" in rejected[1]["reason"]
  for table in ("predictions", "feedback"):
    assert _table(limited, table) == _table(plain, table)
  assert log_sinks.write_rows(message, limited, LIMITS)[0] == {"predictions": 0, "feedback": 0}


@pytest.mark.parametrize("message", [[], {"predictions": 5}, {"feedback": {"request_id": "x"}}])
def test_a_message_not_made_of_lists_of_rows_is_refused_for_good(tmp_path, message):
  path = str(tmp_path / "warehouse.sqlite")
  for limits in (None, LIMITS):
    with pytest.raises(ValueError, match="a message is a JSON object|must be a list of rows"):
      log_sinks.write_rows(message, path, limits)


def test_the_outbox_sets_aside_exactly_the_rows_outside_the_limits(tmp_path):
  path = tmp_path / "warehouse.sqlite"
  logger = outbox.OutboxLogger(str(tmp_path / "outbox.jsonl"),
                               log_sinks.InProcessSink(str(path), LIMITS))
  logger.start()
  try:
    logger.append([_prediction("a"), _prediction("b", action=7), _prediction("c")])
    assert logger.flush(timeout=30.0)
  finally:
    logger.close()
  assert _ids(path, "predictions") == ["a", "c"] and logger.dead_letters == 1


class _Status(http.server.BaseHTTPRequestHandler):
  """Answers every POST with the status in its path: /400, /503."""

  def do_POST(self):  # pylint: disable=invalid-name (the http.server API)
    self.rfile.read(int(self.headers["content-length"]))
    self.send_response(int(self.path.strip("/")))
    self.send_header("content-length", "2")
    self.end_headers()
    self.wfile.write(b"no")

  def log_message(self, *args):
    del args


def test_logger_answers_are_classified_as_rejected_or_retryable():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  url = f"http://127.0.0.1:{server.server_address[1]}"
  message = {"predictions": [_prediction("a")]}
  try:
    with pytest.raises(log_sinks.RejectedMessage, match="answered 400"):
      log_sinks.CloudEventSink(f"{url}/400").deliver(message)
    for status in (429, 503):
      with pytest.raises(httpx.HTTPStatusError) as raised:
        log_sinks.CloudEventSink(f"{url}/{status}").deliver(message)
      assert not isinstance(raised.value, ValueError)
  finally:
    server.shutdown()
    server.server_close()


def test_limits_come_from_the_environment(tmp_path, monkeypatch):
  for name in ("RLOPS_LOG_TOPIC", "RLOPS_LOG_URL"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("RLOPS_WAREHOUSE", str(tmp_path / "warehouse.sqlite"))
  monkeypatch.setenv("RLOPS_ROW_LIMITS", json.dumps({"rank_k": 2, "num_actions": 3}))
  assert log_sinks.sink_from_env().limits == log_sinks.RowLimits(rank_k=2, num_actions=3)
