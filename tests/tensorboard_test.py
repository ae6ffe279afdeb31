"""TensorBoard from the venv serves a log directory holding a real events file."""
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import tensorflow as tf

STARTUP_SECONDS = 120.0


def _tensorboard() -> str:
  """The venv's `tensorboard` script, beside this interpreter."""
  return os.path.join(os.path.dirname(sys.executable), "tensorboard")


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def test_tensorboard_serves_the_scalars_of_an_events_file(tmp_path):
  if not os.path.exists(_tensorboard()):
    pytest.skip(f"no tensorboard script beside {sys.executable}")
  writer = tf.summary.create_file_writer(str(tmp_path / "logs" / "train"))
  with writer.as_default():
    for step in range(3):
      tf.summary.scalar("regret", 1.0 / (step + 1), step=step)
  writer.close()
  port = _free_port()
  process = subprocess.Popen(
      [_tensorboard(), "--logdir", str(tmp_path / "logs"), "--host", "127.0.0.1",
       "--port", str(port)],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
      if process.poll() is not None:
        raise AssertionError(f"tensorboard exited {process.returncode}:\n{process.stdout.read()}")
      try:
        response = httpx.get(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5.0)
        if response.status_code == 200 and response.json():
          break
      except httpx.TransportError:
        pass
      assert time.monotonic() < deadline, f"tensorboard did not answer in {STARTUP_SECONDS:.0f} s"
      time.sleep(0.5)
    assert "regret" in response.json()["train"]
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5.0).status_code == 200
  finally:
    process.terminate()
    process.communicate(timeout=30)
