"""The prediction endpoint's ASGI app: a lean predict route in front of FastAPI's other routes.

    POST <predict route>  {"instances": [{"observation": [k floats], "request_id": "optional"}]}
                          -> {"predictions": [{"action", "propensity", "request_id",
                                               "model_version"}]}
    GET <health route>    200 with the serving version once a model is loaded, 503 before
    GET /version, /stats  the serving model; request, prediction and logging counters
    GET /metrics          the same counters for Prometheus
    GET /openapi.json     the schema, with the serving model's observation length

The predict route's rules are `PredictHandler`'s: `protocol.PredictProtocol`
answers the route in uvicorn's parser callbacks, and the `PredictRoute` ASGI
middleware answers what takes uvicorn's ASGI path; no per-request framework work. Every
prediction is appended to the outbox before it is answered; a request_id
served before, by any worker process, is answered with the same prediction
again (not logged twice), or refused with 409 when its observation differs or
a concurrent request is serving it.
"""
import contextlib
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import absl.logging
import fastapi
import numpy as np
import orjson
import prometheus_client
from prometheus_client import metrics_core as prometheus_metrics
from fastapi import openapi as fastapi_openapi
from fastapi import responses
from starlette import exceptions as starlette_exceptions

from rlops import log_sinks, records
from rlops.serving import outbox, parsing, recent, watcher

DEFAULT_MAX_BODY_BYTES = 1 << 20
LOG_ERROR_EVERY_SECONDS = 10.0

