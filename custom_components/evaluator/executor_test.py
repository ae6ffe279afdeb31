"""Tests of the Evaluator executor: estimates, the gate, and the blessing TFX reads."""
import os

import numpy as np
import pytest
from tfx.components.evaluator import constants
from tfx.types import channel
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from custom_components import keys
from custom_components import testing_utils
from custom_components.artifacts import PolicyEvaluation
from custom_components.evaluator import evaluation as evaluation_io
from custom_components.evaluator import executor
from custom_components.evaluator.component import Evaluator
from rlops import model_io, off_policy, simulation, training
from rlops.config import AgentConfig, Config, DataConfig, EnvironmentConfig, PipelineConfig

CONFIG = Config(data=DataConfig(seed=0), environment=EnvironmentConfig(num_movies=10, rank_k=4),
                pipeline=PipelineConfig(bootstrap_samples=50))


def _model(tmp_path, name, records, model_id):
  agent = model_io.new_agent(AgentConfig(), 10, 4)
  training.train_on_logged(agent, records["observation"], records["action"], records["reward"])
  model = standard_artifacts.Model()
  model.uri, model.id = str(tmp_path / name), model_id
  model_io.save(agent, AgentConfig(), 10, 4, path_utils.serving_model_dir(model.uri), {})
  return model


def _evaluate(tmp_path, candidate, baseline, eval_records):
  examples = testing_utils.write_examples(str(tmp_path / "examples"), {"eval": eval_records})
  evaluation, blessing = PolicyEvaluation(), standard_artifacts.ModelBlessing()
  evaluation.uri, blessing.uri = str(tmp_path / "evaluation"), str(tmp_path / "blessing")
  component = Evaluator(
      examples=channel.Channel(type=standard_artifacts.Examples),
      model=channel.Channel(type=standard_artifacts.Model), data=CONFIG.data,
      environment=CONFIG.environment, gate_metrics=CONFIG.pipeline.gate_metrics,
      gate_tolerance=CONFIG.pipeline.gate_tolerance,
      bootstrap_samples=CONFIG.pipeline.bootstrap_samples, seed=CONFIG.environment.seed)
  executor.Executor().Do(
      {keys.EXAMPLES_KEY: [examples], keys.MODEL_KEY: [candidate],
       keys.BASELINE_MODEL_KEY: [baseline] if baseline else []},
      {keys.EVALUATION_KEY: [evaluation], keys.BLESSING_KEY: [blessing]},
      component.exec_properties)
  return evaluation_io.read(evaluation.uri), blessing


def test_a_worse_candidate_is_not_blessed(tmp_path):
  model = simulation.MovieLensModel.from_config(CONFIG)  # the simulation the Evaluator knows
  good = _model(tmp_path, "good", testing_utils.logged_records(model, 3000, seed=1), model_id=7)
  shuffled = testing_utils.logged_records(model, 3000, seed=2)
  shuffled["reward"] = shuffled["reward"][::-1].copy()
  bad = _model(tmp_path, "bad", shuffled, model_id=8)
  eval_records = testing_utils.logged_records(model, 2000, seed=3)

  result, blessing = _evaluate(tmp_path / "a", good, None, eval_records)
  assert result["blessed"] and result["baseline_name"] == "logging policy"
  assert blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY) == 1
  assert blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY) == 7
  assert os.path.exists(os.path.join(blessing.uri, constants.BLESSED_FILE_NAME))
  for metric in ("ips", "snips", "dr"):
    estimate = result["candidate"][metric]
    assert estimate["low"] <= estimate["value"] <= estimate["high"]
  # On correct logs, the off-policy estimate is close to the true value.
  assert result["candidate"]["dr"]["value"] == pytest.approx(
      result["candidate"]["oracle"]["value"], abs=0.3)

  result, blessing = _evaluate(tmp_path / "b", bad, good, eval_records)
  assert not result["blessed"] and result["baseline_name"] == "blessed model 7"
  assert blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY) == 0
  assert blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY) == 7
  assert os.path.exists(os.path.join(blessing.uri, constants.NOT_BLESSED_FILE_NAME))
  dr = next(v for v in result["verdicts"] if v["metric"] == "dr")
  assert not dr["passed"] and dr["high"] < -CONFIG.pipeline.gate_tolerance


def test_gate_decides_on_the_paired_difference_interval():
  candidate = {"dr": {"value": 3.00}, "oracle": {"value": 3.5}}
  baseline = {"dr": {"value": 3.40}, "oracle": {"value": 3.5}}
  # Two point estimates 0.40 apart, but the paired interval includes no loss beyond doubt.
  uncertain = {"dr": {"value": -0.40, "low": -0.9, "high": 0.02}}
  blessed, verdicts = executor.gate(candidate, baseline, uncertain, ("dr", "oracle"),
                                    tolerance=0.05)
  assert blessed and [v.passed for v in verdicts] == [True, True]
  assert verdicts[0] == executor.Verdict("dr", 3.00, 3.40, -0.40, -0.9, 0.02, True)
  worse = {"dr": {"value": -0.40, "low": -0.6, "high": -0.2}}
  blessed, verdicts = executor.gate(candidate, baseline, worse, ("dr", "oracle"), tolerance=0.05)
  assert not blessed and [v.passed for v in verdicts] == [False, True]
  assert verdicts[0].message().endswith("(worse)")


def test_paired_difference_of_a_policy_with_itself_is_exactly_zero():
  model = simulation.MovieLensModel.from_config(CONFIG)
  records = testing_utils.logged_records(model, 500, seed=4)
  probabilities = np.full((500, 10), 0.1)
  difference = off_policy.estimate_difference(
      probabilities, probabilities, records["observation"], records["action"],
      records["propensity"], records["reward"], num_actions=10, bootstrap_samples=20)
  for metric in ("ips", "snips", "dr"):
    assert difference[metric] == {"value": 0.0, "low": 0.0, "high": 0.0}
