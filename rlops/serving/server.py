"""Running the endpoint: a loopback thread (tests, demo), worker processes, Vertex's environment.

Vertex sets AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE and
AIP_STORAGE_URI; `main` also reads RLOPS_HOST (default 127.0.0.1), RLOPS_OUTBOX,
RLOPS_WORKERS (server processes, default 1), RLOPS_MAX_BODY_BYTES,
RLOPS_OUTBOX_COMPACT_BYTES and where logs go (`log_sinks.sink_from_env`):
RLOPS_LOG_TOPIC (Pub/Sub, production), RLOPS_LOG_URL (a Logger function served
over HTTP) or RLOPS_WAREHOUSE (the Logger's code in process).

Each worker process has its own outbox (`outbox-<i>.jsonl` beside RLOPS_OUTBOX)
and shares the port through SO_REUSEPORT, so at-least-once delivery holds per
process. Start the same number of workers again after a crash: worker i
delivers what outbox-<i> still holds. The workers share one table of recently
served request ids (`recent`), created by the supervising process: a reused id
gets the same answer whichever worker its connection reaches, and each worker
refills the table from its outbox as it starts.
"""
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Optional, Tuple

import fastapi
import uvicorn

from rlops import log_sinks, noise
from rlops.serving import outbox, protocol, recent

WORKER_STOP_SECONDS = 60.0
PR_SET_PDEATHSIG = 1  # prctl(2)
# The log delivery thread shares the GIL with the event loop: CPython's default 5 ms
# switch interval would add up to 5 ms to a request each time the thread holds it.
SWITCH_INTERVAL_SECONDS = 0.0005


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
  """A TCP socket bound to (host, port), optionally shared with other processes."""
  # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say TCP (else
  # Nagle and delayed ACKs add 40 ms per response).
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    if reuse_port:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
  except BaseException:
    sock.close()
    raise
  return sock


class ServerThread:
  """Runs an app with uvicorn in a background thread on 127.0.0.1 (a free port by default)."""

  def __init__(self, app: fastapi.FastAPI, port: int = 0, startup_seconds: float = 30.0):
    self.app = app
    self._socket = listening_socket("127.0.0.1", port)
    self.port = self._socket.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    # log_config=None: an embedded server leaves the host process's logging as it is.
    # The asyncio loop: uvloop would replace the host process's event loop policy.
    self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                 log_config=None,
                                                 http=protocol.http_protocol(app)))
    self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                    name="rlops-server", daemon=True)
    self._startup_seconds = startup_seconds

  def start(self) -> "ServerThread":
    self._thread.start()
    deadline = time.monotonic() + self._startup_seconds
    while not self._server.started:
      if not self._thread.is_alive() or time.monotonic() > deadline:
        self.stop()
        raise RuntimeError(f"the server at {self.url} did not start")
      time.sleep(0.01)
    return self

  def stop(self) -> None:
    """Stops accepting, finishes in-flight requests, drains the logs and joins."""
    self._server.should_exit = True
    if self._thread.is_alive():
      self._thread.join()
    self._socket.close()

  def __enter__(self) -> "ServerThread":
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()


def address_from_env() -> Tuple[str, int]:
  """(host, port) to bind: RLOPS_HOST (default 127.0.0.1) and AIP_HTTP_PORT (default 8080)."""
  return os.environ.get("RLOPS_HOST", "127.0.0.1"), int(os.environ.get("AIP_HTTP_PORT", "8080"))


def worker_outbox_path(outbox_path: str, index: Optional[int]) -> str:
  """Worker `index`'s outbox beside `outbox_path` (outbox-<i>.jsonl); the path itself if None."""
  if index is None:
    return outbox_path
  stem, extension = os.path.splitext(outbox_path)
  return f"{stem}-{index}{extension}"


