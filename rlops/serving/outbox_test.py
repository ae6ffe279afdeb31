"""Tests of the outbox: recovery, compaction, poison rows set aside, retries, replay."""
import itertools
import json
import sqlite3

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


class _FlakySink(log_sinks.EncodingSink):
  """Fails the first `failures` deliveries as a busy or unreachable store does, then delivers."""

  def __init__(self, sink, failures: int):
    self._sink = sink
    self.failures = failures

  def deliver_encoded(self, data):
    if self.failures:
      self.failures -= 1
      raise OSError("warehouse unreachable")
    self._sink.deliver_encoded(data)


class _RecordingSink:
  """Accepts every message, as a fixed warehouse would, and keeps the encoded ones as they came."""

  def __init__(self):
    self.messages = []
    self.rows = []

  def deliver(self, message):
    self.rows.extend(message["predictions"])

  def deliver_encoded(self, data):
    self.messages.append(data)
    self.deliver(log_sinks.decode_json(data))


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


def test_appended_rows_are_delivered_as_written_in_batches_of_at_most_batch_rows(
    tmp_path, monkeypatch):
  monkeypatch.setattr(outbox, "READ_BYTES_PER_ROW", 64)  # Rows are longer: reads grow.
  path = tmp_path / "outbox.jsonl"
  rows = _rows("r", 12)
  rows[4]["observation"] = [0.1] * 500  # Longer than a first read of a whole batch.
  sink = _FlakySink(_RecordingSink(), failures=1)
  logger = outbox.OutboxLogger(str(path), sink, batch_rows=5, batch_seconds=0.01)
  logger.start()
  try:
    for start in range(0, 12, 3):
      logger.append(rows[start:start + 3])
    assert logger.flush(timeout=30.0)
  finally:
    logger.close()
  recording = sink._sink  # pylint: disable=protected-access
  assert recording.rows == rows and logger.failures == 1
  counts = [len(log_sinks.decode_json(message)["predictions"]) for message in recording.messages]
  assert max(counts) <= 5
  # Each message is consecutive lines of the outbox file, as they are there, joined.
  lines = path.read_bytes().splitlines()
  assert recording.messages == [
      log_sinks.encode_predictions(lines[start:start + count])
      for start, count in zip(itertools.accumulate(counts, initial=0), counts)]


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
  assert outbox.replay_dead_letters(logger.dead_letter_path, sink) == {
      "delivered": 0, "rejected": 3, "unreplayable": 1}
  recording = _RecordingSink()
  assert outbox.replay_dead_letters(logger.dead_letter_path, recording) == {
      "delivered": 3, "rejected": 0, "unreplayable": 1}
  assert [row["request_id"] for row in recording.rows] == ["x\ud800", "bad0", "late0"]
  with open(logger.dead_letter_path) as f:  # The malformed line stays for a person to read.
    assert [json.loads(line)["line"] for line in f] == ['{"request_id": \n']


def _delivered(tmp_path, lines, sink) -> outbox.OutboxLogger:
  """The logger, closed, of an outbox of `lines` found on disk, once it delivered them all
  without a failure to retry."""
  (tmp_path / "outbox.jsonl").write_text("".join(line + "\n" for line in lines))
  logger = outbox.OutboxLogger(str(tmp_path / "outbox.jsonl"), sink, batch_seconds=0.01)
  logger.start()
  try:
    assert logger.flush(timeout=10.0)
    assert logger.failures == 0
  finally:
    logger.close()
  return logger


def test_a_line_that_is_not_one_json_value_is_set_aside_whatever_lines_surround_it(tmp_path):
  warehouse = str(tmp_path / "warehouse.sqlite")
  rows = _rows("a", 6)
  two_rows_on_a_line = json.dumps(rows[1]) + "," + json.dumps(rows[2])
  # Joined with commas, all the lines still make one valid array: only each alone is refused.
  # And one nested deeper than any JSON parser here reads.
  malformed = ["1,2", "[3", "4]", two_rows_on_a_line, "[" * 5000 + "]" * 5000]
  lines = [json.dumps(rows[0]), *malformed, *map(json.dumps, rows[3:])]
  logger = _delivered(tmp_path, lines, log_sinks.InProcessSink(warehouse))
  assert logger.dead_letters == 5
  assert _stored(warehouse) == ["a0", "a3", "a4", "a5"]
  with open(logger.dead_letter_path) as f:
    dead = [json.loads(line) for line in f]
  assert [entry["line"] for entry in dead] == [line + "\n" for line in malformed]
  assert all("not JSON" in entry["reason"] for entry in dead)


