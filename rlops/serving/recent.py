"""Recently served request ids: one request id, one logged action.

A request that reuses an id already served for the same observation is
answered with the same prediction again and not logged twice; for another
observation it is refused. The memory is bounded; after a restart it is
refilled from the outbox, which holds the rows since its last compaction.
"""
import collections
from typing import Any, Dict, Iterable, List, Optional

_PREDICTION_KEYS = ("action", "propensity", "request_id", "model_version")


class ReusedRequestId(ValueError):
  """A request id already served for another observation."""


class RecentPredictions:
  """The last `capacity` served predictions by request id, with their observations."""

  def __init__(self, capacity: int = 100_000):
    self._capacity = capacity
    self._served: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()

  def __len__(self) -> int:
    return len(self._served)

  def lookup(self, request_id: str, observation: List[float]) -> Optional[Dict[str, Any]]:
    """The prediction served for `request_id`, or None if it is new.

    Raises:
      ReusedRequestId: `request_id` was served for another observation.
    """
    served = self._served.get(request_id)
    if served is None:
      return None
    if served[0] != observation:
      raise ReusedRequestId(f"request_id {request_id!r} was already served for another "
                            "observation; use a new request_id")
    return served[1]

  def add(self, observation: List[float], prediction: Dict[str, Any]) -> None:
    self._served[prediction["request_id"]] = (observation, prediction)
    if len(self._served) > self._capacity:
      self._served.popitem(last=False)

  def add_logged(self, rows: Iterable[Dict[str, Any]]) -> None:
    """Remembers prediction rows as logged in the outbox; skips rows that are not."""
    for row in rows:
      try:
        self.add(row["observation"], {key: row[key] for key in _PREDICTION_KEYS})
      except (KeyError, TypeError):
        continue
