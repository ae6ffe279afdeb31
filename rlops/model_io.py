"""The trained-model directory: what the Trainer writes, the Pusher copies and servers load.

    <model dir>/
      rlops_model.json   agent config, dimensions, epsilon and training facts
      checkpoint/        the agent's variables (warm start, fast serving)
      policy/            TF-Agents PolicySaver SavedModel of the serving policy
"""
import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Tuple

import numpy as np
import tensorflow as tf
from tf_agents.agents import tf_agent
from tf_agents.policies import policy_saver
from tf_agents.trajectories import time_step as ts

from rlops import agents, environment
from rlops.config import AgentConfig

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
         directory: str, facts: Dict[str, Any]) -> None:
  """Writes the agent checkpoint, the serving policy SavedModel and the metadata."""
  tf.io.gfile.makedirs(directory)
  tf.train.Checkpoint(agent=agent).write(os.path.join(directory, CHECKPOINT_DIR, "agent"))
  policy = agents.serving_policy(agent, agent_config.epsilon)
  policy_saver.PolicySaver(policy, batch_size=None).save(os.path.join(directory, POLICY_DIR))
  metadata = {"agent": dataclasses.asdict(agent_config), "num_movies": num_movies,
              "rank_k": rank_k, "epsilon": agent_config.epsilon, **facts}
  with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE), "w") as f:
    f.write(json.dumps(metadata, indent=2, sort_keys=True))


def read_metadata(directory: str) -> Dict[str, Any]:
  with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE)) as f:
    return json.loads(f.read())


def agent_config_of(metadata: Dict[str, Any]) -> AgentConfig:
  fields = dict(metadata["agent"])
  fields["hidden_units"] = tuple(fields["hidden_units"])
  return AgentConfig(**fields)


def load_agent(directory: str) -> Tuple[tf_agent.TFAgent, Dict[str, Any]]:
  """The agent saved in `directory`, with its variables restored, and its metadata."""
  metadata = read_metadata(directory)
  agent = new_agent(agent_config_of(metadata), metadata["num_movies"], metadata["rank_k"])
  tf.train.Checkpoint(agent=agent).read(
      os.path.join(directory, CHECKPOINT_DIR, "agent")).expect_partial()
  return agent, metadata


def load_serving_policy(directory: str) -> agents.ExactEpsilonGreedyPolicy:
  """The serving policy saved in `directory`, rebuilt from its agent checkpoint."""
  agent, metadata = load_agent(directory)
  return agents.serving_policy(agent, metadata["epsilon"])


def probabilities(policy: agents.ExactEpsilonGreedyPolicy, observations: np.ndarray) -> np.ndarray:
  """[n, K] exact action probabilities of `policy` for the given contexts."""
  return policy.probabilities(agents.restart(observations)).numpy()
