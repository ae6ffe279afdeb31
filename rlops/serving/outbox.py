"""Durable, asynchronous prediction logging: a JSONL outbox, a delivery thread, dead letters.

Rows are delivered as the outbox holds them, JSON lines (`LogSink.deliver_encoded`): the
lines this process appended are never decoded again; those it found on disk at start
are parsed first, and a malformed one is set aside.

The sink checks the rows as the Logger does: it raises ValueError for a message
it rejects for good (a row the warehouse cannot store) and anything else for a
failure worth retrying (OSError, HTTP 5xx, a busy SQLite warehouse). Retryable
failures are retried with backoff; a rejected batch is delivered again one row
at a time, and each row rejected on its own is set aside in the dead-letter
file, so one poison row never stops the others. `replay_dead_letters` sends the
set-aside rows again once fixed.
"""
import fcntl
import json
import math
import os
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import absl.logging
import orjson

from rlops import claims, log_sinks

DEFAULT_COMPACT_BYTES = 64 << 20
# Bytes per row the delivery thread first reads for a batch; more if a line is longer.
READ_BYTES_PER_ROW = 1024
MAX_BACKOFF_SECONDS = 5.0
# Digits of the delivered offset in `<outbox>.offset`, space-padded: rewritten in place.
OFFSET_WIDTH = 20


def dead_letter_path(outbox_path: str) -> str:
  """Where the outbox at `outbox_path` sets aside the rows its sink rejects."""
  return outbox_path + ".dead.jsonl"


def _malformed(line: bytes, reason: str) -> Dict[str, Any]:
  """The dead-letter entry of an outbox line kept as it is, for a person to read."""
  return {"line": line.decode(errors="replace") + "\n", "reason": reason}


def _dead_letter(line: bytes, reason: str) -> Dict[str, Any]:
  """The dead-letter entry of an outbox line the sink rejected for `reason`: its row, or the
  line itself if it is not JSON or too deeply nested to be written again."""
  try:
    row = log_sinks.decode_json(line)
  except ValueError as error:
    return _malformed(line, f"not JSON: {error}")
  try:
    json.dumps(row)
  except RecursionError:
    return _malformed(line, f"{reason} (nested too deep to keep as a row)")
  return {"row": row, "reason": reason}


def _delivered_offset(saved: bytes, end: int) -> int:
  """The delivered offset an outbox's offset file holds, for an outbox of `end` bytes."""
  saved = saved.strip()
  # Unreadable (torn by a power loss): deliver everything again, the warehouse de-duplicates.
  offset = int(saved) if saved.isdigit() else 0
  return 0 if offset > end else offset  # Larger: compacted after the offset was saved.


def undelivered_rows(outbox_path: str) -> int:
  """The rows of the outbox at `outbox_path`, which no logger has open, not delivered yet."""
  if not os.path.exists(outbox_path):
    return 0
  with open(outbox_path, "rb") as f:
    data = f.read()
  end = data.rfind(b"\n") + 1
  saved = b""
  if os.path.exists(outbox_path + ".offset"):
    with open(outbox_path + ".offset", "rb") as f:
      saved = f.read(2 * OFFSET_WIDTH)
  return data.count(b"\n", _delivered_offset(saved, end), end)


class OutboxInUse(OSError):
  """Another process logs to the outbox: two writers would each deliver, and compact, the other's
  rows as their own."""


def _open_locked(outbox_path: str):
  """The outbox opened for appending, unbuffered (each append one write to the OS, undone if it
  fails part-way), and locked for this process alone until it is closed or the process dies
  (however it dies); its folder is made if need be.

  Raises:
    OutboxInUse: Another process holds it.
  """
  os.makedirs(os.path.dirname(os.path.abspath(outbox_path)), exist_ok=True)
  file = open(outbox_path, "ab", buffering=0)  # noqa: SIM115 (returned open)
  try:
    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    file.close()
    raise OutboxInUse(f"{outbox_path} is in use by another server process; stop it first "
                      "(one server per outbox)") from None
  return file


