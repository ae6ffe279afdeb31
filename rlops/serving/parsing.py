"""Prediction requests: parsed and validated before anything is predicted or logged.

    {"instances": [{"observation": [rank_k numbers], "request_id": "optional"}]}

Every reason is a ValueError message the endpoint answers with 400.
"""
import json
import math
from typing import Any, Dict, List, Tuple

import numpy as np
import orjson

from rlops import records

MAX_REQUEST_ID_LENGTH = records.MAX_ID_LENGTH


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


def _request_id(instance: Dict[str, Any], index: int) -> str:
  if "request_id" not in instance:
    return records.new_request_id()
  request_id = instance["request_id"]
  if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_LENGTH:
    raise ValueError(f"instance {index}: request_id must be a string of 1 to "
                     f"{MAX_REQUEST_ID_LENGTH} characters")
  return request_id


def _loads_for_the_reason(body: bytes) -> Any:
  """The body as the standard library reads what orjson refused: NaN, numbers beyond
  float64 and lone surrogates parse, to be refused later with the precise reason.

  Raises:
    ValueError: Malformed or too deeply nested JSON.
  """
  try:
    return json.loads(body)
  except RecursionError as error:
    raise ValueError("JSON nested too deep") from error
  except ValueError as error:
    raise ValueError(f"malformed JSON: {error}") from error


def parse_instances(body: bytes, rank_k: int,
                    max_instances: int) -> Tuple[np.ndarray, List[list], List[str]]:
  """(observations [n, rank_k] float32, observations as sent, request ids) of a request body.

  Raises:
    ValueError: The body is invalid; the message is the reason, naming the instance.
  """
  try:
    request = orjson.loads(body)
  except orjson.JSONDecodeError:
    request = _loads_for_the_reason(body)
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
      raise ValueError(f"instance {index}: unknown field(s) {', '.join(sorted(unknown))}"[:300])
    observation = instance.get("observation")
    if not isinstance(observation, list):
      raise ValueError(f"instance {index}: observation must be a list of {rank_k} numbers")
    if len(observation) != rank_k:
      raise ValueError(f"instance {index}: observation has {len(observation)} values, "
                       f"the model takes {rank_k}")
    if not all(_is_number(value) for value in observation):
      raise ValueError(f"instance {index}: observation values must be numbers")
    observations.append(observation)
    request_ids.append(_request_id(instance, index))
  if len(set(request_ids)) < len(request_ids):
    raise ValueError("request_ids must be unique within a request")
  array = _float32_rows(observations)
  finite = np.isfinite(array).all(axis=1)
  if not finite.all():
    index = int(np.argmin(finite))
    raise ValueError(f"instance {index}: observation values must be finite float32 numbers")
  return array, observations, request_ids

