"""Tests of the MovieLens bandit model and environment."""
import functools

import numpy as np
import pytest
from tf_agents.bandits.environments import environment_utilities
from tf_agents.bandits.metrics import tf_metrics
from tf_agents.drivers import dynamic_step_driver
from tf_agents.environments import tf_py_environment
from tf_agents.policies import random_tf_policy

from rlops import environment, simulation, testing


def test_full_rank_reproduces_the_ratings_and_lower_rank_approximates():
  ratings = testing.small_ratings()
  exact = simulation.MovieLensModel(ratings, num_movies=10, rank_k=10)
  observed = ratings.to_matrix(10)[exact.user_ids - 1]
  np.testing.assert_allclose(exact.approx_ratings, observed, atol=1e-4)
  assert exact.reconstruction_rmse < 1e-5
  low = simulation.MovieLensModel(ratings, num_movies=10, rank_k=3)
  assert low.reconstruction_rmse > 0.1
  np.testing.assert_allclose(low.approx_ratings, low.user_vectors @ low.movie_vectors.T, atol=1e-4)


def test_users_without_ratings_are_dropped():
  model = testing.small_model()
  rated = (testing.small_ratings().to_matrix(10).sum(axis=1) > 0).sum()
  assert model.num_users == rated
  assert (model.approx_ratings.shape, model.user_vectors.shape) == ((rated, 10), (rated, 4))


def test_rank_must_fit():
  with pytest.raises(ValueError, match="rank_k must be between 1 and num_movies"):
    simulation.MovieLensModel(testing.small_ratings(), num_movies=5, rank_k=6)


def test_reward_is_the_approximate_rating_of_that_user_and_movie():
  model = testing.small_model()
  env = environment.MovieLensEnvironment(model, batch_size=16, seed=3)
  time_step = env.reset()
  users = env.current_users.copy()
  assert len(set(users)) == 16
  np.testing.assert_array_equal(time_step.observation, model.user_vectors[users])
  actions = np.arange(16, dtype=np.int32) % model.num_movies
  next_step = env.step(actions)
  np.testing.assert_array_equal(next_step.reward, model.approx_ratings[users, actions])
  assert next_step.observation.dtype == np.float32 and next_step.reward.dtype == np.float32
  # The oracle refers to the users who were just rewarded, not the next ones.
  np.testing.assert_array_equal(env.compute_optimal_action(), model.approx_ratings[users].argmax(1))
  np.testing.assert_array_equal(env.compute_optimal_reward(), model.approx_ratings[users].max(1))
  assert (env.compute_optimal_reward() >= next_step.reward).all()


def test_oracle_before_the_first_step_is_a_clear_error():
  env = environment.MovieLensEnvironment(testing.small_model(), batch_size=2, seed=0)
  env.reset()
  with pytest.raises(RuntimeError, match="no action has been applied yet"):
    env.compute_optimal_reward()


def test_oracle_action_has_zero_regret():
  model = testing.small_model()
  users = np.arange(model.num_users)
  np.testing.assert_allclose(model.regret(users, model.optimal_actions), 0.0)
  assert (model.regret(users, (model.optimal_actions + 1) % model.num_movies) >= 0).all()


def test_seeded_user_draws():
  model = testing.small_model()
  draws = []
  for _ in range(2):
    env = environment.MovieLensEnvironment(model, batch_size=4, seed=7)
    env.reset()
    draws.append(env.current_users.copy())
  np.testing.assert_array_equal(*draws)


def test_tf_agents_driver_and_regret_metric_accept_it():
  model = testing.small_model()
  env = tf_py_environment.TFPyEnvironment(
      environment.MovieLensEnvironment(model, batch_size=8, seed=0))
  # As TF-Agents' train_eval_movielens.py wires its own MovieLens environment.
  regret = tf_metrics.RegretMetric(functools.partial(
      environment_utilities.compute_optimal_reward_with_movielens_environment, environment=env))
  policy = random_tf_policy.RandomTFPolicy(env.time_step_spec(), env.action_spec())
  dynamic_step_driver.DynamicStepDriver(env, policy, num_steps=40, observers=[regret]).run()
  assert 0.0 < float(regret.result()) < 5.0
