"""The MovieLens contextual bandit as a TF-Agents environment (`rlops.simulation` holds the
model)."""
from typing import Optional, Tuple

import numpy as np
from tf_agents.bandits.environments import bandit_py_environment
from tf_agents.specs import array_spec

from rlops.simulation import DTYPE, MovieLensModel


def specs(num_movies: int, rank_k: int
          ) -> Tuple[array_spec.ArraySpec, array_spec.BoundedArraySpec, array_spec.ArraySpec]:
  """Observation, action and reward specs of the MovieLens bandit: float32 contexts of
  size `rank_k`, int32 actions in [0, num_movies)."""
  return (array_spec.ArraySpec((rank_k,), DTYPE, name="observation"),
          array_spec.BoundedArraySpec((), np.int32, minimum=0, maximum=num_movies - 1,
                                      name="action"),
          array_spec.ArraySpec((), DTYPE, name="reward"))


class MovieLensEnvironment(bandit_py_environment.BanditPyEnvironment):
  """Batched bandit environment on a `MovieLensModel`.

  Each observation samples `batch_size` distinct users with the environment's
  own seeded generator. As with TF-Agents' MovieLens environment,
  `compute_optimal_action/reward` refer to the users of the last step's action,
  so TF-Agents' `RegretMetric` works when called after a step.
  """

  def __init__(self, model: MovieLensModel, batch_size: int = 1, seed: Optional[int] = None,
               name: str = "movielens"):
    if not 1 <= batch_size <= model.num_users:
      raise ValueError(f"batch_size must be between 1 and {model.num_users}, got {batch_size}")
    self._model = model
    self._batch_size = batch_size
    self._rng = np.random.default_rng(seed)
    self._users = np.zeros(0, np.int64)
    self._rewarded_users = None
    super().__init__(*specs(model.num_movies, model.rank_k), name=name)

  @property
  def model(self) -> MovieLensModel:
    return self._model

  @property
  def batched(self) -> bool:
    return True

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def current_users(self) -> np.ndarray:
    """Rows of the users in the current observation."""
    return self._users

  def _observe(self) -> np.ndarray:
    self._users = self._rng.choice(self._model.num_users, size=self._batch_size, replace=False)
    return self._model.observe(self._users)

  def _apply_action(self, action: np.ndarray) -> np.ndarray:
    self._rewarded_users = self._users
    return self._model.reward(self._users, np.asarray(action, np.int64))

  def _require_step(self) -> np.ndarray:
    if self._rewarded_users is None:
      raise RuntimeError("no action has been applied yet: call step() first")
    return self._rewarded_users

  def compute_optimal_action(self) -> np.ndarray:
    return self._model.optimal_actions[self._require_step()]

  def compute_optimal_reward(self) -> np.ndarray:
    return self._model.optimal_rewards[self._require_step()]
