"""Evaluator executor."""
import json
import os
from typing import Any, Dict, List, Optional, Sequence

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


def _policy_report(directory: str, records: Dict[str, np.ndarray], model: simulation.MovieLensModel,
                   bootstrap_samples: int, seed: int) -> Dict[str, Any]:
  """Off-policy estimates on the logged records and the true value over all simulated users."""
  policy = model_io.load_serving_policy(directory)
  report = off_policy.estimate_policy_value(
      model_io.probabilities(policy, records["observation"]), records["observation"],
      records["action"], records["propensity"], records["reward"], num_actions=model.num_movies,
      bootstrap_samples=bootstrap_samples, seed=seed)
  every_user = model_io.probabilities(policy, model.user_vectors)
  report["oracle"] = {"value": off_policy.policy_value(every_user, model.approx_ratings)}
  report["oracle_regret"] = float(model.optimal_rewards.mean()) - report["oracle"]["value"]
  return report


def _logging_policy_report(records: Dict[str, np.ndarray], model: simulation.MovieLensModel) -> Dict[str, Any]:
  """The baseline when nothing is blessed yet: the policy that logged the data.

  Its on-policy value is the mean logged reward; the oracle value is taken for
  a uniformly random policy, the Generator's logging policy.
  """
  logged = float(records["reward"].mean())
  return {"dr": {"value": logged}, "snips": {"value": logged}, "ips": {"value": logged},
          "oracle": {"value": float(model.approx_ratings.mean())}}


def gate(candidate: Dict[str, Any], baseline: Dict[str, Any], metrics: Sequence[str],
         tolerance: float):
  """(blessed, reasons): the candidate may trail the baseline by at most `tolerance` per metric."""
  reasons = []
  for metric in metrics:
    shortfall = baseline[metric]["value"] - candidate[metric]["value"]
    verdict = "worse" if shortfall > tolerance else "ok"
    reasons.append(f"{metric}: candidate {candidate[metric]['value']:.4f} vs baseline "
                   f"{baseline[metric]['value']:.4f} ({verdict})")
  blessed = all(reason.endswith("(ok)") for reason in reasons)
  return blessed, reasons


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

    candidate_report = _policy_report(path_utils.serving_model_path(candidate.uri), records,
                                      simulated, bootstrap_samples, seed)
    if baseline is not None:
      baseline_report = _policy_report(path_utils.serving_model_path(baseline.uri), records,
                                       simulated, bootstrap_samples, seed)
      baseline_name = f"blessed model {baseline.id}"
    else:
      baseline_report = _logging_policy_report(records, simulated)
      baseline_name = "logging policy"
    blessed, reasons = gate(candidate_report, baseline_report,
                            json.loads(exec_properties[keys.GATE_METRICS_KEY]),
                            float(exec_properties[keys.GATE_TOLERANCE_KEY]))

    evaluation = artifact_utils.get_single_instance(output_dict[keys.EVALUATION_KEY])
    result = {"candidate": candidate_report, "baseline": baseline_report,
              "baseline_name": baseline_name, "blessed": blessed, "reasons": reasons,
              "span": examples_io.span_of(examples), "eval_records": int(len(records["reward"]))}
    evaluation_io.write(evaluation.uri, result)
    evaluation.set_int_custom_property("blessed", int(blessed))
    for metric in ("dr", "snips", "ips", "oracle"):
      evaluation.set_float_custom_property(f"candidate_{metric}", candidate_report[metric]["value"])

    blessing = artifact_utils.get_single_instance(output_dict[keys.BLESSING_KEY])
    io_utils.write_string_file(os.path.join(blessing.uri, constants.BLESSED_FILE_NAME
                                            if blessed else constants.NOT_BLESSED_FILE_NAME), "")
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                     constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE)
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, candidate.uri)
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, candidate.id)
    if baseline is not None:
      blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri)
      blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline.id)
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, "; ".join(reasons))
    absl.logging.info("gate: %s (%s)", "blessed" if blessed else "not blessed", "; ".join(reasons))
