"""Trainer: trains a TF-Agents bandit agent from logged Examples, optionally warm-started."""
from typing import Optional

from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import channel
from tfx.types import component_spec
from tfx.types import standard_artifacts

from custom_components.trainer import executor
from custom_components import parameters
from rlops.config import Config


class TrainerSpec(component_spec.ComponentSpec):
  PARAMETERS = {
      "config": component_spec.ExecutionParameter(type=str),
      # End (Unix seconds, exclusive) of the logged-data window the examples cover.
      "window_end": component_spec.ExecutionParameter(type=float),
  }
  INPUTS = {
      "examples": component_spec.ChannelParameter(type=standard_artifacts.Examples),
      "base_model": component_spec.ChannelParameter(type=standard_artifacts.Model, optional=True),
  }
  OUTPUTS = {
      "model": component_spec.ChannelParameter(type=standard_artifacts.Model),
      "model_run": component_spec.ChannelParameter(type=standard_artifacts.ModelRun),
  }


class Trainer(base_component.BaseComponent):
  """Builds the agent from config and trains it on the `train` split in large batches.

  Linear agents take one pass (a second would count every record twice).
  With `base_model` (the latest blessed model, from a resolver) and
  `config.pipeline.warm_start`, training continues from its agent checkpoint.
  Writes the serving policy and the checkpoint under the model's
  `Format-Serving` directory (what Pusher pushes) and TensorBoard metrics to
  `model_run`.
  """
  SPEC_CLASS = TrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, examples: channel.BaseChannel, config: Config,
               window_end: parameters.FloatParameter,
               base_model: Optional[channel.BaseChannel] = None):
    super().__init__(spec=TrainerSpec(
        examples=examples, base_model=base_model, config=config.to_json(),
        window_end=parameters.float_or_parameter(window_end),
        model=channel.Channel(type=standard_artifacts.Model),
        model_run=channel.Channel(type=standard_artifacts.ModelRun)))
