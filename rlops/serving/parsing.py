"""Prediction requests: parsed and validated before anything is predicted or logged.

    {"instances": [{"observation": [rank_k numbers], "request_id": "optional"}]}

Every reason is a ValueError message the endpoint answers with 400. What a request
brings into its prediction row (request_id, observation) is checked by the rules of
`records.Prediction`, so the rows of an accepted request are storable.
"""
import json
from typing import Any, Dict, List, Tuple

import numpy as np
import orjson

from rlops import records


_FLOAT = {float}
_NUMBER = {int, float}  # JSON numbers; not bool, which isinstance counts as an int.


def _observation_rows(observations: List[List[float]]) -> Tuple[np.ndarray, np.ndarray]:
  """([n, k] float32 of rows of floats, [n] whether each row is storable: every value finite
  and within the float32 range, the rule of `records.Prediction`)."""
  values = np.array(observations, np.float64)
  storable = (np.abs(values) <= records.MAX_ABS_VALUE).all(axis=1)  # False for NaN too.
  with np.errstate(over="ignore", invalid="ignore"):
    return values.astype(np.float32), storable


def _request_id(instance: Dict[str, Any], index: int) -> str:
  if "request_id" not in instance:
    return records.new_request_id()
  request_id = instance["request_id"]
  problem = records.text_problem(request_id)
  if problem:
    raise ValueError(f"instance {index}: request_id {problem}")
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
                    max_instances: int) -> Tuple[np.ndarray, List[List[float]], List[str]]:
  """(observations [n, rank_k] float32, the observations as sent, integers as floats, request
  ids) of a request body.

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
      names = ", ".join(map(repr, sorted(unknown)))  # repr: a lone surrogate is escaped.
      raise ValueError(f"instance {index}: unknown field(s) {names}"[:300])
    observation = instance.get("observation")
    if not isinstance(observation, list):
      raise ValueError(f"instance {index}: observation must be a list of {rank_k} numbers")
    if len(observation) != rank_k:
      raise ValueError(f"instance {index}: observation has {len(observation)} values, "
                       f"the model takes {rank_k}")
    kinds = set(map(type, observation))
    if kinds != _FLOAT:  # Integers are logged as floats.
      if not kinds <= _NUMBER:
        raise ValueError(f"instance {index}: observation values must be numbers")
      try:
        observation = [float(value) for value in observation]
      except OverflowError:
        raise ValueError(f"instance {index}: observation values must be finite float32 "
                         "numbers") from None
    observations.append(observation)
    request_ids.append(_request_id(instance, index))
  if len(set(request_ids)) < len(request_ids):
    raise ValueError("request_ids must be unique within a request")
  array, storable = _observation_rows(observations)
  if not storable.all():
    index = int(np.argmin(storable))
    raise ValueError(f"instance {index}: observation values must be finite float32 numbers")
  return array, observations, request_ids
