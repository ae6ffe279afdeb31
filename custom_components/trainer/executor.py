"""Trainer executor."""
import time
from typing import Any, Dict, List

import absl.logging
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from custom_components import examples_io
from custom_components import keys
from rlops import model_io
from rlops import training
from rlops.config import AgentConfig, EnvironmentConfig, section_from_json


def _warm_start_source(input_dict, agent: AgentConfig, environment: EnvironmentConfig,
                       warm_start: bool):
  """The base model's serving directory when warm starting applies, else None."""
  base_models = input_dict.get(keys.BASE_MODEL_KEY) or []
  if not (base_models and warm_start):
    return None
  directory = path_utils.serving_model_path(base_models[0].uri)
  metadata = model_io.read_metadata(directory)
  same_agent = (model_io.agent_config_of(metadata).name == agent.name
                and metadata["num_movies"] == environment.num_movies
                and metadata["rank_k"] == environment.rank_k)
  if not same_agent:
    absl.logging.warning("base model %s is another agent or shape; training from scratch",
                         directory)
    return None
  return directory


class Executor(base_executor.BaseExecutor):
  """Trains the agent on the train split and writes the model."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    agent_config = section_from_json(AgentConfig, exec_properties[keys.AGENT_KEY])
    env = section_from_json(EnvironmentConfig, exec_properties[keys.ENVIRONMENT_KEY])
    batch_size = int(exec_properties[keys.TRAIN_BATCH_SIZE_KEY])
    epochs = int(exec_properties[keys.EPOCHS_KEY])
    examples = artifact_utils.get_single_instance(input_dict[keys.EXAMPLES_KEY])
    records = examples_io.read_split(examples, "train", env.rank_k)
    base_directory = _warm_start_source(input_dict, agent_config, env,
                                        bool(exec_properties[keys.WARM_START_KEY]))
    previous_records, shortfall = 0.0, None
    if base_directory:
      agent, base_metadata = model_io.load_agent(base_directory)
      previous_records = model_io.trained_records_of(base_metadata)
      shortfall = model_io.reward_shortfall(agent, records["observation"], records["action"],
                                            records["reward"])
      if agent_config.drift_shortfall is not None and shortfall > agent_config.drift_shortfall:
        # The base model is confidently wrong: explore again as a fresh model would.
        absl.logging.warning("served reward %.3f below the base model's prediction: drift; "
                             "the exploration's record count restarts", shortfall)
        previous_records = 0.0
    else:
      agent = model_io.new_agent(agent_config, env.num_movies, env.rank_k)

    model_run = artifact_utils.get_single_instance(output_dict[keys.MODEL_RUN_KEY])
    writer = tf.summary.create_file_writer(model_run.uri)
    start = time.perf_counter()
    with writer.as_default():
      loss = training.train_on_logged(
          agent, records["observation"], records["action"], records["reward"],
          batch_size=batch_size, epochs=epochs)
      seconds = time.perf_counter() - start
      samples = len(records["reward"])
      tf.summary.scalar("train/loss", loss, step=samples)
      tf.summary.scalar("train/samples_per_second", samples * epochs / seconds,
                        step=samples)
      tf.summary.scalar("train/mean_logged_reward", float(records["reward"].mean()), step=samples)
    writer.close()

    model = artifact_utils.get_single_instance(output_dict[keys.MODEL_KEY])
    span = int(exec_properties[keys.SPAN_KEY])
    window_end = float(exec_properties[keys.WINDOW_END_KEY])
    forgetting = agent_config.forgetting if agent_config.is_linear else 1.0
    trained_records = training.trained_records(previous_records, samples, batch_size, forgetting)
    metadata = model_io.save(
        agent, agent_config, env.num_movies, env.rank_k, path_utils.serving_model_dir(model.uri),
        {"span": span, "window_end": window_end, "samples": samples, "loss": loss,
         "trained_records": trained_records, "reward_shortfall": shortfall,
         "warm_started_from": base_directory})
    model.set_string_custom_property("model_version", metadata["model_version"])
    model.set_int_custom_property("span", span)
    model.set_float_custom_property("window_end", window_end)
    model.set_int_custom_property("samples", samples)
    model.set_float_custom_property("trained_records", trained_records)
    model.set_string_custom_property("agent", agent_config.name)
    model.set_string_custom_property("warm_started_from", base_directory or "")
    absl.logging.info("trained %s on %d records of span %d in %.2f s (warm start: %s)",
                      agent_config.name, samples, span, seconds, base_directory)
