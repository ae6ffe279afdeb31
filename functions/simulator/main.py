"""Simulator function: simulated users query the endpoint, and the reward of exactly that
user for exactly the returned movie goes back as feedback.

Production: a Cloud Function started by Cloud Scheduler through Pub/Sub (entry point
`simulate`). Locally: `rlops simulate`, or `rlops.traffic.run_simulation` from Python.
"""
import json
import os
import time
from typing import Dict

import functions_framework

from rlops import log_sinks, simulation, traffic
from rlops.config import Config


def vertex_predict_url(gcp, aiplatform=None) -> str:
  """The predict URL of the one endpoint named `gcp.endpoint_name`."""
  if aiplatform is None:
    from google.cloud import aiplatform  # pylint: disable=import-outside-toplevel
  endpoints = aiplatform.Endpoint.list(filter=f'display_name="{gcp.endpoint_name}"',
                                       project=gcp.project, location=gcp.region)
  if not endpoints:
    raise RuntimeError(f"no Vertex endpoint named {gcp.endpoint_name!r} "
                       f"in {gcp.project}/{gcp.region}")
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
  summary = traffic.run_simulation(url, simulation.MovieLensModel.from_config(config),
                           int(os.environ.get("SIMULATOR_REQUESTS", "100")),
                           log_sinks.sink_from_env(),
                           seed=int(time.time()), headers=headers)
  print(json.dumps(summary))
