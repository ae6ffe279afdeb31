"""Vertex Pusher: TFX's, with the rollout that undeploys the endpoint's older models."""
from tfx.dsl.components.base import executor_spec
from tfx.extensions.google_cloud_ai_platform.pusher import component as vertex_pusher_component

from custom_components.pusher import executor


class VertexPusher(vertex_pusher_component.Pusher):
  """Uploads a blessed model, deploys it to the one endpoint with all the traffic, then
  undeploys the models deployed there before (`executor.Executor`)."""

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
