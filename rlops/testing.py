"""Shared by tests: a small seeded MovieLens-shaped set and its bandit model, served traffic
logged in process, and the users behind logged contexts."""
import functools
import os
import time
from typing import Optional

import numpy as np

from rlops import agents, model_io, movielens, records, simulation
from rlops import warehouse as warehouse_lib


@functools.lru_cache(maxsize=None)
def small_ratings(seed: int = 0) -> movielens.Ratings:
  return movielens.generate_ratings(seed=seed, num_users=200, num_movies=60, num_ratings=6000)


@functools.lru_cache(maxsize=None)
def small_model(num_movies: int = 10, rank_k: int = 4) -> simulation.MovieLensModel:
  return simulation.MovieLensModel(small_ratings(), num_movies=num_movies, rank_k=rank_k)


def log_policy_traffic(model: simulation.MovieLensModel, serving_directory: str,
                       warehouse: warehouse_lib.Warehouse, requests: int, seed: int = 0,
                       event_time: Optional[float] = None) -> dict:
  """Serves `requests` simulated users with the newest pushed policy and logs each
  prediction (context, action, exact propensity, version) and its reward, at
  `event_time` (default: now): what the endpoint, Logger and Simulator do across
  processes, in one."""
  version = model_io.latest_version(serving_directory)
  policy = model_io.load_serving_policy(os.path.join(serving_directory, version))
  rng = np.random.default_rng(seed)
  users = rng.integers(0, model.num_users, size=requests)
  observations = model.observe(users)
  step = policy.action(agents.restart(observations), seed=seed)
  actions = step.action.numpy()
  propensities = np.exp(step.info.log_probability.numpy())
  rewards = model.reward(users, actions)
  now = time.time() if event_time is None else event_time
  ids = [records.new_request_id() for _ in range(requests)]
  warehouse.insert_predictions([
      records.Prediction(request_id=rid, event_time=now, observation=obs, action=int(action),
                         propensity=float(p), model_version=version, source="simulator")
      for rid, obs, action, p in zip(ids, observations, actions, propensities)])
  warehouse.insert_feedback([records.Feedback(request_id=rid, event_time=now, reward=float(r))
                             for rid, r in zip(ids, rewards)])
  return {"model_version": version, "requests": requests, "mean_reward": float(rewards.mean()),
          "regret": float(model.regret(users, actions).mean())}


def users_of(model: simulation.MovieLensModel, observations: np.ndarray) -> np.ndarray:
  """The user rows whose contexts the observations are (nearest, for float round trips)."""
  distances = ((observations[:, None, :] - model.user_vectors[None]) ** 2).sum(-1)
  return distances.argmin(axis=1)
