"""Evaluator executor."""
import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import absl.logging
import numpy as np
from tfx import types
from tfx.components.evaluator import constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from custom_components import examples_io
from custom_components import keys
from custom_components.evaluator import evaluation as evaluation_io
from rlops import model_io
from rlops import off_policy
from rlops import simulation
from rlops.config import DataConfig, EnvironmentConfig, section_from_json


def _policy_report(probabilities: np.ndarray, every_user: np.ndarray,
                   records: Dict[str, np.ndarray], model: simulation.MovieLensModel,
                   bootstrap_samples: int, seed: int) -> Dict[str, Any]:
  """Off-policy estimates on the logged records and the true value over all simulated users."""
  report = off_policy.estimate_policy_value(
      probabilities, records["observation"], records["action"], records["propensity"],
      records["reward"], num_actions=model.num_movies, bootstrap_samples=bootstrap_samples,
      seed=seed)
  report["oracle"] = {"value": off_policy.policy_value(every_user, model.approx_ratings)}
  report["oracle_regret"] = float(model.optimal_rewards.mean()) - report["oracle"]["value"]
  return report


def _probabilities(model: types.Artifact, records: Dict[str, np.ndarray],
                   simulated: simulation.MovieLensModel) -> Tuple[np.ndarray, np.ndarray]:
  """The serving policy's exact probabilities on the logged contexts and on every user."""
  policy = model_io.load_serving_policy(path_utils.serving_model_path(model.uri))
  return (model_io.probabilities(policy, records["observation"]),
          model_io.probabilities(policy, simulated.user_vectors))


def _logging_policy_report(records: Dict[str, np.ndarray],
                           model: simulation.MovieLensModel) -> Dict[str, Any]:
  """The baseline when nothing is blessed yet: the policy that logged the data.

  Its on-policy value is the mean logged reward; the oracle value is taken for
  a uniformly random policy, the Generator's logging policy.
  """
  logged = float(records["reward"].mean())
  return {"dr": {"value": logged}, "snips": {"value": logged}, "ips": {"value": logged},
          "oracle": {"value": float(model.approx_ratings.mean())}}


@dataclasses.dataclass(frozen=True)
class Verdict:
  """The gate's decision on one metric.

  Attributes:
    metric: "dr", "snips", "ips" or "oracle".
    candidate: The candidate's value estimate.
    baseline: The baseline's value estimate.
    difference: Candidate minus baseline, estimated on the same records.
    low: Lower end of the difference's paired bootstrap interval (exact for oracle).
    high: Upper end of that interval.
    passed: False only when the whole interval lies below -tolerance: the
      candidate is then worse beyond doubt.
  """
  metric: str
  candidate: float
  baseline: float
  difference: float
  low: float
  high: float
  passed: bool

  def message(self) -> str:
    return (f"{self.metric}: candidate {self.candidate:.4f} vs baseline {self.baseline:.4f}, "
            f"difference {self.difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}] "
            f"({'ok' if self.passed else 'worse'})")


def gate(candidate: Dict[str, Any], baseline: Dict[str, Any], differences: Dict[str, Any],
         metrics: Sequence[str], tolerance: float) -> Tuple[bool, List[Verdict]]:
  """(blessed, verdicts): blessed unless, on some metric, the candidate is worse beyond doubt.

  Args:
    candidate: The candidate's report, {metric: {"value"}}.
    baseline: The baseline's report, the same shape.
    differences: {metric: {"value", "low", "high"}}, candidate minus baseline with
      its paired interval; metrics missing here (the oracle, exact) take the
      difference of the two values.
    metrics: Metrics the gate decides on.
    tolerance: Allowed shortfall, in reward units.
  """
  verdicts = []
  for metric in metrics:
    difference = differences.get(metric)
    if difference is None:
      value = candidate[metric]["value"] - baseline[metric]["value"]
      difference = {"value": value, "low": value, "high": value}
    verdicts.append(Verdict(metric=metric, candidate=candidate[metric]["value"],
                            baseline=baseline[metric]["value"], difference=difference["value"],
                            low=difference["low"], high=difference["high"],
                            passed=difference["high"] >= -tolerance))
  return all(verdict.passed for verdict in verdicts), verdicts


