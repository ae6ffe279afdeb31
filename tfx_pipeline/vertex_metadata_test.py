"""Tests of the Vertex lineage walk: the real GAPIC REST clients against recorded responses."""
import json
import re

import pytest
from google.auth import credentials as auth_credentials

from tfx_pipeline import recorded_vertex_api, vertex_metadata

PROJECT, REGION, ENDPOINT = "rlops-prod", "us-central1", "rlops-endpoint"
LOCATION = "projects/123456789012/locations/us-central1"
STARTUP = "rlops-movielens-startup-1-0-1714564800"
RETRAIN = "rlops-movielens-retrain-2-1714564800-1714651200"
LIST_ENDPOINTS = (f'GET /v1/projects/{PROJECT}/locations/{REGION}/endpoints'
                  f'?filter=display_name="{ENDPOINT}"')


def _vertex(api: recorded_vertex_api.RecordedVertexApi) -> vertex_metadata.VertexMetadata:
  return vertex_metadata.VertexMetadata(PROJECT, REGION, api_endpoint=api.url,
                                        credentials=auth_credentials.AnonymousCredentials())


def test_walks_from_the_serving_model_back_through_its_warm_start_parent():
  responses = recorded_vertex_api.recorded_lineage()
  with recorded_vertex_api.RecordedVertexApi(responses) as api:
    chain = _vertex(api).lineage(ENDPOINT)
  # Every recorded request, in order, each once: the deployed model holding the traffic
  # (models/2002, not the undeployed-to-be 2001), its PushedModel by URI, then each link.
  assert api.requests == list(responses)

  retrained, startup = chain
  store = f"{LOCATION}/metadataStores/default"
  assert retrained["model"] == {
      "id": "7203", "name": f"{store}/artifacts/7203",
      "uri": f"gs://rlops-prod-bucket/pipeline_root/123456789012/{RETRAIN}/Trainer_3203/model",
      "span": 2, "window_end": 1714651200, "samples": 1834, "trained_records": 3834,
      "agent": "linucb", "warm_started_from": startup["model"]["uri"] + "/Format-Serving"}
  assert retrained["outcome"] == {"blessed": True, "pushed": True,
                                  "pushed_destination": f"{LOCATION}/models/2002"}
  assert retrained["examples"]["id"] == "7202" and retrained["examples"]["span"] == 2
  assert retrained["pipeline_run"] == RETRAIN and retrained["generator"] is None
  assert "event_time >= 1714564800.0 AND event_time < 1714651200.0" in json.loads(
      retrained["query"])["splits"][0]["pattern"]

  assert startup["model"]["id"] == "7103" and startup["model"]["span"] == 1
  # Blessed by its own Evaluator; the retraining's Evaluator took it only as baseline.
  assert startup["outcome"] == {"blessed": True, "pushed": True,
                                "pushed_destination": f"{LOCATION}/models/2001"}
  assert startup["pipeline_run"] == STARTUP
  assert startup["generator"] == {
      "execution_id": "3101", "record_count": 2000, "event_time": 1714564799,
      "warehouse": "bq://rlops-prod.rlops_logs", "logging_policy": "uniform_random",
      "request_id_prefix": "startup-1714564799"}


def test_interactions_schema_title_is_the_custom_type_name():
  from custom_components import artifacts  # pylint: disable=import-outside-toplevel
  assert vertex_metadata.INTERACTIONS_TYPE == artifacts.Interactions.TYPE_NAME


def _without_deployed_models(responses):
  endpoint = dict(responses[LIST_ENDPOINTS]["endpoints"][0], trafficSplit={})
  del endpoint["deployedModels"]
  return {LIST_ENDPOINTS: {"endpoints": [endpoint]}}


def _trainer_renamed(responses):
  """The model's lineage as if Vertex named the Trainer's execution after its task."""
  request = next(r for r in responses if "artifacts/7203:queryArtifactLineageSubgraph" in r)
  graph = json.loads(json.dumps(responses[request]))
  for execution in graph["executions"]:
    if execution["displayName"] == "Trainer":
      execution["displayName"] = "trainer-task"
  return {request: graph}


@pytest.mark.parametrize("change, message", [
    (lambda responses: {LIST_ENDPOINTS: {}},
     f"no endpoint named {ENDPOINT} in projects/{PROJECT}/locations/{REGION}"),
    (_without_deployed_models,
     f"endpoint {ENDPOINT} ({LOCATION}/endpoints/4001) has no deployed model"),
    (lambda responses: {next(r for r in responses if "tfx.PushedModel" in r): {}},
     f"model {LOCATION}/models/2002 (gs://rlops-prod-bucket/pipeline_root/123456789012/"
     f"{RETRAIN}/Pusher_3205/pushed_model) is no PushedModel"),
    (_trainer_renamed,
     f"no Trainer execution next to projects/123456789012/locations/{REGION}/metadataStores/"
     "default/artifacts/7203 in Vertex ML Metadata (found:"),
], ids=["no endpoint", "no deployed model", "model not in metadata", "no Trainer execution"])
def test_what_is_missing_on_vertex_is_named(change, message):
  responses = recorded_vertex_api.recorded_lineage()
  with recorded_vertex_api.RecordedVertexApi({**responses, **change(responses)}) as api:
    vertex = _vertex(api)
    with pytest.raises(vertex_metadata.NotFound, match=re.escape(message)):
      vertex.lineage(ENDPOINT)
