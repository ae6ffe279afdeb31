"""The prediction endpoint: the same code locally and as the Vertex AI serving container.

    POST <predict route>  {"instances": [{"observation": [k floats], "request_id": "optional"}]}
                          -> {"predictions": [{"action", "propensity", "request_id",
                                               "model_version"}]}
    GET <health route>    200 with the serving version once a model is loaded, 503 before
    GET /version, /stats  the serving model; request, prediction and logging counters

The server serves the newest version Pusher wrote under its model directory and
swaps to a newer one, loaded off the request path, without dropping requests.
The policy is epsilon-greedy over the model's greedy arm with exact
propensities, computed in NumPy (linear agents) or one `tf.function` (neural).
Every prediction is appended to a local outbox before it is answered; a
delivery thread forwards the outbox to a `LogSink` at least once, so the
request path never waits on the warehouse.

Vertex sets AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE and
AIP_STORAGE_URI; `main` also reads RLOPS_HOST (default 127.0.0.1),
RLOPS_OUTBOX and where logs go (`log_sinks.sink_from_env`): RLOPS_LOG_TOPIC
(Pub/Sub, production), RLOPS_LOG_URL (a Logger function served over HTTP) or
RLOPS_WAREHOUSE (the Logger's code in process).
Run one worker per outbox: the outbox is shared through in-process locks.
"""
import contextlib
import dataclasses
import json
import math
import os
import socket
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import absl.logging
import fastapi
import numpy as np
import tensorflow as tf
import uvicorn
from fastapi import responses

from rlops import agents, log_sinks, model_io

MAX_REQUEST_ID_LENGTH = 128
MAX_RETRY_SECONDS = 60.0

_INSTANCE_SCHEMA = {
    "type": "object",
    "required": ["observation"],
    "additionalProperties": False,
    "properties": {
        "observation": {"type": "array", "items": {"type": "number"},
                        "description": "The user's context: rank_k finite numbers."},
        "request_id": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID_LENGTH,
                       "description": "Joins the prediction to its feedback; uuid4 hex if absent."},
    },
}
_PREDICTION_SCHEMA = {
    "type": "object",
    "required": ["action", "propensity", "request_id", "model_version"],
    "properties": {
        "action": {"type": "integer", "description": "The recommended movie."},
        "propensity": {"type": "number",
                       "description": "Exact probability with which the policy chose the action."},
        "request_id": {"type": "string"},
        "model_version": {"type": "string"},
    },
}
_ERROR_SCHEMA = {"type": "object", "required": ["error"],
                 "properties": {"error": {"type": "string"}}}


def _json_content(schema: Dict[str, Any]) -> Dict[str, Any]:
  return {"content": {"application/json": {"schema": schema}}}


def _predict_openapi(max_instances: int) -> Dict[str, Any]:
  instances = {"type": "array", "items": _INSTANCE_SCHEMA, "minItems": 1, "maxItems": max_instances}
  request = {"type": "object", "required": ["instances"], "properties": {"instances": instances}}
  response = {"type": "object", "required": ["predictions"],
              "properties": {"predictions": {"type": "array", "items": _PREDICTION_SCHEMA}}}
  return {
      "requestBody": {"required": True, **_json_content(request)},
      "responses": {
          "200": {"description": "One prediction per instance, in order.",
                  **_json_content(response)},
          "400": {"description": "Invalid request; nothing was predicted.",
                  **_json_content(_ERROR_SCHEMA)},
          "503": {"description": "No model loaded yet.", **_json_content(_ERROR_SCHEMA)},
      },
  }


