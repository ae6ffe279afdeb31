"""The Trigger's early signal: the served reward falls below the serving model's prediction."""
import os

import numpy as np
import tensorflow as tf

from functions.trigger import main as trigger
from rlops import agents, model_io, testing, training, warehouse, workdirs
from rlops.config import AgentConfig, Config, EnvironmentConfig
from tfx_pipeline import windows


def _workdir_serving_a_model(tmp_path, model):
  config = Config(environment=EnvironmentConfig(num_movies=model.num_movies, rank_k=model.rank_k),
                  workdir=str(tmp_path))
  rng = np.random.default_rng(0)
  users = rng.integers(0, model.num_users, size=2000)
  actions = rng.integers(0, model.num_movies, size=2000).astype(np.int32)
  agent = model_io.new_agent(config.agent, model.num_movies, model.rank_k)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions))
  serving = workdirs.LocalPaths(config.workdir).serving
  model_io.save(agent, config.agent, model.num_movies, model.rank_k, os.path.join(serving, "1"),
                {"trained_records": 2000})
  return config, agent


def _served(store, model, agent, rewards_of, count=300):
  """Logs the model's greedy choices for random users, rewarded by `rewards_of`."""
  users = np.random.default_rng(1).integers(0, model.num_users, size=count)
  estimates = agents.estimated_rewards_fn(agent)(tf.constant(model.observe(users))).numpy()
  actions = estimates.argmax(axis=1)
  store.insert_predictions([
      {"request_id": f"r{i}", "event_time": 100.0 + i / 10, "observation": model.observe(users[i]),
       "action": int(actions[i]), "propensity": 1 / model.num_movies, "model_version": "1",
       "source": "test"} for i in range(count)])
  store.insert_feedback([{"request_id": f"r{i}", "event_time": 200.0,
                          "reward": float(rewards_of.reward(users[i], actions[i]))}
                         for i in range(count)])


def test_fires_on_drift_only(tmp_path):
  model = testing.small_model()
  window = windows.Window(span=1, begin=0.0, end=1000.0)
  for name, rewards_of, fires in (("same", model, False), ("drifted", model.drifted(seed=5), True)):
    config, agent = _workdir_serving_a_model(tmp_path / name, model)
    store = warehouse.Warehouse(workdirs.LocalPaths(config.workdir).warehouse)
    try:
      _served(store, model, agent, rewards_of)
      shortfall = trigger.served_reward_shortfall(config, store, window, 300)
      assert (shortfall is not None) == fires, (name, shortfall)
      assert trigger.served_reward_shortfall(config, store, window, 100) is None  # too few
      off = config.replace(agent={"drift_shortfall": None})
      assert trigger.served_reward_shortfall(off, store, window, 300) is None
    finally:
      store.close()
  assert AgentConfig().drift_shortfall == 0.5
