"""The two records of the feedback loop: a logged prediction and its feedback.

The endpoint and the Generator log `Prediction`s, the Simulator reports `Feedback`,
the Logger and the warehouses store them; in a log message both travel as rows,
JSON objects with the record's fields. A record is valid when its warehouse can
store it as it is (finite numbers, UTF-8 encodable ids, ranges), so a row that
fails here is refused where it is produced, never after it was acknowledged.
"""
import dataclasses
import itertools
import math
import numbers
import operator
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import orjson

PREDICTION_COLUMNS = ("request_id", "event_time", "observation", "action", "propensity",
                      "model_version", "source")
FEEDBACK_COLUMNS = ("request_id", "event_time", "reward")
MAX_ID_LENGTH = 128
# Event times are Unix seconds before the year 2200.
MAX_EVENT_TIME = 7_258_118_400.0
# Largest action and observation value the stores and float32 models take.
MAX_ACTION = 2**31 - 1
MAX_ABS_VALUE = float(np.finfo(np.float32).max)
_COLUMN_SETS = {columns: frozenset(columns) for columns in (PREDICTION_COLUMNS, FEEDBACK_COLUMNS)}
_PREDICTION_FIELDS = operator.itemgetter(*PREDICTION_COLUMNS)


def new_request_id() -> str:
  """A fresh request_id: a UUIDv7 (RFC 9562) as 32 hex digits, 74 of its bits random.

  Its first 48 bits are the Unix time in milliseconds, so ids sort by creation time and the
  warehouse's request_id index grows at its end: a random uuid4 lands on a random page of a
  large index, and each batch of inserts then rewrites hundreds of pages.
  """
  value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
  value = value & ~(0xF << 76) | 0x7 << 76  # Version 7.
  value = value & ~(0x3 << 62) | 0x2 << 62  # The RFC 9562 variant.
  return f"{value:032x}"


def _shown(value: Any, width: Optional[int] = 100) -> str:
  """repr of what a row holds, cut at `width` characters; a value nested deeper than repr
  goes is named so (its repr would raise RecursionError, which is not a refusal)."""
  try:
    shown = repr(value)
  except RecursionError:
    return "<a value nested too deep to show>"
  return shown[:width]


def _problem(request_id: Any, problem: str) -> ValueError:
  return ValueError(f"request_id {_shown(request_id, None)}: {problem}")


def text_problem(value: Any) -> Optional[str]:
  """Why `value` cannot be stored as an id, a model version or a source; None if it can."""
  if _plain_text(value):
    return None  # The common case, without encoding it.
  if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
    return f"must be a string of 1 to {MAX_ID_LENGTH} characters"
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as error:
    return f"is not valid Unicode ({error.reason})"
  return None


def _text(request_id: Any, name: str, value: Any) -> str:
  problem = text_problem(value)
  if problem:
    raise _problem(request_id, f"{name} {problem}, got {_shown(value)}")
  return value


