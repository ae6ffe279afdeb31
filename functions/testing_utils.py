"""Runs a function under the real functions-framework on loopback, for tests."""
import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Dict, Iterator

import httpx


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@contextlib.contextmanager
def functions_framework(source: str, target: str, env: Dict[str, str],
                        signature_type: str = "cloudevent", timeout: float = 60.0) -> Iterator[str]:
  """Yields the URL of `target` in `source` served by functions-framework on 127.0.0.1."""
  port = free_port()
  executable = os.path.join(os.path.dirname(sys.executable), "functions-framework")
  process = subprocess.Popen(
      [executable, "--source", source, "--target", target, "--signature-type", signature_type,
       "--host", "127.0.0.1", "--port", str(port)],
      env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  url = f"http://127.0.0.1:{port}/"
  try:
    deadline = time.monotonic() + timeout
    while True:
      if process.poll() is not None:
        raise RuntimeError(f"functions-framework exited: {process.stderr.read().decode()[-2000:]}")
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
