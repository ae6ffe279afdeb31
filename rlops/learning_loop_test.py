"""Tests of the in-process learning loop: it learns, drift hurts and shows, counts forget."""
import numpy as np

from rlops import learning_loop, model_io, testing
from rlops.config import AgentConfig

RULE = AgentConfig(exploration="inverse_gap", gamma_scale=5.0)


def test_loop_learns_from_its_own_logs_and_beats_uniform():
  model = testing.small_model()
  result = learning_loop.run(model, RULE, startup_samples=30, rounds=3, requests_per_round=400)
  assert result.expected_regret[-1] < result.expected_regret[0]
  users = learning_loop.served_users(model, 3, 400, seed=0)
  worlds = learning_loop.models_per_round(model, 3, None, seed=0)
  uniform = learning_loop.uniform_regret(users, worlds)
  assert result.served_regret.mean() < np.concatenate(uniform).mean() / 2
  np.testing.assert_allclose(result.cumulative_regret[-1], result.served_regret.sum())


def test_drift_permutes_rewards_and_shows_as_a_reward_shortfall():
  model = testing.small_model()
  drifted = model.drifted(seed=3)
  np.testing.assert_array_equal(np.sort(drifted.approx_ratings, axis=1),
                                np.sort(model.approx_ratings, axis=1))
  np.testing.assert_array_equal(drifted.user_vectors, model.user_vectors)
  result = learning_loop.run(model, RULE, startup_samples=300, rounds=3, requests_per_round=400,
                             drift_at_round=3)
  assert result.expected_regret[2] > 3 * result.expected_regret[1]
  assert result.reward_shortfall[2] > 0.5 > abs(result.reward_shortfall[1])
  assert learning_loop.retrainings_to_recover([0.1, 0.1, 1.0, 0.5, 0.15], 3) == 2
  assert learning_loop.retrainings_to_recover([0.1, 0.1, 1.0, 0.5], 3) is None


def test_trained_records_follow_the_forgetting_factor():
  assert learning_loop.training.trained_records(0, 5000, 4096, 1.0) == 5000
  assert learning_loop.training.trained_records(1000, 2000, 4096, 0.5) == 2500
  agent = model_io.new_agent(AgentConfig(), 10, 4)
  assert model_io.reward_shortfall(agent, np.zeros((0, 4)), np.zeros(0, int), np.zeros(0)) == 0.0
