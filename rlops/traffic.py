"""Simulated traffic: users query an endpoint, and the reward of exactly that user for
exactly the returned movie goes back as feedback. The Simulator function's core, also
run by `rlops simulate` and the demo."""
import json
import time
from typing import Any, Dict, List, Optional

import absl.logging
import httpx
import numpy as np
from tqdm.auto import tqdm

from rlops import claims, log_sinks, records, simulation

MAX_BACKOFF_SECONDS = 5.0


class FeedbackSender:
  """Delivers feedback rows to a sink in batches; retries retryable failures with backoff.

  A batch that fails for longer than `retry_seconds` stays pending, and `add` sends no
  more (each try would hold the run up as long again): the rows go out at the final
  `send`. A batch the sink rejects for good (ValueError) is sent again row by row, and
  the rows rejected alone are kept in `refused`.
  """

  def __init__(self, sink: log_sinks.LogSink, batch_rows: int, retry_seconds: float = 30.0):
    self._sink = sink
    self._batch_rows = batch_rows
    self._retry_seconds = retry_seconds
    self.pending: List[Dict[str, Any]] = []
    self.refused: List[Dict[str, Any]] = []
    self.delivered = 0
    self.failures = 0
    self._failing = False  # A send failed for `retry_seconds`: `add` sends no more.

  def add(self, rows: List[Dict[str, Any]]) -> None:
    self.pending.extend(rows)
    if len(self.pending) >= self._batch_rows and not self._failing:
      self._failing = not self.send()

  def send(self) -> bool:
    """Delivers every pending row, retrying until `retry_seconds`; returns whether it did."""
    deadline = time.monotonic() + self._retry_seconds
    backoff = 0.1
    while self.pending:
      try:
        self._deliver(self.pending)
        self.pending = []
      except Exception as error:  # pylint: disable=broad-except
        self.failures += 1
        if time.monotonic() + backoff > deadline:
          absl.logging.warning("feedback delivery failed; %d rows stay pending: %s",
                               len(self.pending), error)
          return False
        time.sleep(backoff)
        backoff = min(2 * backoff, MAX_BACKOFF_SECONDS)
    return True

  def _deliver(self, rows: List[Dict[str, Any]]) -> None:
    try:
      self._sink.deliver({"feedback": rows})
      self.delivered += len(rows)
      return
    except ValueError as error:
      if len(rows) == 1:
        self._reject(rows[0], error)
        return
    for index, row in enumerate(rows):
      try:
        self._sink.deliver({"feedback": [row]})
        self.delivered += 1
      except ValueError as error:
        self._reject(row, error)
      except Exception:
        self.pending = rows[index:]
        raise

  def _reject(self, row: Dict[str, Any], error: Exception) -> None:
    self.refused.append(row)
    absl.logging.error("feedback row rejected: %s", error)


def run_simulation(endpoint_url: str, model: simulation.MovieLensModel, requests: int,
                   sink: log_sinks.LogSink, *, instances_per_request: int = 1,
                   rate: Optional[float] = None, seed: int = 0, timeout_seconds: float = 600.0,
                   feedback_batch: int = 200, progress: bool = False,
                   headers: Optional[Dict[str, str]] = None,
                   feedback_retry_seconds: float = 30.0,
                   user_rows: Optional[np.ndarray] = None,
                   undelivered_path: Optional[str] = None) -> Dict[str, Any]:
  """Sends `requests` prediction requests (bounded also by `timeout_seconds`), at most `rate`
  per second, and delivers each returned prediction's reward as feedback.

  `user_rows` ([requests, instances_per_request]) fixes the users to send; None:
  drawn uniformly at random with `seed`. Feedback delivery is retried with backoff
  for up to `feedback_retry_seconds` per batch; rows still undelivered at the end, or
  refused, or pending when the run is interrupted, are counted in the result and kept in
  `undelivered_path` (JSON lines), if given, whose rows go out first at the next run, or
  else logged as errors with their rows.

  Returns the totals (feedback delivered, rejected and undelivered among them) and,
  per model version, the count, mean reward and mean regret (against the
  simulation's oracle) of what was served.
  """
  if requests < 1 or instances_per_request < 1:
    raise ValueError("requests and instances_per_request must be positive")
  feedback = FeedbackSender(sink, feedback_batch, feedback_retry_seconds)
  claim = claims.Claim(undelivered_path) if undelivered_path else None
  kept = _rows_of(claim.lines if claim else [])
  try:
    feedback.add(kept)
    summary = _simulate(endpoint_url, model, requests, feedback, instances_per_request, rate,
                        seed, timeout_seconds, progress, headers, user_rows)
  finally:
    left = feedback.pending + feedback.refused
    # The standard library's JSON: whatever a kept line held (NaN, a lone surrogate) goes back.
    lines = [json.dumps(row).encode() for row in left]
    if claim:
      try:
        claim.release(lines)
      except OSError as error:
        _log_unkept(lines)
        raise OSError(f"cannot keep the undelivered feedback in {undelivered_path} ({error}); "
                      "its rows are in the log above") from error
    else:
      _log_unkept(lines)
  return {**summary, "feedback_delivered": feedback.delivered,
          "feedback_rejected": len(feedback.refused), "feedback_undelivered": len(lines),
          "feedback_undelivered_file": undelivered_path if lines else None,
          "feedback_delivery_failures": feedback.failures}


