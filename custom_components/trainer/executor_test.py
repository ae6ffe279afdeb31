"""Tests of the Trainer executor: training from Examples, outputs, warm start."""
import os

import numpy as np
from tfx.types import channel
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from custom_components import keys
from custom_components import testing_utils
from custom_components.trainer import executor
from custom_components.trainer.component import Trainer
from rlops import model_io, testing
from rlops.config import AgentConfig, EnvironmentConfig


def _train(tmp_path, name, records, base_model=None):
  component = Trainer(examples=channel.Channel(type=standard_artifacts.Examples),
                      agent=AgentConfig(), environment=EnvironmentConfig(num_movies=10, rank_k=4),
                      train_batch_size=4096, epochs=1, warm_start=True, span=3,
                      window_end=123.0)
  examples = testing_utils.write_examples(str(tmp_path / f"examples-{name}"), {"train": records},
                                          span=3)
  model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
  model.uri, model_run.uri = str(tmp_path / f"model-{name}"), str(tmp_path / f"run-{name}")
  inputs = {keys.EXAMPLES_KEY: [examples], keys.BASE_MODEL_KEY: [base_model] if base_model else []}
  executor.Executor().Do(inputs, {keys.MODEL_KEY: [model], keys.MODEL_RUN_KEY: [model_run]},
                         component.exec_properties)
  return model, model_run


def test_trains_writes_serving_model_and_warm_starts(tmp_path):
  model_data = testing.small_model()
  first = testing_utils.logged_records(model_data, 3000, seed=0)
  second = testing_utils.logged_records(model_data, 2000, seed=1)
  model, model_run = _train(tmp_path, "first", first)
  serving = path_utils.serving_model_dir(model.uri)
  assert {"policy", "checkpoint", model_io.METADATA_FILE} <= set(os.listdir(serving))
  assert os.listdir(model_run.uri)  # TensorBoard events
  assert model.get_int_custom_property("span") == 3
  assert model_io.read_metadata(serving)["samples"] == 3000
  # The version it serves as wherever it is copied, findable in ML Metadata.
  assert model.get_string_custom_property("model_version") == model_io.model_version_of(
      model_io.read_metadata(serving))

  warm, _ = _train(tmp_path, "warm", second, base_model=model)
  agent, metadata = model_io.load_agent(path_utils.serving_model_dir(warm.uri))
  assert metadata["warm_started_from"] == serving
  assert metadata["trained_records"] == 5000  # cumulative across warm starts
  # One pass over each set: the arm's statistics are exactly those of both sets together.
  both = np.concatenate([first["observation"][first["action"] == 0],
                         second["observation"][second["action"] == 0]]).astype(np.float64)
  np.testing.assert_allclose(agent.cov_matrix[0].numpy(), both.T @ both, rtol=1e-4, atol=1e-2)
