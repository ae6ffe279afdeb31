"""Simulator function: simulated users query the endpoint, and the reward of exactly that
user for exactly the returned movie goes back as feedback.

Production: a Cloud Function started by Cloud Scheduler through Pub/Sub (entry point
`simulate`). Locally: `rlops simulate`, or `run_simulation` from Python.
"""
import json
import os
import time
import uuid
from typing import Any, Dict, Optional

import functions_framework
import httpx
import numpy as np
from tqdm.auto import tqdm

from rlops import log_sinks, simulation
from rlops.config import Config


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
        feedback.append({"request_id": rid, "event_time": now, "reward": reward})
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


def vertex_predict_url(gcp, aiplatform=None) -> str:
  """The predict URL of the one endpoint named `gcp.endpoint_name`."""
  if aiplatform is None:
    from google.cloud import aiplatform  # pylint: disable=import-outside-toplevel
  endpoints = aiplatform.Endpoint.list(filter=f'display_name="{gcp.endpoint_name}"',
                                       project=gcp.project, location=gcp.region)
  if not endpoints:
    raise RuntimeError(f"no Vertex endpoint named {gcp.endpoint_name!r} in {gcp.project}/{gcp.region}")
  return f"https://{gcp.region}-aiplatform.googleapis.com/v1/{endpoints[0].resource_name}:predict"


def google_auth_headers() -> Dict[str, str]:
  """A bearer token of the function's service account, for the Vertex endpoint."""
  import google.auth  # pylint: disable=import-outside-toplevel
  import google.auth.transport.requests  # pylint: disable=import-outside-toplevel
  credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
  credentials.refresh(google.auth.transport.requests.Request())
  return {"Authorization": f"Bearer {credentials.token}"}


@functions_framework.cloud_event
def simulate(cloud_event) -> None:
  """Cloud Function entry point: one scheduled round of simulated traffic.

  Env: RLOPS_CONFIG (Config JSON), SIMULATOR_REQUESTS (default 100), where feedback
  goes (`rlops.log_sinks.sink_from_env`), and ENDPOINT_URL, or else the config's
  Vertex endpoint, called with the function's credentials.
  """
  del cloud_event  # The schedule's tick carries no parameters.
  config = Config.from_json(os.environ["RLOPS_CONFIG"]).validate()
  if os.environ.get("ENDPOINT_URL"):
    url, headers = os.environ["ENDPOINT_URL"], {}
  elif config.gcp is not None:
    url, headers = vertex_predict_url(config.gcp), google_auth_headers()
  else:
    raise RuntimeError("set ENDPOINT_URL, or give RLOPS_CONFIG a gcp section")
  summary = run_simulation(url, simulation.MovieLensModel.from_config(config),
                           int(os.environ.get("SIMULATOR_REQUESTS", "100")), log_sinks.sink_from_env(),
                           seed=int(time.time()), headers=headers)
  print(json.dumps(summary))
