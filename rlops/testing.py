"""Small, fast fixtures shared by tests: a seeded MovieLens-shaped set and its bandit model."""
import functools

from rlops import movielens, simulation


@functools.lru_cache(maxsize=None)
def small_ratings(seed: int = 0) -> movielens.Ratings:
  return movielens.generate_ratings(seed=seed, num_users=200, num_movies=60, num_ratings=6000)


@functools.lru_cache(maxsize=None)
def small_model(num_movies: int = 10, rank_k: int = 4) -> simulation.MovieLensModel:
  return simulation.MovieLensModel(small_ratings(), num_movies=num_movies, rank_k=rank_k)