def app_from_env(worker: Optional[int] = None,
                 served: Optional[recent.RecentPredictions] = None) -> fastapi.FastAPI:
  """The app configured as Vertex configures a custom serving container.

  Args:
    worker: Index of this worker process, whose outbox is its own; None: the only one.
    served: The table of served request ids the worker processes share; None: its own.
  """
  # Imported here: the process supervising workers never loads TensorFlow.
  from rlops.serving import app as app_lib  # pylint: disable=import-outside-toplevel
  model_uri = os.environ.get("AIP_STORAGE_URI")
  if not model_uri:
    raise RuntimeError("AIP_STORAGE_URI is not set: the model directory to serve")
  outbox_path = os.environ.get("RLOPS_OUTBOX",
                               os.path.join(tempfile.gettempdir(), "rlops-outbox.jsonl"))
  return app_lib.create_app(
      model_uri, log_sinks.sink_from_env(), outbox_path=worker_outbox_path(outbox_path, worker),
      predict_route=os.environ.get("AIP_PREDICT_ROUTE", "/predict"),
      health_route=os.environ.get("AIP_HEALTH_ROUTE", "/health"),
      max_body_bytes=int(os.environ.get("RLOPS_MAX_BODY_BYTES", app_lib.DEFAULT_MAX_BODY_BYTES)),
      compact_bytes=int(os.environ.get("RLOPS_OUTBOX_COMPACT_BYTES",
                                       outbox.DEFAULT_COMPACT_BYTES)),
      served=served)


def serve(app: fastapi.FastAPI, sock: socket.socket) -> None:
  """Serves `app` on a bound socket until SIGINT or SIGTERM, with uvloop and httptools
  (the predict route answered in the parser's callbacks, `protocol`)."""
  sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
  server = uvicorn.Server(uvicorn.Config(app, loop="uvloop", http=protocol.http_protocol(app),
                                         access_log=False, log_level="warning"))
  server.run(sockets=[sock])


def _log_events_to_stderr() -> None:
  """Shows the endpoint's own events on stderr, one line each, whatever logging the process
  set up before: the versions it serves or refuses and why, and log delivery trouble (the
  serving modules log them with absl, at INFO and above)."""
  logger = logging.getLogger("absl")
  if any(getattr(handler, "rlops_events", False) for handler in logger.handlers):
    return
  handler = logging.StreamHandler()
  handler.rlops_events = True
  handler.setFormatter(logging.Formatter(
      "%(asctime)s rlops-serving[%(process)d] %(levelname)s: %(message)s"))
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False


def _stop_with(parent: int) -> None:
  """Has this worker stopped (SIGTERM: it drains its outbox) when the process that started it
  dies, even by kill -9, so that no worker outlives it and logs beside the next server."""
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
  if os.getppid() != parent:  # It died before that.
    raise SystemExit(f"rlops-serving: the process that started worker {os.getpid()} is gone")


def _worker(index: int, host: str, port: int, served: recent.RecentPredictions,
            parent: int) -> None:
  _stop_with(parent)
  noise.quiet_libraries()  # A spawned process: the CLI's filters are not inherited.
  _log_events_to_stderr()
  serve(app_from_env(index, served), listening_socket(host, port, reuse_port=True))


def run_workers(workers: int, host: str, port: int) -> int:
  """Runs `workers` server processes sharing (host, port); returns when all have stopped.

  SIGINT and SIGTERM are passed on to the workers, which drain their outboxes.
  If one worker exits, the others are stopped too. Returns the exit code.
  """
  context = multiprocessing.get_context("spawn")
  # Alive until every worker stops: a worker opens the table's lock by name, which the
  # table's finalizer removes.
  served = recent.RecentPredictions(context=context)
  processes = [context.Process(target=_worker, args=(index, host, port, served, os.getpid()),
                               name=f"rlops-worker-{index}") for index in range(workers)]
  stopping = threading.Event()

  def stop(signum, frame):  # pylint: disable=unused-argument
    stopping.set()

  previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
  try:
    for process in processes:
      process.start()
    while not stopping.is_set() and all(process.is_alive() for process in processes):
      stopping.wait(0.2)
  finally:
    for process in processes:
      if process.is_alive():
        os.kill(process.pid, signal.SIGTERM)
    for process in processes:
      process.join(WORKER_STOP_SECONDS)
      if process.is_alive():
        process.kill()
        process.join()
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  return 0 if stopping.is_set() else 1


def main() -> int:
  noise.quiet_libraries()
  _log_events_to_stderr()
  host, port = address_from_env()
  workers = int(os.environ.get("RLOPS_WORKERS", "1"))
  if workers < 1:
    raise RuntimeError(f"RLOPS_WORKERS must be positive, got {workers}")
  if workers > 1:
    return run_workers(workers, host, port)
  serve(app_from_env(), listening_socket(host, port))
  return 0
