"""Tests of the online and logged-data training loops."""
import numpy as np
import pytest
import tensorflow as tf

from rlops import agents, environment, testing, training
from rlops.config import AGENT_NAMES, AgentConfig


def _uniform_random_regret(model, users, seed=0):
  actions = np.random.default_rng(seed).integers(0, model.num_movies, size=len(users))
  return float(model.regret(users, actions).mean())


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_each_agent_lowers_regret(name):
  tf.keras.utils.set_random_seed(0)  # The neural agents' initial weights: a reproducible run.
  model = testing.small_model()
  env = environment.MovieLensEnvironment(model, batch_size=8, seed=0)
  config = AgentConfig(name=name)
  agent = agents.create_agent(config, env.time_step_spec(), env.action_spec())
  curve = training.train_online(agent, env, 3000, agents.exploring_action_fn(agent, config))
  first_tenth = curve.regret[:len(curve.regret) // 10].mean()
  assert curve.final_regret() < 0.7 * first_tenth
  users = np.arange(model.num_users)
  greedy = training.evaluate_policy(agents.greedy_policy(agent), model, users)
  assert greedy["regret"] < 0.5 * _uniform_random_regret(model, users)


def _logged(model, count, seed=0):
  rng = np.random.default_rng(seed)
  users = rng.integers(0, model.num_users, size=count)
  actions = rng.integers(0, model.num_movies, size=count).astype(np.int32)
  return model.observe(users), actions, model.reward(users, actions)


def test_linear_training_from_logs_is_one_exact_pass():
  model = testing.small_model()
  observations, actions, rewards = _logged(model, 5000)
  env = environment.MovieLensEnvironment(model)
  agent = agents.create_agent(AgentConfig(name="linucb"), env.time_step_spec(), env.action_spec())
  training.train_on_logged(agent, observations, actions, rewards, batch_size=1024)
  for arm in (0, model.num_movies - 1):
    chosen = observations[actions == arm].astype(np.float64)
    np.testing.assert_allclose(agent.cov_matrix[arm].numpy(), chosen.T @ chosen,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(agent.data_vector[arm].numpy(), chosen.T @ rewards[actions == arm],
                               rtol=1e-4, atol=1e-3)
  users = np.arange(model.num_users)
  greedy = training.evaluate_policy(agents.greedy_policy(agent), model, users)
  assert greedy["regret"] < 0.3 * _uniform_random_regret(model, users)
  with pytest.raises(ValueError, match="linear agents train in one pass"):
    training.train_on_logged(agent, observations, actions, rewards, epochs=2)


def test_neural_agent_learns_from_logs_in_several_epochs():
  model = testing.small_model()
  observations, actions, rewards = _logged(model, 4000, seed=1)
  env = environment.MovieLensEnvironment(model)
  agent = agents.create_agent(AgentConfig(name="neural_epsilon_greedy"), env.time_step_spec(),
                              env.action_spec())
  training.train_on_logged(agent, observations, actions, rewards, batch_size=256, epochs=5)
  users = np.arange(model.num_users)
  greedy = training.evaluate_policy(agents.greedy_policy(agent), model, users)
  assert greedy["regret"] < 0.6 * _uniform_random_regret(model, users)
