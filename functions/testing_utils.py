"""Runs a function under the real functions-framework, and Google's Pub/Sub emulator, on
loopback, for tests."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, Optional

import httpx
import pytest

from rlops import warehouse as warehouse_lib

EMULATOR_START_SECONDS = 90.0


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@contextlib.contextmanager
def functions_framework(source: str, target: str, env: Dict[str, str],
                        signature_type: str = "cloudevent", timeout: float = 60.0,
                        log_path: Optional[str] = None) -> Iterator[str]:
  """Yields the URL of `target` in `source` served by functions-framework on 127.0.0.1.

  Its output (stdout and stderr, unbuffered) goes to `log_path`, or to a temporary file.
  """
  port = free_port()
  executable = os.path.join(os.path.dirname(sys.executable), "functions-framework")
  with open(log_path, "w+b") if log_path else tempfile.TemporaryFile() as log:
    process = subprocess.Popen(
        [executable, "--source", source, "--target", target, "--signature-type", signature_type,
         "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
      deadline = time.monotonic() + timeout
      while True:
        if process.poll() is not None:
          log.seek(0)
          raise RuntimeError(f"functions-framework exited: {log.read().decode()[-2000:]}")
        try:
          httpx.get(url, timeout=1.0)
          break
        except httpx.TransportError:
          if time.monotonic() > deadline:
            raise
          time.sleep(0.2)
      yield url
    finally:
      process.terminate()
      process.wait(timeout=10)


def post(url: str, headers: Dict[str, str], body: dict, timeout: float = 120.0) -> httpx.Response:
  return httpx.post(url, headers=headers, json=body, timeout=timeout)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
  """Polls `condition` until it holds; fails the test naming `what` after `seconds`."""
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline, f"{what} within {seconds} s"
    time.sleep(0.2)


def rewarded(warehouse_path: str) -> int:
  """Rewarded records in the SQLite warehouse at `warehouse_path`; 0 before it exists."""
  if not os.path.exists(warehouse_path):
    return 0
  store = warehouse_lib.Warehouse(warehouse_path)
  try:
    return store.count_rewarded()
  finally:
    store.close()


@contextlib.contextmanager
def pubsub_emulator(directory: str, project: str) -> Iterator[str]:
  """Yields the host:port of Google's Pub/Sub emulator, started on 127.0.0.1 with its data
  and log under `directory`; skips the test where the Cloud CLI or the emulator is absent.
  Stops the emulator's whole process group on exit."""
  if shutil.which("gcloud") is None:
    pytest.skip("the Cloud CLI (gcloud), which ships the Pub/Sub emulator, is not installed")
  host = f"127.0.0.1:{free_port()}"
  log_path = os.path.join(directory, "emulator.log")
  os.makedirs(os.path.join(directory, "emulator-data"))
  with open(log_path, "w") as log:
    process = subprocess.Popen(
        ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port={host}",
         f"--project={project}", f"--data-dir={os.path.join(directory, 'emulator-data')}"],
        env={**os.environ, "CLOUDSDK_CONFIG": os.path.join(directory, "gcloud"),
             "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.monotonic() + EMULATOR_START_SECONDS
    while True:
      if process.poll() is not None:
        with open(log_path) as log:
          pytest.skip(f"the Pub/Sub emulator did not start: {log.read()[-500:]}")
      try:
        httpx.get(f"http://{host}/", timeout=1.0)
        break
      except httpx.TransportError:
        if time.monotonic() > deadline:
          pytest.skip(f"the Pub/Sub emulator did not answer within {EMULATOR_START_SECONDS} s")
        time.sleep(0.2)
    yield host
  finally:
    with contextlib.suppress(ProcessLookupError):  # The group is gone if the emulator failed.
      os.killpg(process.pid, signal.SIGTERM)
    try:
      process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
