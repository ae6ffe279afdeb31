"""Recently served request ids, shared by a server's worker processes: one id, one logged action.

A request that reuses an id already served for the same observation is
answered with the same prediction again and not logged twice; for another
observation it is refused, and so is an id another request is serving right
now. An id is reserved (pending) before it is predicted, filled once its row is
in the outbox, and released if nothing was logged; each step takes a lock that
is never held while predicting or writing the outbox.

The table is a set-associative cache in shared memory (112 bytes an entry, 8
ways a set, the least recently written entry of a set replaced), created by the
process that starts the workers and passed to each. An id's set is chosen by a
hash keyed with a secret of the table's, so that a client cannot compute ids
that share a served id's set and evict it with a handful of requests. After a
restart it is refilled from the outboxes, which hold the rows since their last
compaction.
"""
import ctypes
import hashlib
import os
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

WAYS = 8
MAX_MODEL_VERSION_BYTES = 64

_PENDING, _SERVED = 1, 2  # The state of an entry; an empty one is all zeros.
_ENTRY = np.dtype([("request_hash", "V16"), ("observation_hash", "<u8"), ("stamp", "<u8"),
                   ("propensity", "<f8"), ("action", "<i4"), ("state", "u1"),
                   ("model_version", f"S{MAX_MODEL_VERSION_BYTES}")], align=True)
_EMPTY_ENTRY = np.zeros((), _ENTRY)


class ReusedRequestId(ValueError):
  """A request id already served for another observation, or being served right now."""


def observation_key(observation) -> bytes:
  """The observation as the model sees it (float32), as a compact key."""
  return np.asarray(observation, np.float32).tobytes()


class RecentPredictions:
  """About the last `capacity` served predictions by request id, in memory worker processes share.

  Args:
    capacity: Entries, rounded up to whole sets of `WAYS`.
    context: The multiprocessing context of the processes that will share the
      table (pickled as a Process argument); None: this process alone.
  """

  def __init__(self, capacity: int = 100_000, context=None):
    size = max(1, -(-capacity // WAYS)) * WAYS * _ENTRY.itemsize
    secret = os.urandom(16)
    if context is None:
      self.__setstate__((bytearray(size), threading.Lock(), secret))
    else:
      self.__setstate__((context.RawArray(ctypes.c_char, size), context.Lock(), secret))

  def __getstate__(self):
    # The shared buffer and lock themselves: a spawned worker uses the same memory.
    return self._buffer, self._lock, self._secret

  def __setstate__(self, state):
    self._buffer, self._lock, self._secret = state
    self._sets = np.frombuffer(self._buffer, _ENTRY).reshape(-1, WAYS)
    self.capacity = self._sets.size

  def __len__(self) -> int:
    """The number of served entries."""
    return int(np.count_nonzero(self._sets["state"] == _SERVED))

  def _request_hash(self, request_id: str) -> bytes:
    # surrogatepass: an id the outbox will refuse as invalid Unicode still has a hash.
    return hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=16,
                           key=self._secret).digest()

  @staticmethod
  def _observation_hash(key: bytes) -> int:
    # Not keyed: it only tells observations apart, where no set is chosen (64 bits to match).
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")

  def _ways(self, request_hash: bytes) -> np.ndarray:
    return self._sets[int.from_bytes(request_hash[:8], "little") % len(self._sets)]

  @staticmethod
  def _find(ways: np.ndarray, request_hash: bytes) -> Optional[int]:
    """The way holding `request_hash`, or None (an empty entry's hash is all zeros)."""
    hashes = ways["request_hash"].tolist()
    return hashes.index(request_hash) if request_hash in hashes else None

  def reserve(self, request_id: str, key: bytes) -> Optional[Dict[str, Any]]:
    """The prediction served for `request_id`; None if it is new, and now reserved.

    Args:
      request_id: The request's id.
      key: `observation_key` of the request's observation.

    Raises:
      ReusedRequestId: `request_id` was served for another observation, or a
        concurrent request is serving it.
    """
    request_hash = self._request_hash(request_id)
    observation_hash = self._observation_hash(key)
    ways = self._ways(request_hash)
    with self._lock:
      way = self._find(ways, request_hash)
      if way is None:
        ways[int(ways["stamp"].argmin())] = (request_hash, observation_hash, time.monotonic_ns(),
                                             0.0, 0, _PENDING, b"")
        return None
      _, served_observation_hash, _, propensity, action, state, model_version = ways[way].item()
    if state == _PENDING:
      raise ReusedRequestId(f"request_id {request_id!r} is being served by a concurrent request; "
                            "retry")
    if served_observation_hash != observation_hash:
      raise ReusedRequestId(f"request_id {request_id!r} was already served for another "
                            "observation; use a new request_id")
    return {"action": action, "propensity": propensity, "request_id": request_id,
            "model_version": model_version.decode()}

  def reserve_all(self, request_ids: Sequence[str],
                  keys: Sequence[bytes]) -> List[Optional[Dict[str, Any]]]:
    """`reserve` of each request id; if one raises, releases those this call reserved."""
    predictions = []
    try:
      for request_id, key in zip(request_ids, keys):
        predictions.append(self.reserve(request_id, key))
    except ReusedRequestId:
      for request_id, prediction in zip(request_ids, predictions):
        if prediction is None:
          self.release(request_id)
      raise
    return predictions

  def fill(self, key: bytes, prediction: Dict[str, Any]) -> None:
    """Remembers a logged prediction as served for its request id (reserved or not).

    Raises:
      ValueError: Its model_version is longer than MAX_MODEL_VERSION_BYTES.
    """
    model_version = prediction["model_version"].encode()
    if len(model_version) > MAX_MODEL_VERSION_BYTES:
      raise ValueError(f"model_version {prediction['model_version'][:80]!r} is longer than "
                       f"{MAX_MODEL_VERSION_BYTES} bytes")
    request_hash = self._request_hash(prediction["request_id"])
    entry = (request_hash, self._observation_hash(key), time.monotonic_ns(),
             prediction["propensity"], prediction["action"], _SERVED, model_version)
    ways = self._ways(request_hash)
    with self._lock:
      way = self._find(ways, request_hash)
      ways[int(ways["stamp"].argmin()) if way is None else way] = entry

  def release(self, request_id: str) -> None:
    """Drops `request_id`'s reservation: nothing was logged for it."""
    request_hash = self._request_hash(request_id)
    ways = self._ways(request_hash)
    with self._lock:
      way = self._find(ways, request_hash)
      if way is not None and ways[way]["state"] == _PENDING:
        ways[way] = _EMPTY_ENTRY

  def add_logged(self, rows: Iterable[Dict[str, Any]]) -> None:
    """Remembers prediction rows as logged in the outbox; skips rows that are not."""
    for row in rows:
      try:
        self.fill(observation_key(row["observation"]), row)
      except (AttributeError, KeyError, TypeError, ValueError):
        continue
