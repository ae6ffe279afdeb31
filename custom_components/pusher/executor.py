"""Vertex Pusher executor: TFX's upload and deploy to the one endpoint, then the rollout.

TFX 1.15's Vertex Pusher uploads the blessed model and deploys it to the endpoint
with all the traffic, but leaves the models deployed before on the endpoint, each
on its own billed replicas. Once the new model holds the traffic, this executor
undeploys the others: one model serves, replicas never pile up.
"""
from typing import Any, Dict, List

import absl.logging
from google.cloud import aiplatform
from tfx import types
from tfx.extensions.google_cloud_ai_platform import constants
from tfx.extensions.google_cloud_ai_platform.pusher import executor as vertex_pusher_executor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import json_utils


def _model_id(resource_name: str) -> str:
  """The model's id: resource names may spell the project by number or by id."""
  return resource_name.rsplit("/", 1)[-1]


class Executor(vertex_pusher_executor.Executor):
  """TFX's Vertex Pusher executor; then undeploys the endpoint's other models."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    super().Do(input_dict, output_dict, exec_properties)
    pushed_model = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not pushed_model.get_int_custom_property("pushed"):
      return
    new_model = _model_id(pushed_model.get_string_custom_property("pushed_destination"))
    custom_config = json_utils.loads(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY])
    serving_args = custom_config[constants.SERVING_ARGS_KEY]
    aiplatform.init(project=serving_args["project"],
                    location=custom_config[constants.VERTEX_REGION_KEY])
    endpoint, = aiplatform.Endpoint.list(filter=f'display_name="{serving_args["endpoint_name"]}"')
    for deployed in endpoint.list_models():
      if _model_id(deployed.model) != new_model:
        absl.logging.info("undeploying %s (model %s) from %s", deployed.id, deployed.model,
                          endpoint.resource_name)
        endpoint.undeploy(deployed_model_id=deployed.id)
