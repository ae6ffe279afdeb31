"""Simulated traffic: users query an endpoint, and the reward of exactly that user for
exactly the returned movie goes back as feedback. The Simulator function's core, also
run by `rlops simulate` and the demo."""
import time
import uuid
from typing import Any, Dict, Optional

import httpx
import numpy as np
from tqdm.auto import tqdm

from rlops import log_sinks, records, simulation


def run_simulation(endpoint_url: str, model: simulation.MovieLensModel, requests: int,
                   sink: log_sinks.LogSink, *, instances_per_request: int = 1,
                   rate: Optional[float] = None, seed: int = 0, timeout_seconds: float = 600.0,
                   feedback_batch: int = 200, progress: bool = False,
                   headers: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
  """Sends `requests` prediction requests (bounded also by `timeout_seconds`), at most `rate`
  per second, and delivers each returned prediction's reward as feedback.

  Returns the totals and, per model version, the count, mean reward and mean regret
  (against the simulation's oracle) of what was served.
  """
  if requests < 1 or instances_per_request < 1:
    raise ValueError("requests and instances_per_request must be positive")
  rng = np.random.default_rng(seed)
  per_version: Dict[str, Dict[str, float]] = {}
  feedback, errors, sent = [], 0, 0
  start = time.monotonic()
  with httpx.Client(timeout=30.0, headers=headers) as client:
    for index in tqdm(range(requests), unit="request", disable=not progress, desc="simulate"):
      if time.monotonic() - start > timeout_seconds:
        break
      if rate:
        time.sleep(max(0.0, start + index / rate - time.monotonic()))
      users = rng.integers(0, model.num_users, size=instances_per_request)
      ids = [uuid.uuid4().hex for _ in users]
      body = {"instances": [{"observation": observation.tolist(), "request_id": rid}
                            for observation, rid in zip(model.observe(users), ids)]}
      sent += 1
      try:
        response = client.post(endpoint_url, json=body)
        response.raise_for_status()
        predictions = response.json()["predictions"]
      except (httpx.HTTPError, KeyError, ValueError):
        errors += 1
        continue
      now = time.time()
      for user, rid, prediction in zip(users, ids, predictions):
        if prediction["request_id"] != rid:
          raise RuntimeError(f"endpoint answered request {rid} with {prediction['request_id']}")
        reward = float(model.reward(user, prediction["action"]))
        feedback.append(records.Feedback(request_id=rid, event_time=now, reward=reward).to_row())
        stats = per_version.setdefault(prediction["model_version"], {"count": 0, "reward": 0.0, "regret": 0.0})
        stats["count"] += 1
        stats["reward"] += reward
        stats["regret"] += float(model.optimal_rewards[user]) - reward
      if len(feedback) >= feedback_batch:
        sink.deliver({"feedback": feedback})
        feedback = []
  if feedback:
    sink.deliver({"feedback": feedback})
  served = sum(stats["count"] for stats in per_version.values())
  return {
      "requests": sent, "errors": errors, "predictions": served,
      "mean_reward": sum(s["reward"] for s in per_version.values()) / max(served, 1),
      "mean_regret": sum(s["regret"] for s in per_version.values()) / max(served, 1),
      "versions": {version: {"count": s["count"], "mean_reward": s["reward"] / s["count"],
                             "mean_regret": s["regret"] / s["count"]}
                   for version, s in sorted(per_version.items())},
      "seconds": time.monotonic() - start,
  }
