"""Tests of the outbox: recovery, compaction, poison rows set aside, retries, replay."""
import json
import sqlite3
import time


from rlops import log_sinks
from rlops.serving import outbox


def _rows(prefix: str, count: int):
  return [{"request_id": f"{prefix}{i}", "event_time": 1.0, "observation": [0.5, 1.0],
           "action": i % 3, "propensity": 0.5, "model_version": "1", "source": "endpoint"}
          for i in range(count)]


def _stored(path) -> list:
  with sqlite3.connect(path) as connection:
    return sorted(row[0] for row in connection.execute("SELECT request_id FROM predictions"))


def test_outbox_recovers_a_torn_line_and_compacts(tmp_path):
  path = tmp_path / "outbox.jsonl"
  rows = _rows("r", 30)
  path.write_text("".join(json.dumps(row) + "\n" for row in rows[:10]) + '{"request_id": "r')
  logger = outbox.OutboxLogger(str(path), log_sinks.InProcessSink(str(tmp_path / "wh.sqlite")),
                               compact_bytes=1000)
  assert logger.pending == 10  # The torn last line was never acknowledged: dropped.
  logger.start()
  try:
    for start in (10, 20):
      logger.append(rows[start:start + 10])
      assert logger.flush(timeout=30.0)
      assert path.stat().st_size == 0 and int((tmp_path / "outbox.jsonl.offset").read_text()) == 0
    assert logger.delivered == 30 and logger.pending == 0
  finally:
    logger.close()
  assert len(_stored(tmp_path / "wh.sqlite")) == 30


class _FlakySink:
  """Fails the first `failures` deliveries as a busy or unreachable store does, then delivers."""

  def __init__(self, sink, failures: int):
    self._sink = sink
    self.failures = failures

  def deliver(self, message):
    if self.failures:
      self.failures -= 1
      raise OSError("warehouse unreachable")
    self._sink.deliver(message)


class _RecordingSink:
  """Accepts every message, as a fixed warehouse would."""

  def __init__(self):
    self.rows = []

  def deliver(self, message):
    self.rows.extend(message["predictions"])


class _SwitchedSink:
  """Records each delivered row, and whether it came as the very object appended (held in
  memory) or as read back from the file; fails while `down`."""

  def __init__(self, appended):
    self.down = True
    self.attempts = 0
    self.delivered = []
    self._appended = {id(row) for row in appended}  # The caller keeps the rows alive.

  def deliver(self, message):
    self.attempts += 1
    if self.down:
      raise OSError("warehouse unreachable")
    self.delivered.extend((row["request_id"], "in memory" if id(row) in self._appended
                           else "read back") for row in message["predictions"])


def test_a_restart_delivers_what_follows_the_saved_offset_or_all_if_it_is_unreadable(tmp_path):
  path = tmp_path / "outbox.jsonl"
  rows = _rows("r", 8)
  logger = outbox.OutboxLogger(str(path), _RecordingSink())
  logger.start()
  logger.append(rows[:5])
  assert logger.flush(timeout=30.0)
  logger.close()
  with open(path, "ab") as f:  # Appended by a process killed before it delivered them.
    f.write(b"".join(json.dumps(row).encode() + b"\n" for row in rows[5:]))
  for offset_file, expected in ((None, rows[5:]), (b"\0" * 9, rows)):  # Then torn by a crash.
    if offset_file is not None:
      (tmp_path / "outbox.jsonl.offset").write_bytes(offset_file)
    sink = _RecordingSink()
    logger = outbox.OutboxLogger(str(path), sink)
    assert logger.pending == len(expected)
    logger.start()
    assert logger.flush(timeout=30.0)
    logger.close()
    assert sink.rows == expected


def test_rows_beyond_those_held_in_memory_are_read_back_from_the_file(tmp_path, monkeypatch):
  monkeypatch.setattr(outbox, "MAX_ROWS_IN_MEMORY", 7)
  rows = _rows("r", 26)
  sink = _SwitchedSink(rows)
  logger = outbox.OutboxLogger(str(tmp_path / "outbox.jsonl"), sink, batch_rows=5,
                               batch_seconds=0.01)
  logger.start()
  try:
    for start in range(0, 18, 3):  # While the sink is down, 9 rows fit in memory.
      logger.append(rows[start:start + 3])
    logger.append(rows[18:20])
    deadline = time.monotonic() + 30.0
    while not sink.attempts and time.monotonic() < deadline:
      time.sleep(0.01)
    sink.down = False
    assert sink.attempts and logger.flush(timeout=30.0)
    logger.append(rows[20:26])
    assert logger.flush(timeout=30.0)
  finally:
    logger.close()
  assert sink.delivered == [(row["request_id"], "in memory") for row in rows[:9]] + [
      (row["request_id"], "read back") for row in rows[9:20]] + [
      (row["request_id"], "in memory") for row in rows[20:]]
  assert logger.failures >= 1 and logger.pending == 0


def test_poison_rows_are_set_aside_and_logging_continues(tmp_path):
  warehouse = str(tmp_path / "warehouse.sqlite")
  sink = _FlakySink(log_sinks.InProcessSink(warehouse), failures=2)
  poison = [{**_rows("bad", 1)[0], "request_id": "x\ud800"},
            {**_rows("bad", 1)[0], "propensity": -0.25}]
  # Written by an older server that did not validate rows, and a malformed line.
  lines = [json.dumps(row) for row in [*_rows("a", 5), *poison, *_rows("b", 5)]]
  (tmp_path / "outbox.jsonl").write_text("\n".join([*lines, '{"request_id": ', ""]))
  logger = outbox.OutboxLogger(str(tmp_path / "outbox.jsonl"), sink, batch_seconds=0.01)
  logger.start()
  try:
    assert logger.flush(timeout=30.0)
    # Appended as it is, among good rows: the sink refuses it alone.
    logger.append([*_rows("c", 2), {**_rows("late", 1)[0], "event_time": float("inf")},
                   *_rows("c", 5)[2:]])
    assert logger.flush(timeout=30.0)
    assert logger.failures == 2 and logger.dead_letters == 4 and logger.pending == 0
  finally:
    logger.close()
  assert _stored(warehouse) == sorted(row["request_id"] for prefix in "abc"
                                      for row in _rows(prefix, 5))
  with open(logger.dead_letter_path) as f:
    dead = [json.loads(line) for line in f]
  assert [entry.get("row", {}).get("request_id") for entry in dead] == ["x\ud800", "bad0", None,
                                                                        "late0"]
  assert "not valid Unicode" in dead[0]["reason"] and "propensity" in dead[1]["reason"]
  assert dead[2]["line"] == '{"request_id": \n' and "not JSON" in dead[2]["reason"]
  assert "event_time must be a finite number" in dead[3]["reason"]
  restarted = outbox.OutboxLogger(str(tmp_path / "outbox.jsonl"), sink)
  restarted.close()
  assert restarted.dead_letters == 4  # Counted across restarts.

  # Replayed into the same warehouse, they are rejected again and kept; once the warehouse
  # (here: a recording sink) accepts them, they are delivered.
  assert outbox.replay_dead_letters(logger.dead_letter_path, sink) == {"delivered": 0,
                                                                        "rejected": 3}
  recording = _RecordingSink()
  assert outbox.replay_dead_letters(logger.dead_letter_path, recording) == {"delivered": 3,
                                                                             "rejected": 0}
  assert [row["request_id"] for row in recording.rows] == ["x\ud800", "bad0", "late0"]
  with open(logger.dead_letter_path) as f:  # The malformed line stays for a person to read.
    assert [json.loads(line)["line"] for line in f] == ['{"request_id": \n']