def _open_offset(outbox_path: str) -> int:
  return os.open(outbox_path + ".offset", os.O_RDWR | os.O_CREAT, 0o644)


def check_free(outbox_path: str) -> None:
  """Raises OSError if a server could not log to the outbox at `outbox_path`: it, or its offset
  file, cannot be opened for writing, or another process logs to it."""
  _open_locked(outbox_path).close()
  os.close(_open_offset(outbox_path))


def _count_lines(path: str) -> int:
  if not os.path.exists(path):
    return 0
  with open(path, "rb") as f:
    return sum(1 for _ in f)


class OutboxLogger:
  """Prediction rows appended to a JSONL outbox and delivered to a sink by a thread.

  The outbox is this process's alone while the logger is open (`OutboxInUse`).
  `append` writes rows under a lock (the request path). The delivery thread sends
  the lines after the last delivered byte offset, which it persists in
  `<outbox>.offset`, in batches of up to `batch_rows` rows or `batch_seconds`:
  delivery is at least once and resumes after a restart. When everything is
  delivered and the outbox exceeds `compact_bytes`, it is truncated.

  Args:
    outbox_path: The JSONL outbox file.
    sink: Where rows go.
    batch_rows: Most rows per delivered message.
    batch_seconds: Longest wait for a batch to fill.
    compact_bytes: A drained outbox larger than this is truncated.
    drain_seconds: How long `close` keeps delivering.
  """

  def __init__(self, outbox_path: str, sink: log_sinks.LogSink, batch_rows: int = 500,
               batch_seconds: float = 0.2, compact_bytes: int = DEFAULT_COMPACT_BYTES,
               drain_seconds: float = 5.0):
    self.outbox_path = outbox_path
    self.dead_letter_path = dead_letter_path(outbox_path)
    self._sink = sink
    self._batch_rows = batch_rows
    self._batch_seconds = batch_seconds
    self._compact_bytes = compact_bytes
    self._drain_seconds = drain_seconds
    self._cond = threading.Condition()
    self._closing = False
    self._drain_deadline = math.inf
    self._file = _open_locked(outbox_path)
    self._offset_fd = _open_offset(outbox_path)
    self._end, self._offset, self._written = self._recover()
    # The lines from here on are this process's: orjson's JSON, delivered without a parse.
    self._own_from = self._end
    self._delivered = 0
    self.failures = 0
    self.dead_letters = _count_lines(self.dead_letter_path)
    self._read_fd = os.open(outbox_path, os.O_RDONLY)
    self._thread = threading.Thread(target=self._run, name="rlops-log-delivery", daemon=True)

  def _recover(self) -> Tuple[int, int, int]:
    """(end, delivered offset, rows pending) of the outbox on disk; drops a torn last line."""
    with open(self.outbox_path, "rb") as f:
      data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
      self._file.truncate(end)
    offset = _delivered_offset(os.pread(self._offset_fd, 2 * OFFSET_WIDTH, 0), end)
    return end, offset, data.count(b"\n", offset, end)

  def rows_on_disk(self) -> Iterator[Dict[str, Any]]:
    """The rows in the outbox file, delivered or not, oldest first (skips malformed lines)."""
    with self._cond:
      end = self._end
    with open(self.outbox_path, "rb") as f:
      for line in f.read(end).splitlines():
        try:
          yield log_sinks.decode_json(line)
        except ValueError:
          continue

  def _save_offset(self, offset: int) -> None:
    """One write in place, of fixed width: a crash of the process cannot tear it."""
    os.pwrite(self._offset_fd, b"%*d\n" % (OFFSET_WIDTH, offset), 0)

  def append(self, rows: List[Dict[str, Any]]) -> None:
    """Writes prediction rows to the outbox in one write; they survive a crash of this process
    when this returns. Rows are written as they are: the sink checks them as it delivers
    and a row it rejects is set aside, so the caller appends only rows it checked.

    Raises:
      OSError: The outbox cannot be written; nothing of `rows` is in it.
    """
    data = b"".join([orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows])
    with self._cond:
      try:
        if self._file.write(data) != len(data):
          raise OSError(f"{self.outbox_path}: short write (disk full?)")
      except OSError:
        self._file.truncate(self._end)
        raise
      self._end += len(data)
      pending = self._written - self._delivered
      self._written += len(rows)
      # Wake the delivery thread only where it waits: for a first row, or for a full batch.
      # A wake-up per request would cost a thread switch each.
      if pending == 0 or pending < self._batch_rows <= pending + len(rows):
        self._cond.notify_all()

  @property
  def delivered(self) -> int:
    """Rows delivered or set aside since this logger started."""
    return self._delivered

  @property
  def pending(self) -> int:
    """Rows in the outbox not yet delivered."""
    with self._cond:
      return self._written - self._delivered

  def flush(self, timeout: Optional[float] = None) -> bool:
    """Waits until every row appended so far is delivered; returns whether all were."""
    with self._cond:
      target = self._written
      return self._cond.wait_for(lambda: self._delivered >= target, timeout)

  def _set_aside(self, entry: Dict[str, Any]) -> None:
    """Appends a rejected row (or malformed line) and its reason to the dead-letter file."""
    claims.append(self.dead_letter_path,
                  [json.dumps({**entry, "set_aside_time": time.time()}).encode()])
    self.dead_letters += 1
    absl.logging.error("prediction log row set aside in %s: %s", self.dead_letter_path,
                       entry["reason"])

  def _read_lines(self) -> Tuple[List[bytes], int]:
    """(up to `batch_rows` whole lines after the delivered offset, without their line ends,
    the offset after them); one batch never mixes this process's lines with older ones."""
    with self._cond:
      end = self._end
    offset = self._offset
    if offset < self._own_from:
      end = self._own_from
    size = min(end - offset, self._batch_rows * READ_BYTES_PER_ROW)
    while True:
      data = os.pread(self._read_fd, size, offset)
      lines = data.split(b"\n", self._batch_rows)[:-1]  # The last piece is not a whole line.
      if lines or offset + size >= end:
        return lines, offset + sum(map(len, lines)) + len(lines)
      size = min(2 * size, end - offset)  # A line longer than what was read.

  @staticmethod
  def _checked_lines(lines: List[bytes]) -> Tuple[List[bytes], List[Dict[str, Any]]]:
    """(the lines that are each one JSON value, the others with their reasons): for lines
    found on disk, parsed one by one (joined, malformed lines can still parse as an array)."""
    valid, malformed = [], []
    for line in lines:
      try:
        log_sinks.decode_json(line)
        valid.append(line)
      except ValueError as error:
        malformed.append(_malformed(line, f"not JSON: {error}"))
    return valid, malformed

  def _deliver(self, lines: List[bytes]) -> None:
    """Delivers rows (JSON lines); on a permanent rejection, row by row, setting aside the
    rejected ones.

    Raises:
      Exception: A retryable failure; the rows are delivered again later.
    """
    try:
      self._sink.deliver_encoded(log_sinks.encode_predictions(lines))
      return
    except ValueError as error:
      if len(lines) == 1:
        self._set_aside(_dead_letter(lines[0], str(error)))
        return
    rejected = []  # Set aside once every row is through: a retry starts the batch over.
    for line in lines:
      try:
        self._sink.deliver_encoded(log_sinks.encode_predictions([line]))
      except ValueError as error:
        rejected.append(_dead_letter(line, str(error)))
    for entry in rejected:
      self._set_aside(entry)

  def _deliver_batch(self) -> None:
    """Delivers the next batch, then records its end offset and compacts a drained outbox."""
    lines, offset = self._read_lines()
    rows, malformed = (lines, []) if self._offset >= self._own_from else self._checked_lines(lines)
    if rows:
      self._deliver(rows)
    for entry in malformed:
      self._set_aside(entry)
    self._save_offset(offset)
    with self._cond:
      self._offset = offset
      self._delivered += len(lines)
      self._cond.notify_all()
      if self._offset == self._end > self._compact_bytes:
        self._file.truncate(0)
        self._end = self._offset = self._own_from = 0
        self._save_offset(0)  # A crash before this is seen as offset > size on recovery.

  def _pause(self, seconds: float) -> None:
    """Waits `seconds`, or until `close` is called."""
    until = time.monotonic() + seconds
    with self._cond:
      self._cond.wait_for(lambda: self._closing or time.monotonic() >= until, seconds)

  def _run(self) -> None:
    backoff = 0.1
    while True:
      with self._cond:
        self._cond.wait_for(lambda: self._written > self._delivered or self._closing)
        if self._closing and (self._written == self._delivered
                              or time.monotonic() >= self._drain_deadline):
          return
        self._cond.wait_for(
            lambda: self._written - self._delivered >= self._batch_rows or self._closing,
            self._batch_seconds)
      try:
        self._deliver_batch()
        backoff = 0.1
      except Exception as error:  # pylint: disable=broad-except
        self.failures += 1
        absl.logging.warning("log delivery failed (retry in %.1f s): %s", backoff, error)
        if self._closing:
          return  # The rows stay in the outbox for the next start.
        self._pause(backoff)
        backoff = min(2 * backoff, MAX_BACKOFF_SECONDS)

  def start(self) -> None:
    self._thread.start()

  def close(self) -> None:
    """Stops delivery after draining what it can within `drain_seconds`."""
    with self._cond:
      self._closing = True
      self._drain_deadline = time.monotonic() + self._drain_seconds
      self._cond.notify_all()
    if self._thread.is_alive():
      self._thread.join()
    self._file.close()
    os.close(self._read_fd)
    os.close(self._offset_fd)


