"""The MovieLens contextual bandit's model, in NumPy alone (the Simulator function needs no TF).

Context = a user's row of U·sqrt(S) from the rank-k SVD of the first
`num_movies` columns of the rating matrix; action = a movie; reward = the
approximate rating (U·S·Vᵀ) of exactly that user and that movie. float32
throughout, so the policies trained here accept what serving sends them.
"""
import copy

import numpy as np

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

  def drifted(self, seed: int) -> "MovieLensModel":
    """The same users after a preference shift: the movie factors are permuted at random.

    Contexts are unchanged, so a model trained before the shift keeps serving
    the same users, now with wrong reward estimates.
    """
    shifted = copy.copy(self)
    permutation = np.random.default_rng(seed).permutation(self.num_movies)
    shifted.movie_vectors = self.movie_vectors[permutation]
    shifted.approx_ratings = self.approx_ratings[:, permutation]
    shifted.optimal_actions = shifted.approx_ratings.argmax(axis=1).astype(np.int32)
    shifted.optimal_rewards = shifted.approx_ratings.max(axis=1)
    return shifted

  @classmethod
  def from_config(cls, config) -> "MovieLensModel":
    """The model of a validated `rlops.config.Config`."""
    return cls.from_sections(config.data, config.environment)

  @classmethod
  def from_sections(cls, data, environment) -> "MovieLensModel":
    """The model of a `DataConfig` and an `EnvironmentConfig`."""
    return cls(movielens.ratings_from_config(data), num_movies=environment.num_movies,
               rank_k=environment.rank_k)

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