def _real_within(value: Any, low: float, high: float) -> bool:
  """Whether `value` is a real number (not a bool), finite and in [low, high]."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return False
  try:
    return math.isfinite(value) and low <= value <= high
  except OverflowError:  # An integer beyond float64.
    return False


def _number(request_id: Any, name: str, value: Any, low: float, high: float) -> float:
  if type(value) is float and low <= value <= high:  # The common case, without the ABC check.
    return value
  if not _real_within(value, low, high):
    raise _problem(request_id, f"{name} must be a finite number in [{low:g}, {high:g}], "
                               f"got {_shown(value)}")
  return float(value)


def _finite_floats(values: list) -> bool:
  """Whether `values` are floats within the float32 range, checked in C loops; False may
  also mean values too large to sum, which the caller then checks one by one."""
  # The sum of absolute values is at least each of them, and NaN if one is NaN.
  return set(map(type, values)) == {float} and sum(map(abs, values)) <= MAX_ABS_VALUE


def _observation(request_id: Any, value: Any) -> Tuple[float, ...]:
  if isinstance(value, np.ndarray) and value.ndim == 1:
    value = value.tolist()
  if isinstance(value, list) and value and _finite_floats(value):
    return tuple(value)  # The common case, without the numbers ABC's slow isinstance.
  if not isinstance(value, (list, tuple)) or not value or not all(
      _real_within(x, -MAX_ABS_VALUE, MAX_ABS_VALUE) for x in value):
    raise _problem(request_id, "observation must be a non-empty list of finite float32 numbers, "
                               f"got {_shown(value)}")
  return tuple(float(x) for x in value)


def _fields(row: Mapping[str, Any], columns: Sequence[str]) -> Mapping[str, Any]:
  if type(row) is dict and row.keys() == _COLUMN_SETS[columns]:  # The common case.
    return row
  if not isinstance(row, Mapping):
    raise ValueError(f"a row must be an object, got {_shown(row)}")
  missing = [column for column in columns if column not in row]
  unknown = sorted(set(row) - set(columns))
  if missing or unknown:
    raise _problem(row.get("request_id"), ", ".join(
        ([f"missing field(s) {', '.join(missing)}"] if missing else [])
        + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])))
  return {column: row[column] for column in columns}


@dataclasses.dataclass(frozen=True)
class Prediction:
  """A served (or generated) prediction: the context, the action and its exact propensity.

  Attributes:
    request_id: Joins the prediction to its feedback; unique per prediction.
    event_time: When it was served, Unix seconds.
    observation: The context the policy saw.
    action: The recommended movie.
    propensity: The probability the policy gave `action`, in (0, 1].
    model_version: The serving model's version ("uniform-random" for the Generator).
    source: Who logged it: "endpoint", "generator", ...
  """
  request_id: str
  event_time: float
  observation: Tuple[float, ...]
  action: int
  propensity: float
  model_version: str
  source: str

  def __post_init__(self):
    checked = _checked_prediction(self.request_id, self.event_time, self.observation, self.action,
                                  self.propensity, self.model_version, self.source)
    for name, value in zip(("event_time", "observation", "action", "propensity"), checked[1:5]):
      object.__setattr__(self, name, value)

  @classmethod
  def from_row(cls, row: Mapping[str, Any]) -> "Prediction":
    """The prediction of a row (a log message's JSON object).

    Raises:
      ValueError: The row is malformed; the message names the request and the field.
    """
    checked = _checked_prediction(**_fields(row, PREDICTION_COLUMNS))
    # What __init__ and __post_init__ would set, without a frozen setattr per field.
    record = object.__new__(cls)
    record.__dict__.update(zip(PREDICTION_COLUMNS, checked))
    return record

  def to_row(self) -> Dict[str, Any]:
    """The row of a log message, JSON-serialisable."""
    row = dict(zip(PREDICTION_COLUMNS, (getattr(self, column) for column in PREDICTION_COLUMNS)))
    row["observation"] = list(self.observation)
    return row

  def values(self) -> tuple:
    """The values in PREDICTION_COLUMNS order, the observation as JSON text (SQLite's form)."""
    return (self.request_id, self.event_time, orjson.dumps(self.observation).decode(),
            self.action, self.propensity, self.model_version, self.source)


def _checked_prediction(request_id, event_time, observation, action, propensity, model_version,
                        source) -> tuple:
  """A prediction's fields in PREDICTION_COLUMNS order, checked; numbers as float or int, the
  observation as a tuple.

  Raises:
    ValueError: A field is malformed; the message names the request and the field.
  """
  _text(request_id, "request_id", request_id)
  event_time = _number(request_id, "event_time", event_time, 0.0, MAX_EVENT_TIME)
  observation = _observation(request_id, observation)
  integral = type(action) is int or (  # pylint: disable=unidiomatic-typecheck
      not isinstance(action, bool) and isinstance(action, numbers.Integral))
  if not (integral and 0 <= action <= MAX_ACTION):
    raise _problem(request_id,
                   f"action must be an integer in [0, {MAX_ACTION}], got {_shown(action)}")
  propensity = _number(request_id, "propensity", propensity, 0.0, 1.0)
  if propensity == 0.0:
    raise _problem(request_id, "propensity must be positive: the action was taken")
  _text(request_id, "model_version", model_version)
  _text(request_id, "source", source)
  return (request_id, event_time, observation, int(action), propensity, model_version, source)


def _plain_text(value: Any) -> bool:
  """An ASCII string `text_problem` accepts, decided without encoding it."""
  return type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and value.isascii()


def _plain_floats(values: Sequence[Any], low: float, high: float) -> bool:
  """Whether every value is a float in [low, high], checked in C loops."""
  # min and max let a NaN through; the sum is NaN or infinite if a value is.
  return (set(map(type, values)) == {float} and math.isfinite(sum(values))
          and low <= min(values) and max(values) <= high)


def plain_prediction_values(rows: Sequence[Any]) -> Optional[List[tuple]]:
  """The rows' `Prediction.values` if every row is plain; None if one is not.

  A plain row is a dict of exactly PREDICTION_COLUMNS with ASCII ids, float times and
  propensities, an integer action and a non-empty list of floats, all within range: the
  Logger's common case, checked here a column at a time in C loops. On None the caller
  checks each row on its own; `Prediction.from_row` accepts every plain row alike.
  """
  if not rows or set(map(type, rows)) != {dict} or not all(
      row.keys() == _COLUMN_SETS[PREDICTION_COLUMNS] for row in rows):
    return None
  request_ids, event_times, observations, actions, propensities, versions, sources = zip(
      *map(_PREDICTION_FIELDS, rows))
  if not (all(map(_plain_text, request_ids)) and all(map(_plain_text, versions))
          and all(map(_plain_text, sources))
          and _plain_floats(event_times, 0.0, MAX_EVENT_TIME)
          and _plain_floats(propensities, 0.0, 1.0) and min(propensities) > 0.0
          and set(map(type, actions)) == {int} and min(actions) >= 0
          and max(actions) <= MAX_ACTION
          and set(map(type, observations)) == {list} and min(map(len, observations)) > 0
          and _finite_floats(list(itertools.chain.from_iterable(observations)))):
    return None
  texts = [text.decode() for text in map(orjson.dumps, observations)]
  return list(zip(request_ids, event_times, texts, actions, propensities, versions, sources))


@dataclasses.dataclass(frozen=True)
class Feedback:
  """The reward observed for the prediction `request_id`.

  Attributes:
    request_id: The prediction it rewards.
    event_time: When the reward was observed, Unix seconds.
    reward: The reward (the user's approximate rating of the recommended movie).
  """
  request_id: str
  event_time: float
  reward: float

  def __post_init__(self):
    rid = self.request_id
    _text(rid, "request_id", rid)
    object.__setattr__(self, "event_time",
                       _number(rid, "event_time", self.event_time, 0.0, MAX_EVENT_TIME))
    object.__setattr__(self, "reward",
                       _number(rid, "reward", self.reward, -MAX_ABS_VALUE, MAX_ABS_VALUE))

  @classmethod
  def from_row(cls, row: Mapping[str, Any]) -> "Feedback":
    """The feedback of a row (a log message's JSON object).

    Raises:
      ValueError: The row is malformed; the message names the request and the field.
    """
    return cls(**_fields(row, FEEDBACK_COLUMNS))

  def to_row(self) -> Dict[str, Any]:
    """The row of a log message, JSON-serialisable."""
    return {"request_id": self.request_id, "event_time": self.event_time, "reward": self.reward}

  def values(self) -> tuple:
    """The values in FEEDBACK_COLUMNS order."""
    return (self.request_id, self.event_time, self.reward)
