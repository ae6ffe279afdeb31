"""The log transport: messages of prediction logs and feedback, how the Logger writes them,
and where they go (Pub/Sub to the Logger function, a CloudEvent over HTTP, or in process).

A message is JSON: {"predictions": [...], "feedback": [...]}, either list optional, rows as
in `rlops.warehouse`. Delivery is at least once; the warehouse de-duplicates by request_id.
"""
import abc
import base64
import dataclasses
import functools
import importlib
import json
import os
import re
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Protocol, Tuple, Union

import httpx
import orjson

from rlops import warehouse as warehouse_lib

Rejected = Dict[str, Any]  # {"row": a row refused, "reason": why}
PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
_TOPIC_RE = re.compile(r"projects/[^/\s]+/topics/[^/\s]+")


class LogSink(Protocol):
  """Delivers one message {"predictions": [...], "feedback": [...]}; raises on failure.

  `deliver` takes the message, `deliver_encoded` the message's JSON as `encode_message`
  or `encode_predictions` give it: the endpoint's outbox delivers its lines as they are,
  never decoded and encoded again. ValueError means the message is rejected for good (a
  row the warehouse cannot store): sending it again cannot succeed. Any other exception
  is retryable.
  """

  def deliver(self, message: Dict[str, Any]) -> None:
    ...

  def deliver_encoded(self, data: bytes) -> None:
    ...


def encode_message(message: Dict[str, Any]) -> bytes:
  """A message as the data of a Pub/Sub message: compact JSON in UTF-8 (orjson, 20 times
  the standard library's speed). A NaN or infinity becomes null, which the Logger refuses
  as it would the number.

  Raises:
    ValueError: A row has no JSON form (a string that is not valid Unicode, an integer
      beyond 64 bits, a value of another type): sending the message again cannot succeed.
  """
  try:
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
  except orjson.JSONEncodeError as error:
    raise ValueError(f"the message has no JSON form: {error}") from error


def encode_predictions(rows: List[bytes]) -> bytes:
  """The message {"predictions": rows} of rows already encoded as JSON (no line ends)."""
  return b'{"predictions":[' + b",".join(rows) + b"]}"


def decode_json(data: bytes) -> Any:
  """Parsed JSON; the standard library reads what orjson refuses (NaN, lone surrogates), so
  that such a row reaches the row checks and is refused alone, with its reason.

  Raises:
    ValueError: `data` is not JSON, or is nested deeper than the standard library reads.
  """
  try:
    return orjson.loads(data)
  except orjson.JSONDecodeError:
    try:
      return json.loads(data)
    except RecursionError:
      raise ValueError("JSON nested too deep") from None


def decode_pubsub_event(data: Dict[str, Any]) -> Dict[str, Any]:
  """The JSON message inside a Pub/Sub `messagePublished` CloudEvent's data."""
  try:
    return decode_json(base64.b64decode(data["message"]["data"]))
  except (KeyError, TypeError, ValueError) as error:
    raise ValueError(f"not a Pub/Sub message with JSON data: {error}") from error


@functools.lru_cache(maxsize=None)
def _warehouse(uri: str):
  """One warehouse (and BigQuery client) per URI and process, across messages."""
  return warehouse_lib.open_warehouse(uri)


def check_message(message: Any) -> None:
  """Raises ValueError unless `message` is an object of lists of rows, by kind."""
  if not isinstance(message, dict):
    raise ValueError(f"a message is a JSON object, got {type(message).__name__}")
  unknown = set(message) - {"predictions", "feedback"}
  if unknown:
    raise ValueError(f"unknown message fields: {sorted(unknown)}")
  for kind, rows in message.items():
    if not isinstance(rows, list):
      raise ValueError(f"{kind} must be a list of rows, got {type(rows).__name__}")


class RejectedMessage(ValueError):
  """Rows of a message were refused for good (by the Logger, or by `write_rows` in process)."""


@dataclasses.dataclass(frozen=True)
class RowLimits:
  """What the served model produces and takes: a row outside is rejected alone, with a reason.

  Attributes:
    rank_k: Length of every observation.
    num_actions: Actions are in [0, num_actions).
    min_propensity: Smallest propensity a serving policy logs; below it a row cannot be
      the policy's (and would blow up importance weights).
    min_reward, max_reward: Range of a plausible reward.
  """
  rank_k: int
  num_actions: int
  min_propensity: float = 1e-6
  min_reward: float = -100.0
  max_reward: float = 100.0

  @classmethod
  def of(cls, environment) -> "RowLimits":
    """The limits of the models trained for `environment` (a `config.EnvironmentConfig`)."""
    return cls(rank_k=environment.rank_k, num_actions=environment.num_movies)

  def to_json(self) -> str:
    """These limits as RLOPS_ROW_LIMITS holds them."""
    return json.dumps(dataclasses.asdict(self))

  def prediction_problem(self, row: Dict[str, Any], values: tuple) -> Optional[str]:
    """Why these limits refuse a row the warehouse stores as `values`; None if they do not."""
    request_id, _, _, action, propensity, _, _ = values
    if len(row["observation"]) != self.rank_k:
      return (f"request_id {request_id!r}: observation has {len(row['observation'])} values, "
              f"the model takes {self.rank_k}")
    if action >= self.num_actions:
      return f"request_id {request_id!r}: action {action} is not below {self.num_actions}"
    if propensity < self.min_propensity:
      return (f"request_id {request_id!r}: propensity {propensity!r} is below "
              f"{self.min_propensity!r}")
    return None

  def feedback_problem(self, values: tuple) -> Optional[str]:
    """Why these limits refuse feedback the warehouse stores as `values`; None if they do not."""
    request_id, _, reward = values
    if self.min_reward <= reward <= self.max_reward:
      return None
    return (f"request_id {request_id!r}: reward {reward!r} is outside "
            f"[{self.min_reward!r}, {self.max_reward!r}]")


