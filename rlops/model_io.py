"""The trained-model directory: what the Trainer writes, the Pusher copies and servers load.

    <model dir>/
      rlops_model.json   agent config (exploration rule included), dimensions, epsilon,
                         trained_records and training facts
      checkpoint/        the agent's variables (warm start, fast serving)
      policy/            TF-Agents PolicySaver SavedModel of the serving policy
"""
import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import tensorflow as tf
from tf_agents.agents import tf_agent
from tf_agents.policies import policy_saver
from tf_agents.trajectories import time_step as ts

from rlops import agents, environment
from rlops.config import AgentConfig, EnvironmentConfig

METADATA_FILE = "rlops_model.json"
CHECKPOINT_DIR = "checkpoint"
POLICY_DIR = "policy"
# Pusher's numbered version folders under its base directory.
VERSION_RE = re.compile(r"[0-9]+")


def versions(base_directory: str) -> List[str]:
  """The numbered version folders Pusher wrote under `base_directory`, oldest first."""
  names = [name for name in tf.io.gfile.listdir(base_directory)
           if VERSION_RE.fullmatch(name.rstrip("/"))]
  return sorted((name.rstrip("/") for name in names), key=int)


def latest_version(base_directory: str) -> str:
  """The newest numbered version Pusher wrote under `base_directory`."""
  found = versions(base_directory) if tf.io.gfile.isdir(base_directory) else []
  if not found:
    raise FileNotFoundError(f"no pushed model version under {base_directory}")
  return found[-1]


def new_agent(agent_config: AgentConfig, num_movies: int, rank_k: int) -> tf_agent.TFAgent:
  """An untrained agent for the MovieLens bandit of `num_movies` movies and rank `rank_k`."""
  observation_spec, action_spec, reward_spec = environment.specs(num_movies, rank_k)
  return agents.create_agent(agent_config, ts.time_step_spec(observation_spec, reward_spec),
                             action_spec)


def save(agent: tf_agent.TFAgent, agent_config: AgentConfig, num_movies: int, rank_k: int,
         directory: str, facts: Dict[str, Any]) -> Dict[str, Any]:
  """Writes the agent checkpoint, the serving policy SavedModel and the metadata; returns
  the metadata.

  Args:
    agent: The trained agent.
    agent_config: Its config, exploration rule included.
    num_movies: Arms.
    rank_k: Context size.
    directory: Where to write.
    facts: Training facts for the metadata; `trained_records` (records the
      model learnt from, across warm starts; default 0) sets the exploration;
      `model_version` (default: the save time in whole seconds, as Pusher numbers
      its versions) is what the model serves as, wherever it is copied.
  """
  tf.io.gfile.makedirs(directory)
  tf.train.Checkpoint(agent=agent).write(os.path.join(directory, CHECKPOINT_DIR, "agent"))
  facts = {"trained_records": 0.0, "model_version": str(int(time.time())), **facts}
  policy = agents.serving_policy(agent, agent_config, facts["trained_records"])
  policy_saver.PolicySaver(policy, batch_size=None).save(os.path.join(directory, POLICY_DIR))
  metadata = {"agent": dataclasses.asdict(agent_config), "num_movies": num_movies,
              "rank_k": rank_k, "epsilon": agent_config.epsilon, **facts}
  with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE), "w") as f:
    f.write(json.dumps(metadata, indent=2, sort_keys=True))
  return metadata


def read_metadata(directory: str) -> Dict[str, Any]:
  with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE)) as f:
    return json.loads(f.read())


def model_version_of(metadata: Dict[str, Any]) -> str:
  """The version a model directory serves as when served alone (as on Vertex).

  Raises:
    ValueError: The metadata records no version, or one that is not a non-empty string.
  """
  version = metadata.get("model_version")
  if not isinstance(version, str) or not version:
    raise ValueError(f"model metadata: model_version must be a non-empty string, got {version!r}")
  return version


def agent_config_of(metadata: Dict[str, Any]) -> AgentConfig:
  fields = dict(metadata["agent"])
  fields["hidden_units"] = tuple(fields["hidden_units"])
  return AgentConfig(**fields)


def validated_agent_config(metadata: Dict[str, Any]) -> AgentConfig:
  """The agent configuration of `metadata`, checked by the configuration's own validation.

  Raises:
    ValueError: The metadata is malformed or fails validation (e.g. epsilon outside
      [0, 1], a serving epsilon other than the agent's, impossible dimensions).
  """
  try:
    config = agent_config_of(metadata)
    dimensions = {name: metadata[name] for name in ("num_movies", "rank_k")}
    epsilon = metadata["epsilon"]
  except (KeyError, TypeError) as error:
    raise ValueError(f"malformed model metadata: {error!r}") from error
  for name, value in dimensions.items():
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"model metadata: {name} must be an integer, got {value!r}")
  environment = EnvironmentConfig(**dimensions)
  environment.validate()
  config.validate_for(environment)
  trained_records_of(metadata)
  if epsilon != config.epsilon:
    raise ValueError(f"model metadata: epsilon {epsilon!r} differs from the agent's "
                     f"{config.epsilon!r}")
  return config


def load_agent(directory: str) -> Tuple[tf_agent.TFAgent, Dict[str, Any]]:
  """The agent saved in `directory`, with every variable restored, and its metadata.

  Raises:
    ValueError: The metadata fails validation.
    AssertionError: The checkpoint does not hold a value for every variable of the
      agent the metadata describes (e.g. it is another agent's).
  """
  metadata = read_metadata(directory)
  config = validated_agent_config(metadata)
  agent = new_agent(config, metadata["num_movies"], metadata["rank_k"])
  status = tf.train.Checkpoint(agent=agent).read(os.path.join(directory, CHECKPOINT_DIR, "agent"))
  status.assert_existing_objects_matched()
  status.expect_partial()  # Values of objects created later (optimizer slots) may stay unread.
  return agent, metadata


def load_serving_policy(directory: str) -> agents.ExactExplorationPolicy:
  """The serving policy saved in `directory`, rebuilt from its agent checkpoint."""
  agent, metadata = load_agent(directory)
  return agents.serving_policy(agent, agent_config_of(metadata), trained_records_of(metadata))


def trained_records_of(metadata: Dict[str, Any]) -> float:
  """Records the model learnt from (older models: 0, the least trained).

  Raises:
    ValueError: Not a finite non-negative number.
  """
  records = metadata.get("trained_records", 0.0)
  if isinstance(records, bool) or not isinstance(records, (int, float)) or not (
      math.isfinite(records) and records >= 0):
    raise ValueError(f"model metadata: trained_records must be a finite non-negative number, "
                     f"got {records!r}")
  return float(records)


def reward_shortfall(agent: tf_agent.TFAgent, observations: np.ndarray, actions: np.ndarray,
                     rewards: np.ndarray) -> float:
  """Mean reward the agent predicts for the logged actions minus the mean logged reward.

  Near 0 while the model is right about what it serves; large after the
  users' preferences shift (drift).
  """
  if len(rewards) == 0:
    return 0.0
  estimates = agents.estimated_rewards_fn(agent)(tf.constant(observations, tf.float32)).numpy()
  return float(estimates[np.arange(len(actions)), actions].mean() - np.mean(rewards))


def probabilities(policy: agents.ExactExplorationPolicy, observations: np.ndarray) -> np.ndarray:
  """[n, K] exact action probabilities of `policy` for the given contexts."""
  return policy.probabilities(agents.restart(observations)).numpy()
