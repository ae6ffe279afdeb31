"""Evaluator: the gate. Off-policy value estimates of a candidate against the blessed model."""
from typing import Optional

from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import channel
from tfx.types import component_spec
from tfx.types import standard_artifacts

from custom_components.artifacts import PolicyEvaluation
from custom_components.evaluator import executor
from rlops.config import Config


class EvaluatorSpec(component_spec.ComponentSpec):
  PARAMETERS = {"config": component_spec.ExecutionParameter(type=str)}
  INPUTS = {
      "examples": component_spec.ChannelParameter(type=standard_artifacts.Examples),
      "model": component_spec.ChannelParameter(type=standard_artifacts.Model),
      "baseline_model": component_spec.ChannelParameter(type=standard_artifacts.Model,
                                                        optional=True),
  }
  OUTPUTS = {
      "evaluation": component_spec.ChannelParameter(type=PolicyEvaluation),
      "blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
  }


class Evaluator(base_beam_component.BaseBeamComponent):
  """Estimates the candidate's value (IPS, SNIPS, doubly robust, bootstrap intervals)
  on the `eval` split, and its true value against the simulation's oracle.

  The candidate is blessed when, on every metric of
  `config.pipeline.gate_metrics`, it is not worse than the baseline (the latest
  blessed model, else the logging policy) by more than the tolerance. The
  `ModelBlessing` carries `blessed` and `current_model_id` as TFX's Evaluator
  writes them, so `LatestBlessedModelStrategy` and `Pusher` work unchanged.
  """
  SPEC_CLASS = EvaluatorSpec
  # A Beam executor spec because its executor derives from TFX's (Beam) Evaluator executor.
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self, examples: channel.BaseChannel, model: channel.BaseChannel, config: Config,
               baseline_model: Optional[channel.BaseChannel] = None):
    super().__init__(spec=EvaluatorSpec(
        examples=examples, model=model, baseline_model=baseline_model, config=config.to_json(),
        evaluation=channel.Channel(type=PolicyEvaluation),
        blessing=channel.Channel(type=standard_artifacts.ModelBlessing)))