def _prediction_outcome(row: Dict[str, Any], limits: Optional[RowLimits]) -> Union[tuple, str]:
  """The row as the warehouse stores it, or why the warehouse or `limits` refuse it."""
  try:
    values = warehouse_lib.prediction_values(row)
  except ValueError as error:
    return str(error)
  return (limits and limits.prediction_problem(row, values)) or values


def split_predictions(rows: List[Dict[str, Any]],
                      limits: Optional[RowLimits] = None) -> Tuple[List[tuple], List[Rejected]]:
  """(the stored values of the prediction rows the warehouse and `limits`, if any, accept, the
  others with their reasons). The warehouse checks plain rows as one batch, others alone."""
  try:
    values = warehouse_lib.predictions_values(rows)
  except ValueError:
    return _split(rows, [_prediction_outcome(row, limits) for row in rows])
  if limits is None:
    return values, []
  return _split(rows, [limits.prediction_problem(row, row_values) or row_values
                       for row, row_values in zip(rows, values)])


def _feedback_outcome(row: Dict[str, Any], limits: Optional[RowLimits]) -> Union[tuple, str]:
  """The row as the warehouse stores it, or why the warehouse or `limits` refuse it."""
  try:
    values = warehouse_lib.feedback_values(row)
  except ValueError as error:
    return str(error)
  return (limits and limits.feedback_problem(values)) or values


def split_feedback(rows: List[Dict[str, Any]],
                   limits: Optional[RowLimits] = None) -> Tuple[List[tuple], List[Rejected]]:
  """(the stored values of the feedback rows the warehouse and `limits`, if any, accept, the
  others with their reasons)."""
  return _split(rows, [_feedback_outcome(row, limits) for row in rows])


def _split(rows: List[Dict[str, Any]],
           outcomes: List[Union[tuple, str]]) -> Tuple[List[tuple], List[Rejected]]:
  """(the stored values among `outcomes`, {"row", "reason"} of each row refused with a reason)."""
  accepted, rejected = [], []
  for row, outcome in zip(rows, outcomes):
    if isinstance(outcome, str):
      rejected.append({"row": row, "reason": outcome})
    else:
      accepted.append(outcome)
  return accepted, rejected


def write_rows(message: Dict[str, Any], warehouse_uri: str,
               limits: Optional[RowLimits] = None) -> Tuple[Dict[str, int], List[Rejected]]:
  """What the Logger function does with a message: writes the rows the warehouse and `limits`,
  if any, accept, each row checked once, and refuses the others alone.

  Returns:
    (how many rows were new, by kind; {"row", "reason"} of each row refused).

  Raises:
    ValueError: `message` is not an object of lists of rows.
  """
  check_message(message)
  predictions, rejected = split_predictions(message.get("predictions", []), limits)
  feedback, rejected_feedback = split_feedback(message.get("feedback", []), limits)
  store = _warehouse(warehouse_uri)
  return ({"predictions": store.insert_prediction_values(predictions),
           "feedback": store.insert_feedback_values(feedback)}, rejected + rejected_feedback)


class InProcessSink:
  """Runs the Logger's code in this process, writing to a SQLite path or bq:// warehouse.

  The rows the warehouse and `limits` (if any) accept are written, and the others
  rejected: `deliver` then raises RejectedMessage naming them, after writing the rest.
  """

  def __init__(self, warehouse_uri: str, limits: Optional[RowLimits] = None):
    self.warehouse_uri = warehouse_uri
    self.limits = limits

  def deliver_encoded(self, data: bytes) -> None:
    """Raises ValueError if `data` is not JSON, as the Logger refuses it."""
    self.deliver(decode_json(data))

  def deliver(self, message: Dict[str, Any]) -> None:
    _, rejected = write_rows(message, self.warehouse_uri, self.limits)
    if rejected:
      raise RejectedMessage(f"{len(rejected)} row(s) rejected: "
                            + "; ".join(entry["reason"] for entry in rejected)[:2000])


