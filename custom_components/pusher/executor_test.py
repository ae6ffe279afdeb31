"""Tests of the Vertex Pusher's rollout against a stand-in Vertex AI SDK (the network edge)."""
import os
import types

import pytest
from google.cloud import aiplatform
from tfx.extensions.google_cloud_ai_platform import prediction_clients
from tfx.types import standard_artifacts

from custom_components.pusher import executor

PROJECT, REGION, ENDPOINT = "rlops-test", "europe-west4", "rlops-endpoint"
LOCATION = f"projects/123/locations/{REGION}"


class _Vertex:
  """The endpoint, its deployed models and traffic; records every call."""

  def __init__(self, deployed):
    self.calls = []
    self.deployed = dict(deployed)  # deployed model id -> model resource name
    self.traffic = {deployed_id: 0 for deployed_id in deployed}
    vertex = self

    class Endpoint:
      resource_name = f"{LOCATION}/endpoints/7"

      @classmethod
      def list(cls, filter):  # pylint: disable=redefined-builtin
        vertex.calls.append(("Endpoint.list", filter))
        return [cls()]

      def list_models(self):
        vertex.calls.append(("list_models",))
        return [types.SimpleNamespace(id=i, model=m) for i, m in vertex.deployed.items()]

      def undeploy(self, deployed_model_id):
        vertex.calls.append(("undeploy", deployed_model_id))
        assert vertex.traffic[deployed_model_id] == 0, "Vertex refuses: it has traffic"
        del vertex.deployed[deployed_model_id]

    class Model:
      resource_name = f"{LOCATION}/models/42"

      @classmethod
      def upload(cls, **kwargs):
        vertex.calls.append(("Model.upload", kwargs["serving_container_image_uri"]))
        return cls()

      def wait(self):
        pass

      def deploy(self, endpoint, traffic_percentage, **kwargs):
        vertex.calls.append(("deploy", traffic_percentage, kwargs))
        vertex.traffic = {deployed_id: 0 for deployed_id in vertex.deployed}
        vertex.deployed["3"] = self.resource_name
        vertex.traffic["3"] = traffic_percentage

    self.Endpoint, self.Model = Endpoint, Model  # pylint: disable=invalid-name

  def init(self, project, location):
    self.calls.append(("init", project, location))


@pytest.fixture
def vertex(monkeypatch):
  fake = _Vertex({"1": "projects/rlops-test/locations/europe-west4/models/40",
                  "2": f"{LOCATION}/models/41"})
  for module in (aiplatform, prediction_clients.aiplatform):
    monkeypatch.setattr(module, "init", fake.init)
    monkeypatch.setattr(module, "Endpoint", fake.Endpoint)
    monkeypatch.setattr(module, "Model", fake.Model)
  return fake


def _push(tmp_path, blessed):
  model, blessing = standard_artifacts.Model(), standard_artifacts.ModelBlessing()
  model.uri, blessing.uri = str(tmp_path / "model"), str(tmp_path / "blessing")
  os.makedirs(os.path.join(model.uri, "Format-Serving"))
  blessing.set_int_custom_property("blessed", int(blessed))
  pushed = standard_artifacts.PushedModel()
  pushed.uri = str(tmp_path / "pushed")
  custom_config = ('{"ai_platform_enable_vertex": true, "ai_platform_vertex_region": "%s", '
                   '"ai_platform_vertex_container_image_uri": "serving:1", '
                   '"ai_platform_serving_args": {"project": "%s", "endpoint_name": "%s", '
                   '"machine_type": "n1-standard-2", "traffic_percentage": 100}}'
                   % (REGION, PROJECT, ENDPOINT))
  executor.Executor().Do({"model": [model], "model_blessing": [blessing]},
                         {"pushed_model": [pushed]}, {"custom_config": custom_config})
  return pushed


def test_new_model_takes_the_traffic_then_older_models_are_undeployed(tmp_path, vertex):
  pushed = _push(tmp_path, blessed=True)
  assert pushed.get_string_custom_property("pushed_destination") == f"{LOCATION}/models/42"
  filter_ = f'display_name="{ENDPOINT}"'
  assert vertex.calls == [
      ("init", PROJECT, REGION), ("Endpoint.list", filter_), ("Endpoint.list", filter_),
      ("Model.upload", "serving:1"), ("deploy", 100, {"machine_type": "n1-standard-2"}),
      ("init", PROJECT, REGION), ("Endpoint.list", filter_), ("list_models",),
      ("undeploy", "1"), ("undeploy", "2")]
  assert vertex.deployed == {"3": f"{LOCATION}/models/42"}


def test_an_unblessed_model_changes_nothing(tmp_path, vertex):
  pushed = _push(tmp_path, blessed=False)
  assert not pushed.get_int_custom_property("pushed")
  assert vertex.calls == []
  assert set(vertex.deployed) == {"1", "2"}