@dataclasses.dataclass(frozen=True)
class ServingModel:
  """One loaded version: its greedy rule and the exact epsilon-greedy propensities."""
  version: str
  agent: str
  num_actions: int
  rank_k: int
  epsilon: float
  greedy: Callable[[np.ndarray], np.ndarray]

  @property
  def greedy_propensity(self) -> float:
    return 1.0 - self.epsilon + self.epsilon / self.num_actions

  @property
  def other_propensity(self) -> float:
    return self.epsilon / self.num_actions

  def act(self, observations: np.ndarray,
          rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(actions, propensities) for a [n, rank_k] float32 batch."""
    greedy = self.greedy(observations)
    count = len(greedy)
    explore = rng.random(count) < self.epsilon
    actions = np.where(explore, rng.integers(0, self.num_actions, size=count), greedy)
    propensities = np.where(actions == greedy, self.greedy_propensity, self.other_propensity)
    return actions, propensities

  def describe(self) -> Dict[str, Any]:
    return {"version": self.version, "agent": self.agent, "num_actions": self.num_actions,
            "rank_k": self.rank_k, "epsilon": self.epsilon}


def load_model(directory: str, version: str) -> ServingModel:
  """Builds the serving rule of the model in `directory` once, from its agent checkpoint."""
  agent, metadata = model_io.load_agent(directory)
  config = model_io.agent_config_of(metadata)
  rank_k = int(metadata["rank_k"])
  if config.is_linear:
    theta_t = agents.linear_arms(agent).theta.numpy().T

    def greedy(observations):
      return np.argmax(observations @ theta_t, axis=1)
  else:
    policy = agents.greedy_policy(agent)
    act = tf.function(lambda x: policy.action(agents.restart(x)).action,
                      input_signature=[tf.TensorSpec([None, rank_k], tf.float32)])

    def greedy(observations):
      return act(observations).numpy()
  model = ServingModel(version=version, agent=config.name, num_actions=int(metadata["num_movies"]),
                       rank_k=rank_k, epsilon=float(metadata["epsilon"]), greedy=greedy)
  model.greedy(np.zeros((1, rank_k), np.float32))  # Traces the neural rule before serving.
  return model


class ModelWatcher:
  """Serves the newest loadable version under `model_uri` and swaps to newer ones.

  `model_uri` is one model directory (it holds the metadata file; the version is
  its base name) or Pusher's base directory of numbered versions. A numbered
  folder is a candidate once its metadata file exists; a version that fails to
  load is logged and retried with exponential backoff (Pusher copies files in
  place, so a folder can be incomplete for a while), and the current model
  keeps serving meanwhile.
  """

  def __init__(self, model_uri: str, poll_seconds: float):
    self.model_uri = model_uri.rstrip("/")
    self.poll_seconds = poll_seconds
    self.current: Optional[ServingModel] = None
    self.load_failures = 0
    self._newest_number = -1
    self._retry: Dict[str, Tuple[float, float]] = {}  # version -> (retry time, delay)
    self._loaded = threading.Event()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="rlops-model-watcher", daemon=True)

  def _candidates(self) -> List[Tuple[str, str]]:
    """(version, directory) of loadable versions newer than the current one, newest first."""
    if tf.io.gfile.exists(os.path.join(self.model_uri, model_io.METADATA_FILE)):
      version = os.path.basename(self.model_uri)
      return [] if self.current else [(version, self.model_uri)]
    if not tf.io.gfile.isdir(self.model_uri):
      return []
    numbers = sorted((int(name.strip("/")) for name in tf.io.gfile.listdir(self.model_uri)
                      if name.strip("/").isdigit()), reverse=True)
    directories = [(str(n), os.path.join(self.model_uri, str(n)))
                   for n in numbers if n > self._newest_number]
    return [(version, directory) for version, directory in directories
            if tf.io.gfile.exists(os.path.join(directory, model_io.METADATA_FILE))]

  def poll(self) -> None:
    """Loads the newest candidate not waiting for a retry, and swaps it in."""
    now = time.monotonic()
    for version, directory in self._candidates():
      if self._retry.get(version, (0.0, 0.0))[0] > now:
        continue
      try:
        model = load_model(directory, version)
      except Exception as error:  # pylint: disable=broad-except
        self.load_failures += 1
        delay = (min(2 * self._retry[version][1], MAX_RETRY_SECONDS) if version in self._retry
                 else self.poll_seconds)
        self._retry[version] = (now + delay, delay)
        absl.logging.warning("cannot load model version %s from %s (retry in %.1f s): %s",
                             version, directory, delay, error)
        continue
      self.current = model
      if version.isdigit():
        self._newest_number = int(version)
      self._retry = {v: retry for v, retry in self._retry.items() if v.isdigit() and
                     int(v) > self._newest_number}
      self._loaded.set()
      absl.logging.info("serving model version %s (%s)", version, model.agent)
      return

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        self.poll()
      except Exception as error:  # pylint: disable=broad-except
        absl.logging.warning("cannot list model versions under %s: %s", self.model_uri, error)
      self._stop.wait(self.poll_seconds)

  def wait(self, timeout: Optional[float] = None) -> bool:
    """Waits until a model is loaded; returns whether one is."""
    return self._loaded.wait(timeout)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()


class OutboxLogger:
  """Durable, asynchronous prediction logging: a JSONL outbox and a delivery thread.

  `append` writes and flushes rows under a lock (the request path). The
  delivery thread sends the rows after the last delivered byte offset, which
  it persists in `<outbox>.offset`, in batches of up to `batch_rows` rows or
  `batch_seconds`, retrying failed deliveries with backoff: delivery is at
  least once and resumes after a restart. When everything is delivered and the
  outbox exceeds `compact_bytes`, it is truncated.
  """

  def __init__(self, outbox_path: str, sink: log_sinks.LogSink, batch_rows: int = 500,
               batch_seconds: float = 0.2, compact_bytes: int = 64 << 20,
               drain_seconds: float = 5.0):
    self.outbox_path = outbox_path
    self._offset_path = outbox_path + ".offset"
    self._sink = sink
    self._batch_rows = batch_rows
    self._batch_seconds = batch_seconds
    self._compact_bytes = compact_bytes
    self._drain_seconds = drain_seconds
    self._cond = threading.Condition()
    self._closing = False
    self._drain_deadline = math.inf
    os.makedirs(os.path.dirname(os.path.abspath(outbox_path)), exist_ok=True)
    # Unbuffered: each append is one write to the OS, undone if it fails part-way.
    self._file = open(outbox_path, "ab", buffering=0)  # pylint: disable=consider-using-with
    self._end, self._offset, self._written = self._recover()
    self._delivered = 0
    self.failures = 0
    self._reader = open(outbox_path, "rb")  # pylint: disable=consider-using-with
    self._thread = threading.Thread(target=self._run, name="rlops-log-delivery", daemon=True)

  def _recover(self) -> Tuple[int, int, int]:
    """(end, delivered offset, rows pending) of the outbox on disk; drops a torn last line."""
    with open(self.outbox_path, "rb") as f:
      data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
      self._file.truncate(end)
    offset = 0
    if os.path.exists(self._offset_path):
      with open(self._offset_path) as f:
        offset = int(f.read().strip() or 0)
    if offset > end:  # Compacted after the offset was saved.
      offset = 0
    return end, offset, data.count(b"\n", offset, end)

  def _save_offset(self, offset: int) -> None:
    temporary = self._offset_path + ".tmp"
    with open(temporary, "w") as f:
      f.write(str(offset))
    os.replace(temporary, self._offset_path)

  def append(self, rows: List[Dict[str, Any]]) -> None:
    """Writes rows to the outbox; they are durable when this returns."""
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    with self._cond:
      try:
        if self._file.write(data) != len(data):
          raise OSError(f"{self.outbox_path}: short write (disk full?)")
      except OSError:
        self._file.truncate(self._end)
        raise
      self._end += len(data)
      self._written += len(rows)
      self._cond.notify_all()

  @property
  def delivered(self) -> int:
    """Rows delivered since this logger started."""
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

  def _read_batch(self) -> Tuple[List[Dict[str, Any]], int, int]:
    """(rows, lines, end offset) of the next batch, skipping lines that are not JSON."""
    with self._cond:
      end = self._end
    self._reader.seek(self._offset)
    position, lines, rows = self._offset, 0, []
    while lines < self._batch_rows and position < end:
      line = self._reader.readline()
      position += len(line)
      lines += 1
      try:
        rows.append(json.loads(line))
      except ValueError:
        absl.logging.error("skipping a malformed outbox line at byte %d", position - len(line))
    return rows, lines, position

  def _pause(self, seconds: float) -> None:
    """Waits `seconds`, or until `close` is called."""
    until = time.monotonic() + seconds
    with self._cond:
      self._cond.wait_for(lambda: self._closing or time.monotonic() >= until, seconds)

  def _deliver_batch(self) -> None:
    """Delivers the next batch, then records its end offset and compacts a drained outbox."""
    rows, lines, offset = self._read_batch()
    if rows:
      self._sink.deliver({"predictions": rows})
    self._save_offset(offset)
    with self._cond:
      self._offset = offset
      self._delivered += lines
      self._cond.notify_all()
      if self._offset == self._end > self._compact_bytes:
        self._file.truncate(0)
        self._end = self._offset = 0
        self._save_offset(0)  # A crash before this is seen as offset > size on recovery.

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
        backoff = min(2 * backoff, 5.0)

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
    self._reader.close()


def _bad_request(reason: str) -> responses.JSONResponse:
  return responses.JSONResponse({"error": reason}, status_code=400)


def _is_number(value: Any) -> bool:
  """A JSON number; not a bool, which isinstance counts as an int."""
  return type(value) in (int, float)  # pylint: disable=unidiomatic-typecheck


def _float32_rows(observations: List[list]) -> np.ndarray:
  """[n, k] float32 of numeric rows; inf where a value is beyond the float range."""
  with np.errstate(over="ignore"):
    try:
      return np.array(observations, np.float64).astype(np.float32)
    except OverflowError:  # An integer beyond float64, which is beyond float32 anyway.
      return np.array([[v if abs(v) < 1e308 else math.inf for v in row] for row in observations],
                      np.float64).astype(np.float32)


def parse_instances(body: bytes, rank_k: int,
                    max_instances: int) -> Tuple[np.ndarray, List[list], List[str]]:
  """(observations [n, rank_k] float32, observations as sent, request ids) of a request body.

  Raises:
    ValueError: The body is invalid; the message is the reason, naming the instance.
  """
  try:
    request = json.loads(body)
  except ValueError as error:
    raise ValueError(f"malformed JSON: {error}") from error
  if not isinstance(request, dict) or "instances" not in request:
    raise ValueError('the body must be a JSON object with "instances"')
  instances = request["instances"]
  if not isinstance(instances, list) or not instances:
    raise ValueError('"instances" must be a non-empty list')
  if len(instances) > max_instances:
    raise ValueError(f"{len(instances)} instances, at most {max_instances} per request")
  observations, request_ids = [], []
  for index, instance in enumerate(instances):
    if not isinstance(instance, dict):
      raise ValueError(f"instance {index}: must be an object")
    unknown = set(instance) - {"observation", "request_id"}
    if unknown:
      raise ValueError(f"instance {index}: unknown field(s) {', '.join(sorted(unknown))}")
    observation = instance.get("observation")
    if not isinstance(observation, list):
      raise ValueError(f"instance {index}: observation must be a list of {rank_k} numbers")
    if len(observation) != rank_k:
      raise ValueError(f"instance {index}: observation has {len(observation)} values, "
                       f"the model takes {rank_k}")
    if not all(_is_number(value) for value in observation):
      raise ValueError(f"instance {index}: observation values must be numbers")
    request_id = instance["request_id"] if "request_id" in instance else uuid.uuid4().hex
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_LENGTH:
      raise ValueError(f"instance {index}: request_id must be a string of 1 to "
                       f"{MAX_REQUEST_ID_LENGTH} characters")
    observations.append(observation)
    request_ids.append(request_id)
  if len(set(request_ids)) < len(request_ids):
    raise ValueError("request_ids must be unique within a request")
  array = _float32_rows(observations)
  finite = np.isfinite(array).all(axis=1)
  if not finite.all():
    index = int(np.argmin(finite))
    raise ValueError(f"instance {index}: observation values must be finite float32 numbers")
  return array, observations, request_ids


def create_app(model_uri: str, sink: log_sinks.LogSink, *, outbox_path: str,
               poll_seconds: float = 1.0, max_instances: int = 256, seed: Optional[int] = None,
               predict_route: str = "/predict", health_route: str = "/health") -> fastapi.FastAPI:
  """The prediction server of the model(s) under `model_uri`, logging to `sink`.

  Args:
    model_uri: A model directory, or Pusher's base directory of numbered versions.
    sink: Where prediction logs are delivered, from the outbox at `outbox_path`.
    outbox_path: The JSONL outbox; rows left undelivered are sent after a restart.
    poll_seconds: How often to look for a newer version.
    max_instances: Largest batch of a request.
    seed: Seed of the exploration; None: fresh entropy.
    predict_route, health_route: Routes (Vertex passes AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE).
  """
  watcher = ModelWatcher(model_uri, poll_seconds)
  logger = OutboxLogger(outbox_path, sink)
  rng = np.random.default_rng(seed)
  stats = {"requests": 0, "bad_requests": 0, "predictions": 0}

  @contextlib.asynccontextmanager
  async def lifespan(_):
    logger.start()
    watcher.start()
    yield
    watcher.stop()
    logger.close()

  app = fastapi.FastAPI(title="rlops prediction endpoint", lifespan=lifespan,
                        description="Epsilon-greedy movie recommendations with exact propensities.")
  app.state.models = watcher
  app.state.logger = logger

  @app.post(predict_route, summary="Recommend a movie per instance",
            openapi_extra=_predict_openapi(max_instances))
  async def predict(request: fastapi.Request) -> responses.Response:
    stats["requests"] += 1
    model = watcher.current
    if model is None:
      return responses.JSONResponse({"error": "no model loaded yet"}, status_code=503)
    try:
      observations, sent, request_ids = parse_instances(await request.body(), model.rank_k,
                                                        max_instances)
    except ValueError as error:
      stats["bad_requests"] += 1
      return _bad_request(str(error))
    actions, propensities = model.act(observations, rng)
    now = time.time()
    predictions = [{"action": int(action), "propensity": float(propensity),
                    "request_id": request_id, "model_version": model.version}
                   for action, propensity, request_id in zip(actions, propensities, request_ids)]
    logger.append([{**prediction, "event_time": now, "observation": observation,
                    "source": "endpoint"} for prediction, observation in zip(predictions, sent)])
    stats["predictions"] += len(predictions)
    return responses.Response(json.dumps({"predictions": predictions}),
                              media_type="application/json")

  def _serving(body: Dict[str, Any]) -> responses.JSONResponse:
    return responses.JSONResponse(body, status_code=200 if watcher.current else 503)

  @app.get(health_route, summary="200 once a model is loaded, 503 before")
  async def health() -> responses.JSONResponse:
    model = watcher.current
    return _serving({"status": "ok" if model else "no model loaded",
                     "version": model and model.version})

  @app.get("/version", summary="The serving model")
  async def version() -> responses.JSONResponse:
    model = watcher.current
    return _serving(model.describe() if model else {"version": None})

  @app.get("/stats", summary="Request, prediction and logging counters")
  async def get_stats() -> Dict[str, Any]:
    model = watcher.current
    return {**stats, "logged": logger.delivered, "pending": logger.pending,
            "log_delivery_failures": logger.failures, "model_load_failures": watcher.load_failures,
            "version": model and model.version}

  return app


class ServerThread:
  """Runs an app with uvicorn in a background thread on 127.0.0.1 (a free port by default)."""

  def __init__(self, app: fastapi.FastAPI, port: int = 0, startup_seconds: float = 30.0):
    self.app = app
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say TCP (else
    # Nagle and delayed ACKs add 40 ms per response).
    self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    self._socket.bind(("127.0.0.1", port))
    self.port = self._socket.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    # log_config=None: an embedded server leaves the host process's logging as it is.
    self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                 log_config=None))
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


def app_from_env() -> fastapi.FastAPI:
  """The app configured as Vertex configures a custom serving container."""
  model_uri = os.environ.get("AIP_STORAGE_URI")
  if not model_uri:
    raise RuntimeError("AIP_STORAGE_URI is not set: the model directory to serve")
  outbox = os.environ.get("RLOPS_OUTBOX",
                          os.path.join(tempfile.gettempdir(), "rlops-outbox.jsonl"))
  return create_app(model_uri, log_sinks.sink_from_env(), outbox_path=outbox,
                    predict_route=os.environ.get("AIP_PREDICT_ROUTE", "/predict"),
                    health_route=os.environ.get("AIP_HEALTH_ROUTE", "/health"))


def main() -> None:
  host, port = address_from_env()
  uvicorn.run(app_from_env(), host=host, port=port, access_log=False)


if __name__ == "__main__":
  main()