def replay_dead_letters(path: str, sink: log_sinks.LogSink) -> Dict[str, int]:
  """Delivers the rows set aside in the dead-letter file at `path` again, one at a time.

  The file is claimed (`claims.Claim`), so a running server may keep setting rows aside
  and a concurrent replay takes none of its lines. Rows rejected again, with their new
  reason, and the lines that hold no row (malformed outbox lines, or lines damaged in the
  dead-letter file itself, kept as they are) are appended back to `path`. A retryable
  failure stops the replay and puts every line not yet delivered back. The claim of a
  replay that was killed is taken up by the next: no line is lost, though one may be
  delivered twice (the warehouse keeps one).

  Returns:
    {"delivered": rows now delivered, "rejected": rows set aside again,
     "unreplayable": lines put back that hold no row}.
  """
  claim = claims.Claim(path)
  counts = {"delivered": 0, "rejected": 0, "unreplayable": 0}
  kept, done = [], 0
  try:
    for line in claim.lines:
      entry = _replayable(line)
      if entry is None:
        kept.append(line)
        counts["unreplayable"] += 1
      else:
        try:
          sink.deliver({"predictions": [entry["row"]]})
          counts["delivered"] += 1
        except ValueError as error:
          kept.append(_with_reason(line, entry, str(error)))
          counts["rejected"] += 1
      done += 1
  finally:
    claim.release(kept + claim.lines[done:])
  return counts


def _with_reason(line: bytes, entry: Dict[str, Any], reason: str) -> bytes:
  """The dead-letter `line` of `entry`, with its new reason (unchanged if nested too deep to
  be written again)."""
  try:
    return json.dumps({**entry, "reason": reason}).encode()
  except RecursionError:
    return line


def _replayable(line: bytes) -> Optional[Dict[str, Any]]:
  """The dead-letter entry on `line` if it holds a row to deliver again; None if not."""
  try:
    entry = log_sinks.decode_json(line)
  except ValueError:
    return None
  return entry if isinstance(entry, dict) and "row" in entry else None