class EncodingSink(abc.ABC):
  """A sink of encoded messages: `deliver` encodes the message for `deliver_encoded`."""

  def deliver(self, message: Dict[str, Any]) -> None:
    self.deliver_encoded(encode_message(message))

  @abc.abstractmethod
  def deliver_encoded(self, data: bytes) -> None:
    """Delivers the message's JSON."""


class PubSubSink(EncodingSink):
  """Publishes each message to the Pub/Sub topic the Logger function is triggered by.

  `deliver` waits until Pub/Sub has the message and raises otherwise, so the
  caller (the endpoint's outbox) retries. The PublisherClient is created on
  first delivery; its library is imported here, as the server starts: the import
  takes about half a second of CPU, which at the first delivery would hold up the
  requests served meanwhile.
  """

  def __init__(self, topic_path: str, publisher=None, timeout: float = 60.0):
    if not _TOPIC_RE.fullmatch(topic_path):
      raise ValueError(f"a Pub/Sub topic is projects/PROJECT/topics/TOPIC, got {topic_path!r}")
    if publisher is None:
      importlib.import_module("google.cloud.pubsub_v1")
    self.topic_path = topic_path
    self._publisher = publisher
    self._timeout = timeout
    self._lock = threading.Lock()

  def _client(self):
    with self._lock:
      if self._publisher is None:
        from google.cloud import pubsub_v1  # pylint: disable=import-outside-toplevel
        self._publisher = pubsub_v1.PublisherClient()
      return self._publisher

  def deliver_encoded(self, data: bytes) -> None:
    future = self._client().publish(self.topic_path, data=data)
    future.result(timeout=self._timeout)


def pubsub_cloud_event(message: Union[Dict[str, Any], bytes],
                       topic: str = "projects/local/topics/rlops-logs"):
  """(headers, body) of a binary-mode CloudEvent as Pub/Sub push delivers it, of a message
  or its encoded JSON."""
  message_id = uuid.uuid4().hex
  headers = {
      "ce-id": message_id, "ce-specversion": "1.0", "ce-type": PUBSUB_EVENT_TYPE,
      "ce-source": f"//pubsub.googleapis.com/{topic}",
      "ce-time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "content-type": "application/json",
  }
  data = message if isinstance(message, bytes) else encode_message(message)
  body = {"message": {"data": base64.b64encode(data).decode(),
                      "messageId": message_id, "attributes": {}},
          "subscription": "projects/local/subscriptions/rlops-logger"}
  return headers, body


_RETRYABLE_CLIENT_ERRORS = (408, 429)


class CloudEventSink(EncodingSink):
  """Posts each message to a Logger served by functions-framework (loopback by default).

  A 4xx answer (other than 408 and 429) raises RejectedMessage; 5xx and
  transport errors raise httpx errors, which are retryable.
  """

  def __init__(self, url: str, timeout: float = 10.0):
    self.url = url
    self._client = httpx.Client(timeout=timeout)

  def deliver_encoded(self, data: bytes) -> None:
    headers, body = pubsub_cloud_event(data)
    response = self._client.post(self.url, headers=headers, json=body)
    if response.is_client_error and response.status_code not in _RETRYABLE_CLIENT_ERRORS:
      raise RejectedMessage(f"the Logger at {self.url} answered {response.status_code}: "
                            f"{response.text[:500]}")
    response.raise_for_status()


ROW_LIMITS_ENV = "RLOPS_ROW_LIMITS"


def limits_from_env() -> Optional[RowLimits]:
  """The `RowLimits` in RLOPS_ROW_LIMITS (JSON, e.g. {"rank_k": 20, "num_actions": 20})."""
  limits = os.environ.get(ROW_LIMITS_ENV)
  return RowLimits(**json.loads(limits)) if limits else None


def sink_from_env() -> LogSink:
  """The sink named by the first of these variables that is set.

  RLOPS_LOG_TOPIC: "projects/P/topics/T", Pub/Sub to the Logger function (production).
  RLOPS_LOG_URL: a Logger function served over HTTP.
  RLOPS_WAREHOUSE: the Logger's code in process, writing to this warehouse; with
    RLOPS_ROW_LIMITS (JSON of `RowLimits`, e.g. {"rank_k": 20, "num_actions": 20}), rows
    outside the limits are rejected alone.
  """
  if os.environ.get("RLOPS_LOG_TOPIC"):
    return PubSubSink(os.environ["RLOPS_LOG_TOPIC"])
  if os.environ.get("RLOPS_LOG_URL"):
    return CloudEventSink(os.environ["RLOPS_LOG_URL"])
  if os.environ.get("RLOPS_WAREHOUSE"):
    return InProcessSink(os.environ["RLOPS_WAREHOUSE"], limits_from_env())
  raise RuntimeError("set RLOPS_LOG_TOPIC, RLOPS_LOG_URL or RLOPS_WAREHOUSE: where logs go")
