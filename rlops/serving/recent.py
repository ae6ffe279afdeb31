"""Recently served request ids: one request id, one logged action.

A request that reuses an id already served for the same observation is
answered with the same prediction again and not logged twice; for another
observation it is refused. The memory is bounded (about 250 bytes an id); after
a restart it is refilled from the outbox, which holds the rows since its last
compaction.
"""
import collections
from typing import Any, Dict, Iterable, Optional

import numpy as np


class ReusedRequestId(ValueError):
  """A request id already served for another observation."""


def observation_key(observation) -> bytes:
  """The observation as the model sees it (float32), as a compact key."""
  return np.asarray(observation, np.float32).tobytes()


class RecentPredictions:
  """The last `capacity` served predictions by request id, with their observations' keys."""

  def __init__(self, capacity: int = 100_000):
    self._capacity = capacity
    # request_id -> (observation key, action, propensity, model_version)
    self._served: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()

  def __len__(self) -> int:
    return len(self._served)

  def lookup(self, request_id: str, key: bytes) -> Optional[Dict[str, Any]]:
    """The prediction served for `request_id`, or None if it is new.

    Args:
      request_id: The request's id.
      key: `observation_key` of the request's observation.

    Raises:
      ReusedRequestId: `request_id` was served for another observation.
    """
    served = self._served.get(request_id)
    if served is None:
      return None
    if served[0] != key:
      raise ReusedRequestId(f"request_id {request_id!r} was already served for another "
                            "observation; use a new request_id")
    return {"action": served[1], "propensity": served[2], "request_id": request_id,
            "model_version": served[3]}

  def add(self, key: bytes, prediction: Dict[str, Any]) -> None:
    self._served[prediction["request_id"]] = (key, prediction["action"],
                                              prediction["propensity"],
                                              prediction["model_version"])
    if len(self._served) > self._capacity:
      self._served.popitem(last=False)

  def add_logged(self, rows: Iterable[Dict[str, Any]]) -> None:
    """Remembers prediction rows as logged in the outbox; skips rows that are not."""
    for row in rows:
      try:
        self.add(observation_key(row["observation"]), row)
      except (KeyError, TypeError, ValueError):
        continue
