"""In-process serving traffic: the pushed policy acts on simulated users; predictions and
rewards go to the warehouse. (The HTTP endpoint, Logger and Simulator functions do the same
across processes.)"""
import os
import time
import uuid

import numpy as np
import tensorflow as tf

from rlops import agents, model_io, simulation
from rlops import warehouse as warehouse_lib


def latest_version(serving_directory: str) -> str:
  """The newest numbered version Pusher wrote under `serving_directory`."""
  versions = [name for name in tf.io.gfile.listdir(serving_directory) if name.strip("/").isdigit()]
  if not versions:
    raise FileNotFoundError(f"no pushed model version under {serving_directory}")
  return max(versions, key=lambda name: int(name.strip("/"))).strip("/")


def log_policy_traffic(model: simulation.MovieLensModel, serving_directory: str,
                       warehouse: warehouse_lib.Warehouse, requests: int, seed: int = 0) -> dict:
  """Serves `requests` simulated users with the newest pushed policy and logs each
  prediction (context, action, exact propensity, version) and its reward."""
  version = latest_version(serving_directory)
  policy = model_io.load_serving_policy(os.path.join(serving_directory, version))
  rng = np.random.default_rng(seed)
  users = rng.integers(0, model.num_users, size=requests)
  observations = model.observe(users)
  step = policy.action(agents.restart(observations), seed=seed)
  actions = step.action.numpy()
  propensities = np.exp(step.info.log_probability.numpy())
  rewards = model.reward(users, actions)
  now = time.time()
  ids = [uuid.uuid4().hex for _ in range(requests)]
  warehouse.insert_predictions([
      {"request_id": rid, "event_time": now, "observation": obs.tolist(), "action": int(action),
       "propensity": float(p), "model_version": version, "source": "simulator"}
      for rid, obs, action, p in zip(ids, observations, actions, propensities)])
  warehouse.insert_feedback([{"request_id": rid, "event_time": now, "reward": float(r)}
                             for rid, r in zip(ids, rewards)])
  return {"model_version": version, "requests": requests, "mean_reward": float(rewards.mean()),
          "regret": float(model.regret(users, actions).mean())}