_INSTANCE_SCHEMA = {
    "type": "object",
    "required": ["observation"],
    "additionalProperties": False,
    "properties": {
        "observation": {"type": "array", "items": {"type": "number"},
                        "description": "The user's context: rank_k finite numbers."},
        "request_id": {"type": "string", "minLength": 1,
                       "maxLength": records.MAX_ID_LENGTH,
                       "description": "Joins the prediction to its feedback; a UUIDv7 in hex if "
                                      "absent. Reusing one answers its first prediction again."},
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
_ERRORS = {
    "400": "Invalid request, or a row the warehouse could not store; nothing was predicted.",
    "405": "Not a POST.",
    "409": "A request_id already served for another observation, or being served right now.",
    "413": "Body larger than the configured limit.",
    "415": "Content type other than application/json.",
    "503": "No model loaded yet, or the prediction log cannot be written.",
}


def _json_content(schema: Dict[str, Any]) -> Dict[str, Any]:
  return {"content": {"application/json": {"schema": schema}}}


def predict_openapi(max_instances: int, rank_k: Optional[int]) -> Dict[str, Any]:
  """The OpenAPI operation of the predict route; rank_k None: no model loaded yet."""
  observation = dict(_INSTANCE_SCHEMA["properties"]["observation"])
  if rank_k is not None:
    observation.update(minItems=rank_k, maxItems=rank_k)
  instance = {**_INSTANCE_SCHEMA,
              "properties": {**_INSTANCE_SCHEMA["properties"], "observation": observation}}
  instances = {"type": "array", "items": instance, "minItems": 1, "maxItems": max_instances}
  request = {"type": "object", "required": ["instances"], "properties": {"instances": instances}}
  response = {"type": "object", "required": ["predictions"],
              "properties": {"predictions": {"type": "array", "items": _PREDICTION_SCHEMA}}}
  return {
      "summary": "Recommend a movie per instance",
      "operationId": "predict",
      "requestBody": {"required": True, **_json_content(request)},
      "responses": {
          "200": {"description": "One prediction per instance, in order.",
                  **_json_content(response)},
          **{status: {"description": description, **_json_content(_ERROR_SCHEMA)}
             for status, description in _ERRORS.items()},
      },
  }


Answer = Tuple[int, Dict[str, Any]]  # (status, JSON body)


class Pending:
  """A request predicted and not answered yet: its new rows wait to be appended."""
  __slots__ = ("keys", "new", "predictions", "rows")

  def __init__(self, predictions: List[Optional[Dict[str, Any]]], new: List[int],
               keys: List[bytes], rows: List[Dict[str, Any]]):
    self.predictions = predictions  # Per instance; None where a new row answers it.
    self.new = new  # The instances of `rows`.
    self.keys = keys  # Per instance, `recent.observation_key`.
    self.rows = rows


class Predictor:
  """The predict route's work on a whole body: parse, act, log, answer. No I/O but the outbox.

  `begin` predicts a request, `commit` appends the rows of any number of them to the outbox
  in one write and answers them: `protocol.PredictProtocol` commits the requests of an
  event-loop iteration together, `PredictHandler.predict` one request alone.
  """

  def __init__(self, models: watcher.ModelWatcher, logger: outbox.OutboxLogger,
               served: recent.RecentPredictions, rng: np.random.Generator, max_instances: int):
    self._models = models
    self._logger = logger
    self._served = served
    self._rng = rng
    self.max_instances = max_instances
    self.stats = {"requests": 0, "bad_requests": 0, "predictions": 0, "repeated": 0,
                  "conflicts": 0, "log_unavailable": 0}

  def refused(self, status: int, reason: str) -> Answer:
    """Counts a request refused before its body is read."""
    self.stats["requests"] += 1
    self.stats["bad_requests"] += 1
    return status, {"error": reason}

  def begin(self, body: bytes) -> Union[Answer, Pending]:
    """The answer to a request body that needs no new row (refused, or served before);
    else the request predicted, its new request ids reserved, and its rows to append."""
    stats = self.stats
    stats["requests"] += 1
    model = self._models.current
    if model is None:
      return 503, {"error": "no model loaded yet"}
    try:
      observations, sent, request_ids = parsing.parse_instances(body, model.rank_k,
                                                                self.max_instances)
      keys = [observation.tobytes() for observation in observations]
      predictions = self._served.reserve_all(request_ids, keys)
    except recent.ReusedRequestId as error:
      stats["conflicts"] += 1
      return 409, {"error": str(error)}
    except ValueError as error:
      stats["bad_requests"] += 1
      return 400, {"error": str(error)}
    new = [index for index, prediction in enumerate(predictions) if prediction is None]
    stats["repeated"] += len(predictions) - len(new)
    if not new:
      return 200, {"predictions": predictions}
    new_ids = [request_ids[index] for index in new]
    try:
      rows = self._act(model, observations if len(new) == len(sent) else observations[new],
                       [sent[index] for index in new], new_ids)
    except BaseException as error:
      self._release(new_ids)
      if not isinstance(error, ValueError):
        raise
      stats["bad_requests"] += 1
      return 400, {"error": str(error)}
    return Pending(predictions, new, keys, rows)

  def commit(self, pending: List[Pending]) -> List[Answer]:
    """Appends the rows of `pending` to the outbox in one write; the answer to each request.

    The rows are in the outbox before any answer is given. If they cannot be written,
    each request gets 503 and its request ids are released.
    """
    stats = self.stats
    try:
      self._logger.append([row for request in pending for row in request.rows])
    except BaseException as error:
      self._release([row["request_id"] for request in pending for row in request.rows])
      if not isinstance(error, OSError):
        raise
      stats["log_unavailable"] += len(pending)
      absl.logging.log_every_n_seconds(absl.logging.ERROR, "cannot write the outbox: %s",
                                       LOG_ERROR_EVERY_SECONDS, error)
      return [(503, {"error": f"the prediction log cannot be written ({error}); "
                              "nothing was predicted, retry later"})] * len(pending)
    answers = []
    for request in pending:
      predictions = request.predictions
      for index, row in zip(request.new, request.rows):
        predictions[index] = {"action": row["action"], "propensity": row["propensity"],
                              "request_id": row["request_id"],
                              "model_version": row["model_version"]}
        self._served.fill(request.keys[index], predictions[index])
      stats["predictions"] += len(request.rows)
      answers.append((200, {"predictions": predictions}))
    return answers

  def _release(self, request_ids: List[str]) -> None:
    for request_id in request_ids:
      self._served.release(request_id)

  def _act(self, model, observations: np.ndarray, sent: List[List[float]],
           request_ids: List[str]) -> List[Dict[str, Any]]:
    """The prediction rows of new requests, storable as they are: `parsing` checked what
    the request brings, the model's version was checked as it loaded, and its
    propensities are checked here.

    Raises:
      ValueError: A propensity outside (0, 1].
    """
    actions, propensities = model.act(observations, self._rng)
    propensities = propensities.tolist()
    if not all(0.0 < propensity <= 1.0 for propensity in propensities):
      raise ValueError(f"the model gave propensities {propensities!r:.200}, not all in (0, 1]")
    now = time.time()
    return [{"request_id": request_id, "event_time": now, "observation": observation,
             "action": action, "propensity": propensity, "model_version": model.version,
             "source": "endpoint"}
            for request_id, observation, action, propensity
            in zip(request_ids, sent, actions.tolist(), propensities)]


class PredictHandler:
  """The predict route's HTTP rules around `predictor`: method, content type, body size.

  Used by `PredictRoute` (the ASGI path) and by `protocol.PredictProtocol`, which
  answers the route in uvicorn's parser callbacks; both give the same answers. An
  unexpected failure of the predictor is logged and answered 500 with a JSON error,
  and the connection stays usable.
  """

  def __init__(self, path: str, predictor: Predictor, max_body_bytes: int):
    self.path = path
    self.predictor = predictor
    self.max_body_bytes = max_body_bytes

  def refusal(self, method: str,
              headers: Iterable[Tuple[bytes, bytes]]) -> Optional[Answer]:
    """The answer to a request refused before its body is read; None: read the body."""
    predictor = self.predictor
    if method != "POST":
      return predictor.refused(405, f"use POST on {self.path}")
    content_type, length = b"", b"0"
    for name, value in headers:  # Lower-case names; the last of a repeated header counts.
      if name == b"content-type":
        content_type = value
      elif name == b"content-length":
        length = value
    content_type = content_type.split(b";")[0].strip().lower()
    if content_type != b"application/json":
      return predictor.refused(415, "the content type must be application/json, got "
                                    f"{content_type.decode('latin-1')[:100]!r}")
    length = length.strip()
    if not length.isdigit() or int(length) > self.max_body_bytes:
      return self.too_large()
    return None

  def too_large(self) -> Answer:
    """The answer to a body found larger than the limit while it is read."""
    return self.predictor.refused(413, f"the body must be at most {self.max_body_bytes} bytes")

  def predict(self, body: bytes) -> Answer:
    """The answer to a whole body, its rows appended on their own."""
    outcome = self.begin(body)
    return self.commit([outcome])[0] if isinstance(outcome, Pending) else outcome

  def begin(self, body: bytes) -> Union[Answer, Pending]:
    """`Predictor.begin` of a whole body."""
    try:
      return self.predictor.begin(body)
    except Exception:  # pylint: disable=broad-except
      return self._failed(1)[0]

  def commit(self, pending: List[Pending]) -> List[Answer]:
    """`Predictor.commit` of requests begun."""
    try:
      return self.predictor.commit(pending)
    except Exception:  # pylint: disable=broad-except
      return self._failed(len(pending))

  @staticmethod
  def encode(status: int, answer: Dict[str, Any]) -> Tuple[int, bytes]:
    """(status, JSON body) of an answer; one with no JSON form (a bug: every reason quotes
    what the client sent with repr) is logged and answered 500."""
    try:
      return status, orjson.dumps(answer)
    except orjson.JSONEncodeError:
      absl.logging.exception("an answer of the predict route has no JSON form")
      return 500, b'{"error":"internal error"}'

  @staticmethod
  def _failed(requests: int) -> List[Answer]:
    absl.logging.exception("the predict route failed")
    return [(500, {"error": "internal error"})] * requests


class PredictRoute:
  """ASGI middleware answering POST `handler.path`; other requests go to `app`."""

  def __init__(self, app, handler: PredictHandler):
    self._app = app
    self._handler = handler

  async def __call__(self, scope, receive, send) -> None:
    if scope["type"] != "http" or scope["path"] != self._handler.path:
      await self._app(scope, receive, send)
      return
    refusal = self._handler.refusal(scope["method"], scope["headers"])
    status, body = self._handler.encode(*(refusal or await self._answer(receive)))
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if refusal and any(name == b"expect" and value.lower() == b"100-continue"
                       for name, value in scope["headers"]):
      # Its body may come after this answer, where the next request would be read.
      headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

  async def _answer(self, receive) -> Answer:
    """The answer to a request not refused by its headers, once its body is read."""
    handler = self._handler
    chunks, size = [], 0
    more = True
    while more:
      message = await receive()
      if message["type"] == "http.disconnect":
        return handler.predictor.refused(400, "the client disconnected")
      chunk = message.get("body", b"")
      size += len(chunk)
      if size > handler.max_body_bytes:
        return handler.too_large()
      chunks.append(chunk)
      more = message.get("more_body", False)
    return handler.predict(b"".join(chunks))


def create_app(model_uri: str, sink: log_sinks.LogSink, *, outbox_path: str,
               poll_seconds: float = 1.0, max_instances: int = 256, seed: Optional[int] = None,
               predict_route: str = "/predict", health_route: str = "/health",
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               compact_bytes: int = outbox.DEFAULT_COMPACT_BYTES,
               recent_ids: int = 100_000,
               served: Optional[recent.RecentPredictions] = None) -> fastapi.FastAPI:
  """The prediction server of the model(s) under `model_uri`, logging to `sink`.

  Args:
    model_uri: A model directory, or Pusher's base directory of numbered versions.
    sink: Where prediction logs are delivered, from the outbox at `outbox_path`.
    outbox_path: The JSONL outbox; rows left undelivered are sent after a restart.
    poll_seconds: How often to look for a newer version.
    max_instances: Largest batch of a request.
    seed: Seed of the exploration; None: fresh entropy.
    predict_route, health_route: Routes (Vertex passes AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE).
    max_body_bytes: Largest request body; larger ones get 413.
    compact_bytes: The outbox is truncated once drained and larger than this.
    recent_ids: How many served request ids are remembered for idempotent answers.
    served: The table of served request ids the server's worker processes share;
      None: one of this process's own, of `recent_ids` entries.
  """
  models = watcher.ModelWatcher(model_uri, poll_seconds)
  logger = outbox.OutboxLogger(outbox_path, sink, compact_bytes=compact_bytes)
  if served is None:
    served = recent.RecentPredictions(recent_ids)
  served.add_logged(logger.rows_on_disk())
  predictor = Predictor(models, logger, served, np.random.default_rng(seed), max_instances)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    logger.start()
    models.start()
    yield
    models.stop()
    logger.close()

  app = fastapi.FastAPI(title="rlops prediction endpoint", lifespan=lifespan,
                        description="Epsilon-greedy movie recommendations with exact propensities.")
  app.state.models = models
  app.state.logger = logger
  app.state.predict_handler = PredictHandler(predict_route, predictor, max_body_bytes)
  app.add_middleware(PredictRoute, handler=app.state.predict_handler)

  def openapi() -> Dict[str, Any]:
    """FastAPI's schema of its routes, and the predict route at the serving model's rank_k."""
    schema = fastapi_openapi.utils.get_openapi(title=app.title, version=app.version,
                                               description=app.description, routes=app.routes)
    model = models.current
    schema["paths"][predict_route] = {"post": predict_openapi(max_instances,
                                                              model and model.rank_k)}
    return schema

  app.openapi = openapi

  @app.exception_handler(starlette_exceptions.HTTPException)
  async def refused(_, error: starlette_exceptions.HTTPException) -> responses.JSONResponse:
    """FastAPI's own refusals (an unknown route, a method a route does not take) as every
    answer of the endpoint gives them: JSON with the reason."""
    return responses.JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                                  headers=getattr(error, "headers", None))

  def _serving(body: Dict[str, Any]) -> responses.JSONResponse:
    return responses.JSONResponse(body, status_code=200 if models.current else 503)

  @app.get(health_route, summary="200 once a model is loaded, 503 before")
  async def health() -> responses.JSONResponse:
    model = models.current
    return _serving({"status": "ok" if model else "no model loaded",
                     "version": model and model.version})

  @app.get("/version", summary="The serving model")
  async def version() -> responses.JSONResponse:
    model = models.current
    return _serving(model.describe() if model else {"version": None})

  def current_stats() -> Dict[str, Any]:
    model = models.current
    return {**predictor.stats, "process": os.getpid(), "logged": logger.delivered,
            "pending": logger.pending,
            "log_delivery_failures": logger.failures, "dead_letters": logger.dead_letters,
            "model_load_failures": models.load_failures, "rejected_versions": models.rejected,
            "version": model and model.version}

  @app.get("/stats", summary="Request, prediction and logging counters")
  async def get_stats() -> Dict[str, Any]:
    return current_stats()

  registry = prometheus_client.CollectorRegistry()
  registry.register(_StatsCollector(current_stats))

  @app.get("/metrics", summary="The counters of /stats for Prometheus (text exposition format)")
  async def metrics() -> responses.Response:
    # As a header: a text/ media type would get Starlette's charset a second time.
    return responses.Response(prometheus_client.generate_latest(registry),
                              headers={"content-type": prometheus_client.CONTENT_TYPE_LATEST})

  return app


class _StatsCollector:
  """The numbers of /stats as Prometheus metrics, read at each scrape."""

  _GAUGES = ("pending",)

  def __init__(self, stats: Callable[[], Dict[str, Any]]):
    self._stats = stats

  def collect(self):
    stats = self._stats()
    version = stats.get("version")
    info = prometheus_metrics.GaugeMetricFamily(
        "rlops_serving_model", "The serving model version (1 while one is loaded)",
        labels=["version"])
    if version is not None:
      info.add_metric([str(version)], 1.0)
    yield info
    for name, value in sorted(stats.items()):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or name == "process":
        continue
      family = (prometheus_metrics.GaugeMetricFamily if name in self._GAUGES
                else prometheus_metrics.CounterMetricFamily)
      yield family(f"rlops_{name}", f"/stats {name}", value=value)
