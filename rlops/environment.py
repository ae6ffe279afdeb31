"""The MovieLens contextual bandit: a low-rank model of the ratings and a TF-Agents environment.

Context = a user's row of U·sqrt(S) from the rank-k SVD of the first
`num_movies` columns of the rating matrix; action = a movie; reward = the
approximate rating (U·S·Vᵀ) of exactly that user and that movie. float32
throughout, so the policies trained here accept what serving sends them.
"""
from typing import Optional

import numpy as np
from tf_agents.bandits.environments import bandit_py_environment
from tf_agents.specs import array_spec

from rlops import movielens

DTYPE = np.float32


class MovieLensModel:
  """Rank-k factorisation of the ratings of the first `num_movies` movies.

  Users with no rating among those movies are dropped, as in TF-Agents'
  `MovieLensPyEnvironment`; `user_ids` maps rows back to MovieLens user ids.
  """

  def __init__(self, ratings: movielens.Ratings, num_movies: int, rank_k: int):
    if not 1 <= rank_k <= num_movies:
      raise ValueError(f"rank_k must be between 1 and num_movies ({num_movies}), got {rank_k}")
    matrix = ratings.to_matrix(num_movies).astype(np.float64)
    rated = np.flatnonzero(matrix.sum(axis=1) > 0)
    if len(rated) < 2:
      raise ValueError(f"{ratings.source}: fewer than 2 users rated the first {num_movies} movies")
    matrix = matrix[rated]
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    sqrt_s = np.sqrt(s[:rank_k])
    user_vectors = u[:, :rank_k] * sqrt_s
    movie_vectors = vh[:rank_k].T * sqrt_s
    approx = user_vectors @ movie_vectors.T
    self.num_movies = num_movies
    self.rank_k = rank_k
    self.user_ids = (rated + 1).astype(np.int32)
    self.user_vectors = user_vectors.astype(DTYPE)
    self.movie_vectors = movie_vectors.astype(DTYPE)
    self.approx_ratings = approx.astype(DTYPE)
    self.optimal_actions = approx.argmax(axis=1).astype(np.int32)
    self.optimal_rewards = approx.max(axis=1).astype(DTYPE)
    self.reconstruction_rmse = float(np.sqrt(np.mean((approx - matrix) ** 2)))

  @classmethod
  def from_config(cls, config) -> "MovieLensModel":
    """The model of a validated `rlops.config.Config`."""
    return cls(movielens.ratings_from_config(config.data),
               num_movies=config.environment.num_movies, rank_k=config.environment.rank_k)

  @property
  def num_users(self) -> int:
    return len(self.user_vectors)

  def observe(self, users: np.ndarray) -> np.ndarray:
    """Contexts of the given user rows."""
    return self.user_vectors[users]

  def reward(self, users: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Approximate rating of each user for the movie chosen for that user."""
    return self.approx_ratings[users, actions]

  def regret(self, users: np.ndarray, actions: np.ndarray) -> np.ndarray:
    return self.optimal_rewards[users] - self.reward(users, actions)


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
    observation_spec = array_spec.ArraySpec((model.rank_k,), DTYPE, name="observation")
    action_spec = array_spec.BoundedArraySpec((), np.int32, minimum=0,
                                              maximum=model.num_movies - 1, name="action")
    reward_spec = array_spec.ArraySpec((), DTYPE, name="reward")
    super().__init__(observation_spec, action_spec, reward_spec, name=name)

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
