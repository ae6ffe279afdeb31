"""Tests of claimed files: one process at a time, a dead process's claim taken up, no line lost."""
import os
import signal
import subprocess
import sys

from rlops import claims

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOLD = """
import sys, time
from rlops import claims
claim = claims.Claim(sys.argv[1])
print(len(claim.lines), flush=True)
time.sleep(60)
"""


def _holding(path: str) -> subprocess.Popen:
  """A process that claims `path` and works on it (sleeps) until killed."""
  process = subprocess.Popen([sys.executable, "-c", _HOLD, path], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": _ROOT})
  assert int(process.stdout.readline()) >= 0  # Claimed.
  return process


def test_a_claim_is_one_processs_until_it_dies_and_then_the_next_ones(tmp_path):
  path = str(tmp_path / "rows.jsonl")
  claims.append(path, [b"a", b"b"])
  worker = _holding(path)
  try:
    claims.append(path, [b"c"])  # Appended while the claim is worked on: not in it.
    claim = claims.Claim(path)
    assert claim.lines == [b"c"]  # The live claim is not taken.
    claim.release(claim.lines)
  finally:
    worker.send_signal(signal.SIGKILL)
    worker.wait()
  claim = claims.Claim(path)  # The dead process's claim is taken up: its lock is free.
  assert sorted(claim.lines) == [b"a", b"b", b"c"]
  claim.release([b"b"])
  assert sorted(os.listdir(tmp_path)) == ["rows.jsonl", "rows.jsonl.lock"]
  assert claims.Claim(path).lines == [b"b"]