class Executor(evaluator_executor.Executor):
  """Evaluates the candidate and its baseline on the eval split and writes the blessing.

  Subclasses TFX's Evaluator executor only for its identity: on Vertex, the
  container entrypoint rewrites `current_model_id` into the managed-MLMD name
  that `LatestBlessedModelStrategy` matches, for Evaluator executors alone.
  """

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    data = section_from_json(DataConfig, exec_properties[keys.DATA_KEY])
    environment = section_from_json(EnvironmentConfig, exec_properties[keys.ENVIRONMENT_KEY])
    bootstrap_samples = int(exec_properties[keys.BOOTSTRAP_SAMPLES_KEY])
    seed = int(exec_properties[keys.SEED_KEY])
    examples = artifact_utils.get_single_instance(input_dict[keys.EXAMPLES_KEY])
    records = examples_io.read_split(examples, "eval", environment.rank_k)
    simulated = simulation.MovieLensModel.from_sections(data, environment)
    candidate = artifact_utils.get_single_instance(input_dict[keys.MODEL_KEY])
    baseline: Optional[types.Artifact] = (input_dict.get(keys.BASELINE_MODEL_KEY) or [None])[0]

    candidate_probabilities = _probabilities(candidate, records, simulated)
    candidate_report = _policy_report(*candidate_probabilities, records, simulated,
                                      bootstrap_samples, seed)
    if baseline is not None:
      baseline_probabilities = _probabilities(baseline, records, simulated)
      baseline_report = _policy_report(*baseline_probabilities, records, simulated,
                                       bootstrap_samples, seed)
      baseline_name = f"blessed model {baseline.id}"
    else:
      baseline_probabilities = (None, None)
      baseline_report = _logging_policy_report(records, simulated)
      baseline_name = "logging policy"
    # Candidate and baseline are compared on the same records of the newest window.
    differences = off_policy.estimate_difference(
        candidate_probabilities[0], baseline_probabilities[0], records["observation"],
        records["action"], records["propensity"], records["reward"],
        num_actions=simulated.num_movies, bootstrap_samples=bootstrap_samples, seed=seed)
    blessed, verdicts = gate(candidate_report, baseline_report, differences,
                             json.loads(exec_properties[keys.GATE_METRICS_KEY]),
                             float(exec_properties[keys.GATE_TOLERANCE_KEY]))
    reasons = [verdict.message() for verdict in verdicts]

    evaluation = artifact_utils.get_single_instance(output_dict[keys.EVALUATION_KEY])
    result = {"candidate": candidate_report, "baseline": baseline_report,
              "baseline_name": baseline_name, "blessed": blessed, "reasons": reasons,
              "differences": differences,
              "verdicts": [dataclasses.asdict(verdict) for verdict in verdicts],
              "span": examples_io.span_of(examples), "eval_records": int(len(records["reward"]))}
    evaluation_io.write(evaluation.uri, result)
    evaluation.set_int_custom_property("blessed", int(blessed))
    for metric in ("dr", "snips", "ips", "oracle"):
      evaluation.set_float_custom_property(f"candidate_{metric}", candidate_report[metric]["value"])

    blessing = artifact_utils.get_single_instance(output_dict[keys.BLESSING_KEY])
    io_utils.write_string_file(os.path.join(blessing.uri, constants.BLESSED_FILE_NAME
                                            if blessed else constants.NOT_BLESSED_FILE_NAME), "")
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                     constants.BLESSED_VALUE if blessed
                                     else constants.NOT_BLESSED_VALUE)
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY,
                                        candidate.uri)
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY,
                                     candidate.id)
    if baseline is not None:
      blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY,
                                          baseline.uri)
      blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY,
                                       baseline.id)
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY,
                                        "; ".join(reasons))
    absl.logging.info("gate: %s (%s)", "blessed" if blessed else "not blessed", "; ".join(reasons))
