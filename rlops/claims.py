"""Files of lines to send again (dead letters, undelivered rewards), one process at a time.

A process claims the lines of `path` by renaming the file to `<path>.claimed-<id>` and
holding a lock on that file while it works; a claim whose process died (its lock is
free) is taken up by the next claim. Writers append to `path` under `<path>.lock`, which
claiming and releasing take too, so no line is ever appended to a file being claimed.
"""
import contextlib
import fcntl
import glob
import os
import uuid
from typing import Iterable, List, Tuple

SUFFIX = ".claimed-"


@contextlib.contextmanager
def locked(path: str):
  """Holds `<path>.lock` (creating its folder if need be)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def _append(path: str, lines: List[bytes]) -> None:
  with open(path, "ab") as f:
    f.writelines(line + b"\n" for line in lines)
    f.flush()
    os.fsync(f.fileno())


def append(path: str, lines: List[bytes]) -> None:
  """Appends `lines` (without their line ends) to `path`, durably, under its lock."""
  with locked(path):
    _append(path, lines)


class Claim:
  """The lines of `path`, and of the claims of processes that died, taken by this process.

  `lines` are theirs, blank lines left out; `release` puts back what is still to send.
  """

  def __init__(self, path: str):
    if os.path.exists(path) and not os.path.isfile(path):
      raise OSError(f"{path} is not a file of lines")
    self.path = path
    self._files: List[Tuple[str, object]] = []  # (name, the open file holding its lock)
    with locked(path):
      for name in sorted(glob.glob(glob.escape(path) + SUFFIX + "*")):
        self._take(name, wait=False)
      if os.path.exists(path):
        name = f"{path}{SUFFIX}{uuid.uuid4().hex}"
        os.replace(path, name)
        self._take(name, wait=True)
    self.lines: List[bytes] = []
    for _, f in self._files:
      self.lines.extend(line for line in f.read().splitlines() if line.strip())

  def _take(self, name: str, wait: bool) -> None:
    f = open(name, "rb")  # noqa: SIM115 (held until `release`)
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:  # The claim of a process that is still working.
      f.close()
      return
    self._files.append((name, f))

  def release(self, kept: Iterable[bytes]) -> None:
    """Appends `kept` to `path`, durably, then ends the claim (its files are removed)."""
    kept = list(kept)
    with locked(self.path):
      if kept:
        _append(self.path, kept)
      for name, f in self._files:
        os.remove(name)
        f.close()
    self._files = []