def _log_unkept(lines: List[bytes]) -> None:
  if lines:
    absl.logging.error("feedback not delivered, kept nowhere else: %s",
                       b", ".join(lines).decode(errors="replace"))


def _rows_of(lines: List[bytes]) -> List[Dict[str, Any]]:
  """The feedback rows on kept `lines`. A line that is not JSON (torn by a crash or a full disk
  as it was written; this module writes whole lines) cannot be sent: it is logged, and dropped."""
  rows = []
  for line in lines:
    try:
      rows.append(log_sinks.decode_json(line))
    except ValueError as error:
      absl.logging.error("a kept feedback line that is not JSON (%s) is dropped: %r", error,
                         line[:2000])
  return rows


def _simulate(endpoint_url: str, model: simulation.MovieLensModel, requests: int,
              feedback: FeedbackSender, instances_per_request: int, rate: Optional[float],
              seed: int, timeout_seconds: float, progress: bool,
              headers: Optional[Dict[str, str]],
              user_rows: Optional[np.ndarray]) -> Dict[str, Any]:
  """`run_simulation`'s requests, their rewards handed to `feedback`; the served totals."""
  rng = np.random.default_rng(seed)
  per_version: Dict[str, Dict[str, float]] = {}
  errors, sent, last_error = 0, 0, None
  start = time.monotonic()
  with httpx.Client(timeout=30.0, headers=headers) as client:
    for index in tqdm(range(requests), unit="request", disable=not progress, desc="simulate"):
      if time.monotonic() - start > timeout_seconds:
        break
      if rate:
        time.sleep(max(0.0, start + index / rate - time.monotonic()))
      users = (rng.integers(0, model.num_users, size=instances_per_request) if user_rows is None
               else user_rows[index])
      ids = [records.new_request_id() for _ in users]
      body = {"instances": [{"observation": observation.tolist(), "request_id": rid}
                            for observation, rid in zip(model.observe(users), ids)]}
      sent += 1
      try:
        response = client.post(endpoint_url, json=body)
        response.raise_for_status()
        predictions = response.json()["predictions"]
      except (httpx.HTTPError, KeyError, ValueError) as error:
        errors += 1
        last_error = f"{type(error).__name__}: {error}"
        continue
      now = time.time()
      rewarded = []
      for user, rid, prediction in zip(users, ids, predictions):
        if prediction["request_id"] != rid:
          raise RuntimeError(f"endpoint answered request {rid} with {prediction['request_id']}")
        reward = float(model.reward(user, prediction["action"]))
        rewarded.append(records.Feedback(request_id=rid, event_time=now, reward=reward).to_row())
        stats = per_version.setdefault(prediction["model_version"],
                                       {"count": 0, "reward": 0.0, "regret": 0.0})
        stats["count"] += 1
        stats["reward"] += reward
        stats["regret"] += float(model.optimal_rewards[user]) - reward
      feedback.add(rewarded)
  feedback.send()
  served = sum(stats["count"] for stats in per_version.values())
  return {
      "requests": sent, "errors": errors, "last_error": last_error, "predictions": served,
      "mean_reward": sum(s["reward"] for s in per_version.values()) / max(served, 1),
      "mean_regret": sum(s["regret"] for s in per_version.values()) / max(served, 1),
      "versions": {version: {"count": s["count"], "mean_reward": s["reward"] / s["count"],
                             "mean_regret": s["regret"] / s["count"]}
                   for version, s in sorted(per_version.items())},
      "seconds": time.monotonic() - start,
  }
