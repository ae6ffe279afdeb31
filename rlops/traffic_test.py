"""Tests of feedback delivery: a locked warehouse delays rewards, never loses them."""
import sqlite3

from rlops import log_sinks, traffic, warehouse


class _LockedThenFree:
  """The Logger's code in process, behind a warehouse locked for the first `locked` calls."""

  def __init__(self, path: str, locked: int):
    self._sink = log_sinks.InProcessSink(path)
    self.locked = locked

  def deliver(self, message):
    if self.locked:
      self.locked -= 1
      raise sqlite3.OperationalError("database is locked")
    self._sink.deliver(message)


def _feedback(prefix: str, count: int):
  return [{"request_id": f"{prefix}{i}", "event_time": 1.0, "reward": 1.0} for i in range(count)]


def _stored(path: str) -> int:
  with sqlite3.connect(path) as connection:
    return connection.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def test_feedback_is_retried_with_backoff_and_kept_until_delivered(tmp_path):
  path = str(tmp_path / "warehouse.sqlite")
  warehouse.Warehouse(path).close()
  sink = _LockedThenFree(path, locked=3)
  sender = traffic.FeedbackSender(sink, batch_rows=10, retry_seconds=0.25)
  sender.add(_feedback("a", 10))  # Two failed retries within 0.25 s: kept pending.
  failures = sender.failures
  assert sender.pending and failures >= 2 and _stored(path) == 0
  sender.add(_feedback("b", 10))  # Not tried: each try would hold the run up 0.25 s again.
  assert sender.failures == failures and len(sender.pending) == 20
  assert sender.send() and not sender.pending
  assert sender.delivered == 20 and _stored(path) == 20


def test_a_rejected_feedback_row_is_kept_apart_alone(tmp_path):
  path = str(tmp_path / "warehouse.sqlite")
  sender = traffic.FeedbackSender(log_sinks.InProcessSink(path), batch_rows=100)
  poison = {"request_id": "nan", "event_time": 1.0, "reward": float("nan")}
  sender.add([*_feedback("a", 5), poison, *_feedback("b", 5)])
  assert sender.send()
  assert sender.delivered == 10 and sender.refused == [poison] and _stored(path) == 10
