"""Evaluator: the gate. Off-policy value estimates of a candidate against the blessed model."""
import json
from typing import Optional, Sequence

from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import channel
from tfx.types import component_spec
from tfx.types import standard_artifacts

from custom_components import keys
from custom_components.artifacts import PolicyEvaluation
from custom_components.evaluator import executor
from rlops.config import DataConfig, EnvironmentConfig, section_to_json


class EvaluatorSpec(component_spec.ComponentSpec):
  """Evaluator component spec."""
  PARAMETERS = {
      keys.DATA_KEY: component_spec.ExecutionParameter(type=str),
      keys.ENVIRONMENT_KEY: component_spec.ExecutionParameter(type=str),
      keys.GATE_METRICS_KEY: component_spec.ExecutionParameter(type=str),
      keys.GATE_TOLERANCE_KEY: component_spec.ExecutionParameter(type=float),
      keys.BOOTSTRAP_SAMPLES_KEY: component_spec.ExecutionParameter(type=int),
      keys.SEED_KEY: component_spec.ExecutionParameter(type=int),
  }
  INPUTS = {
      keys.EXAMPLES_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples),
      keys.MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model),
      keys.BASELINE_MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model,
                                                              optional=True),
  }
  OUTPUTS = {
      keys.EVALUATION_KEY: component_spec.ChannelParameter(type=PolicyEvaluation),
      keys.BLESSING_KEY: component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
  }


class Evaluator(base_beam_component.BaseBeamComponent):
  """Estimates the candidate's value (IPS, SNIPS, doubly robust, bootstrap intervals)
  on the `eval` split, and its true value against the simulation's oracle.

  The candidate is blessed when, on every gate metric, it is not worse than the
  baseline (the latest blessed model, else the logging policy) by more than the
  tolerance. The `ModelBlessing` carries `blessed` and `current_model_id` as
  TFX's Evaluator writes them, so `LatestBlessedModelStrategy` and `Pusher` work
  unchanged.
  """
  SPEC_CLASS = EvaluatorSpec
  # A Beam executor spec because its executor derives from TFX's (Beam) Evaluator executor.
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self, examples: channel.BaseChannel, model: channel.BaseChannel,
               data: DataConfig, environment: EnvironmentConfig, gate_metrics: Sequence[str],
               gate_tolerance: float, bootstrap_samples: int, seed: int,
               baseline_model: Optional[channel.BaseChannel] = None):
    """Constructs an Evaluator.

    Args:
      examples: The Ingester's Examples; the `eval` split is estimated on.
      model: The candidate Model.
      data: Where the simulation's ratings come from (for the oracle value).
      environment: The simulated bandit (for the oracle value).
      gate_metrics: Estimates the gate compares ("dr", "snips", "ips", "oracle").
      gate_tolerance: Allowed shortfall against the baseline, in reward units.
      bootstrap_samples: Bootstrap replicates of the estimates' intervals.
      seed: Seed of the bootstrap.
      baseline_model: The latest blessed Model, from a resolver; None: the
        logging policy is the baseline.
    """
    super().__init__(spec=EvaluatorSpec(
        examples=examples, model=model, baseline_model=baseline_model,
        data=section_to_json(data), environment=section_to_json(environment),
        gate_metrics=json.dumps(list(gate_metrics)), gate_tolerance=gate_tolerance,
        bootstrap_samples=bootstrap_samples, seed=seed,
        evaluation=channel.Channel(type=PolicyEvaluation),
        blessing=channel.Channel(type=standard_artifacts.ModelBlessing)))