class _FailingAfter(_RecordingSink):
  """Accepts `accepted` messages, then fails as an unreachable warehouse does."""

  def __init__(self, accepted: int):
    super().__init__()
    self._accepted = accepted

  def deliver(self, message):
    if len(self.rows) == self._accepted:
      raise OSError("warehouse unreachable")
    super().deliver(message)


def test_a_replay_loses_no_line_whatever_the_file_holds_or_however_it_stops(tmp_path):
  dead = str(tmp_path / "outbox.jsonl.dead.jsonl")
  good, still_bad, stranded = _rows("good", 1)[0], _rows("bad", 1)[0], _rows("stranded", 1)[0]
  still_bad["propensity"] = -0.5
  unreplayable = ["this line was torn", "5", '{"line": "[1,", "reason": "not JSON"}']
  lines = [json.dumps({"row": good, "reason": "was refused"}), *unreplayable,
           json.dumps({"row": still_bad, "reason": "was refused"})]
  (tmp_path / "outbox.jsonl.dead.jsonl").write_text("".join(line + "\n" for line in lines))
  # What a replay killed after claiming its file left behind.
  (tmp_path / "outbox.jsonl.dead.jsonl.claimed-1").write_text(
      json.dumps({"row": stranded, "reason": "was refused"}) + "\n")

  # A retryable failure after one row: every line not delivered is back.
  failing = _FailingAfter(accepted=1)
  try:
    outbox.replay_dead_letters(dead, failing)
    raise AssertionError("the failure was not raised")
  except OSError:
    pass
  assert [row["request_id"] for row in failing.rows] == ["stranded0"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.jsonl.dead.jsonl",
                                                        "outbox.jsonl.dead.jsonl.lock"]
  assert sorted((tmp_path / "outbox.jsonl.dead.jsonl").read_text().splitlines()) == sorted(lines)

  warehouse = str(tmp_path / "warehouse.sqlite")
  assert outbox.replay_dead_letters(dead, log_sinks.InProcessSink(warehouse)) == {
      "delivered": 1, "rejected": 1, "unreplayable": 3}
  assert _stored(warehouse) == ["good0"]
  kept = (tmp_path / "outbox.jsonl.dead.jsonl").read_text().splitlines()
  assert sorted(kept[:3]) == sorted(unreplayable)  # As they were, for a person to read.
  assert json.loads(kept[3])["row"] == still_bad and "propensity" in json.loads(kept[3])["reason"]


def test_a_row_nested_too_deep_to_show_is_set_aside_and_replays_nothing_else_stuck(tmp_path):
  warehouse = str(tmp_path / "warehouse.sqlite")
  sink = log_sinks.InProcessSink(warehouse)
  # orjson reads it (under 1024 levels); repr and the standard library's json go no deeper
  # than Python's recursion limit.
  deep = json.dumps({**_rows("deep", 1)[0], "observation": [1.0]}).replace(
      "[1.0]", "[" * 1000 + "1.0" + "]" * 1000)
  lines = [json.dumps(_rows("a", 1)[0]), deep, json.dumps(_rows("b", 1)[0])]
  logger = _delivered(tmp_path, lines, sink)
  assert logger.dead_letters == 1
  assert _stored(warehouse) == ["a0", "b0"]
  with open(logger.dead_letter_path) as f:
    [entry] = [json.loads(line) for line in f]
  # Kept as its line where the standard library cannot write it again (at the default
  # recursion limit), else as its row: either way, logging goes on.
  assert entry.get("line") == deep + "\n" or entry["row"]["request_id"] == "deep0"

  # The same row as a dead letter, between two rows: kept as it was, and the others delivered.
  dead = tmp_path / "replayed.dead.jsonl"
  dead_lines = [json.dumps({"row": _rows("c", 1)[0], "reason": "x"}),
                '{"row": ' + deep + ', "reason": "x"}',
                json.dumps({"row": _rows("d", 1)[0], "reason": "x"})]
  dead.write_text("".join(line + "\n" for line in dead_lines))
  assert outbox.replay_dead_letters(str(dead), sink) == {
      "delivered": 2, "rejected": 1, "unreplayable": 0}
  assert _stored(warehouse) == ["a0", "b0", "c0", "d0"]
  [kept] = dead.read_text().splitlines()
  assert log_sinks.decode_json(kept)["row"]["request_id"] == "deep0"
