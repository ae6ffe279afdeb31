"""Trainer: trains a TF-Agents bandit agent from logged Examples, optionally warm-started."""
from typing import Optional

from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import channel
from tfx.types import component_spec
from tfx.types import standard_artifacts

from custom_components import keys
from custom_components import parameters
from custom_components.trainer import executor
from rlops.config import AgentConfig, EnvironmentConfig, section_to_json


class TrainerSpec(component_spec.ComponentSpec):
  """Trainer component spec."""
  PARAMETERS = {
      keys.AGENT_KEY: component_spec.ExecutionParameter(type=str),
      keys.ENVIRONMENT_KEY: component_spec.ExecutionParameter(type=str),
      keys.TRAIN_BATCH_SIZE_KEY: component_spec.ExecutionParameter(type=int),
      keys.EPOCHS_KEY: component_spec.ExecutionParameter(type=int),
      keys.WARM_START_KEY: component_spec.ExecutionParameter(type=int),
      keys.SPAN_KEY: component_spec.ExecutionParameter(type=int),
      keys.WINDOW_END_KEY: component_spec.ExecutionParameter(type=float),
  }
  INPUTS = {
      keys.EXAMPLES_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples),
      keys.BASE_MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model,
                                                          optional=True),
  }
  OUTPUTS = {
      keys.MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model),
      keys.MODEL_RUN_KEY: component_spec.ChannelParameter(type=standard_artifacts.ModelRun),
  }


class Trainer(base_component.BaseComponent):
  """Builds the agent and trains it on the `train` split in large batches.

  Linear agents take one pass (a second would count every record twice). With
  `base_model` and `warm_start`, training continues from the base model's agent
  checkpoint. Writes the serving policy and the checkpoint under the model's
  `Format-Serving` directory (what Pusher pushes) and TensorBoard metrics to
  `model_run`.
  """
  SPEC_CLASS = TrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, examples: channel.BaseChannel, agent: AgentConfig,
               environment: EnvironmentConfig, train_batch_size: int, epochs: int,
               warm_start: bool, span: parameters.IntParameter,
               window_end: parameters.FloatParameter,
               base_model: Optional[channel.BaseChannel] = None):
    """Constructs a Trainer.

    Args:
      examples: The Ingester's Examples (`train` split) of one window.
      agent: The agent and the exploration of its serving policy.
      environment: The bandit's shape: movies (actions) and rank (context size).
      train_batch_size: Records per agent update.
      epochs: Passes over the data (1 for linear agents).
      warm_start: Continue from `base_model` when it is the same agent and shape.
      span: The window's span number, recorded on the Model; a pipeline parameter on
        Vertex, where no ExampleGen driver records it on the Examples.
      window_end: End (Unix seconds, exclusive) of the window the examples cover,
        recorded on the Model; a pipeline parameter on Vertex.
      base_model: The latest blessed Model, from a resolver.
    """
    super().__init__(spec=TrainerSpec(
        examples=examples, base_model=base_model, agent=section_to_json(agent),
        environment=section_to_json(environment), train_batch_size=train_batch_size,
        epochs=epochs, warm_start=int(warm_start),
        span=parameters.int_or_parameter(span),
        window_end=parameters.float_or_parameter(window_end),
        model=channel.Channel(type=standard_artifacts.Model),
        model_run=channel.Channel(type=standard_artifacts.ModelRun)))
