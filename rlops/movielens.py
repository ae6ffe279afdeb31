"""MovieLens 100K ratings: a vectorised loader, a downloader and a seeded generator.

The format is MovieLens' `u.data`: one rating per line, four tab-separated
integers `user id, item id, rating, timestamp`, ids starting at 1.
"""
import dataclasses
import functools
import io
import lzma
import os
import pathlib
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from typing import Optional, Tuple, Union

import numpy as np

NUM_USERS = 943
NUM_MOVIES = 1682
NUM_RATINGS = 100_000
DEFAULT_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# Share of ratings 1..5 in the real MovieLens 100K.
RATING_SHARES = np.array([0.0611, 0.1137, 0.2715, 0.3417, 0.2120])
# Range of the real set's timestamps (September 1997 to April 1998).
TIMESTAMP_RANGE = (874724710, 893286638)
_COLUMNS = "user id, item id, rating, timestamp"
# Largest u.data read: memory grows to about 14 times the file while it is parsed.
MAX_UDATA_BYTES = 64 << 20
# Largest rating matrix (user ids times item ids, dense): the ids index it.
MAX_MATRIX_CELLS = 10**8
# Digits of the longest integer field (int64 holds 18 digits whatever they are).
MAX_DIGITS = 18

PathLike = Union[str, os.PathLike]


class DataError(ValueError):
  """Ratings data is missing or malformed; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Ratings:
  """Ratings as parallel arrays; ids are 1-based, as in `u.data`."""
  user_ids: np.ndarray
  movie_ids: np.ndarray
  ratings: np.ndarray
  timestamps: np.ndarray
  source: str

  def __len__(self) -> int:
    return len(self.ratings)

  @property
  def num_users(self) -> int:
    return int(self.user_ids.max())

  @property
  def num_movies(self) -> int:
    return int(self.movie_ids.max())

  def to_matrix(self, num_movies: Optional[int] = None) -> np.ndarray:
    """Dense [num_users, num_movies] float32 matrix of the first movies, 0 where unrated."""
    num_movies = num_movies or self.num_movies
    keep = self.movie_ids <= num_movies
    matrix = np.zeros((self.num_users, num_movies), np.float32)
    matrix[self.user_ids[keep] - 1, self.movie_ids[keep] - 1] = self.ratings[keep]
    return matrix

  def to_udata(self) -> bytes:
    columns = np.stack([self.user_ids, self.movie_ids, self.ratings, self.timestamps], axis=1)
    buffer = io.StringIO()
    np.savetxt(buffer, columns, fmt="%d", delimiter="\t")
    return buffer.getvalue().encode()


def _bounded(size: int, source: str) -> None:
  if size > MAX_UDATA_BYTES:
    raise DataError(f"{source}: {size} bytes, more than the {MAX_UDATA_BYTES} this reads "
                    "(MovieLens 100K's u.data has about 2 MB)")


def _read_udata_bytes(path: PathLike) -> Tuple[bytes, str]:
  """Returns the bytes of u.data from a folder, a zip or the file itself."""
  path = pathlib.Path(path)
  if path.is_dir():
    for candidate in (path / "u.data", path / "ml-100k" / "u.data"):
      if candidate.is_file():
        return _read_udata_bytes(candidate)
    raise DataError(f"{path}: no u.data in this folder (nor in ml-100k/ below it)")
  if not path.is_file():
    raise DataError(f"{path}: no such file or folder")
  if zipfile.is_zipfile(path):
    try:
      with zipfile.ZipFile(path) as archive:
        members = sorted((m for m in archive.infolist() if m.filename.endswith("u.data")),
                         key=lambda member: len(member.filename))
        if not members:
          raise DataError(f"{path}: the zip holds no u.data")
        source = f"{path}!{members[0].filename}"
        _bounded(members[0].file_size, source)
        return archive.read(members[0]), source
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError,
            NotImplementedError) as error:  # Damaged, encrypted, or of a method zipfile lacks.
      raise DataError(f"{path}: a zip this cannot read ({error})") from None
  _bounded(path.stat().st_size, str(path))
  return path.read_bytes(), str(path)


def parse_udata(raw: bytes, source: str = "<bytes>",
                num_users: Optional[int] = None,
                num_movies: Optional[int] = None) -> Ratings:
  """Parses u.data bytes with vectorised NumPy; errors name `source` and the line."""
  buf = np.frombuffer(raw, np.uint8)
  newlines = np.flatnonzero(buf == ord("\n"))
  if len(buf) and buf[-1] != ord("\n"):
    newlines = np.append(newlines, len(buf))
  starts = np.concatenate([[0], newlines[:-1] + 1]).astype(np.int64)
  # What bytes.split() splits on: every ASCII white space.
  is_space = np.isin(buf, np.frombuffer(b" \t\r\n\x0b\x0c", np.uint8))
  # A line is blank when all its bytes are white space.
  non_space_per_line = np.add.reduceat(~is_space, starts) if len(buf) else np.zeros(0, int)
  kept = np.flatnonzero(non_space_per_line > 0)
  if not len(kept):
    raise DataError(f"{source}: no ratings (the file is empty)")
  line_of = functools.partial(np.searchsorted, newlines)
  tabs = np.flatnonzero(buf == ord("\t"))
  tabs_per_line = np.bincount(line_of(tabs), minlength=len(newlines))
  bad = kept[tabs_per_line[kept] != 3]
  if len(bad):
    line = int(bad[0])
    raise DataError(f"{source}:{line + 1}: expected 4 tab-separated columns ({_COLUMNS}), "
                    f"found {tabs_per_line[line] + 1}")
  # Each field one token: 4 tokens a line, and no tab next to white space (an empty field).
  token_starts = np.flatnonzero(~is_space & np.concatenate([[True], is_space[:-1]]))
  tokens_per_line = np.bincount(line_of(token_starts), minlength=len(newlines))
  empty = (tabs == 0) | is_space[tabs - 1] | is_space[np.minimum(tabs + 1, len(buf) - 1)]
  bad = np.union1d(kept[tokens_per_line[kept] != 4],
                   np.intersect1d(line_of(tabs[empty]), kept))
  if len(bad):
    line = int(bad[0])
    raise DataError(f"{source}:{line + 1}: expected 4 integers ({_COLUMNS}), one between "
                    "each pair of tabs")
  tokens = np.array(raw.split(), dtype=np.bytes_)
  not_integer = ~np.char.isdigit(tokens) | (np.char.str_len(tokens) > MAX_DIGITS)
  if not_integer.any():
    index = int(np.argmax(not_integer))
    raise DataError(f"{source}:{kept[index // 4] + 1}: "
                    f"{tokens[index][:40].decode(errors='replace')!r} "
                    f"is not a non-negative integer of at most {MAX_DIGITS} digits")
  values = tokens.astype(np.int64).reshape(-1, 4)
  checks = [
      (values[:, 0] < 1, "user id must be at least 1"),
      (values[:, 1] < 1, "item id must be at least 1"),
      ((values[:, 2] < 1) | (values[:, 2] > 5), "rating must be between 1 and 5"),
  ]
  if num_users is not None:
    checks.append((values[:, 0] > num_users, f"user id exceeds {num_users}"))
  if num_movies is not None:
    checks.append((values[:, 1] > num_movies, f"item id exceeds {num_movies}"))
  for failed, message in checks:
    if failed.any():
      row = int(np.argmax(failed))
      raise DataError(f"{source}:{kept[row] + 1}: {message} "
                      f"(line: {' '.join(map(str, values[row]))})")
  max_user, max_item = int(values[:, 0].max()), int(values[:, 1].max())
  if max_user * max_item > MAX_MATRIX_CELLS:
    row = int(np.argmax(values[:, 0].astype(np.float64) * values[:, 1]))  # No overflow.
    raise DataError(f"{source}:{kept[row] + 1}: ids up to user {max_user} and item {max_item} "
                    f"make a rating matrix of more than {MAX_MATRIX_CELLS} cells: number the "
                    "users and items from 1 without gaps")
  pairs = values[:, 0] * (max_item + 1) + values[:, 1]
  _, first, counts = np.unique(pairs, return_index=True, return_counts=True)
  if (counts > 1).any():
    pair = pairs[first[np.argmax(counts > 1)]]
    rows = np.flatnonzero(pairs == pair)[:2]
    raise DataError(f"{source}:{kept[rows[1]] + 1}: user {values[rows[0], 0]} rated item "
                    f"{values[rows[0], 1]} before, on line {kept[rows[0]] + 1}")
  return Ratings(user_ids=values[:, 0].astype(np.int32),
                 movie_ids=values[:, 1].astype(np.int32),
                 ratings=values[:, 2].astype(np.int8),
                 timestamps=values[:, 3],
                 source=source)


def load_ratings(path: PathLike, num_users: Optional[int] = None,
                 num_movies: Optional[int] = None) -> Ratings:
  """Loads ratings from an `ml-100k/` folder, its zip, or a `u.data` file."""
  raw, source = _read_udata_bytes(path)
  return parse_udata(raw, source, num_users=num_users, num_movies=num_movies)


def download_movielens(dest_dir: PathLike, url: str = DEFAULT_URL,
                       timeout: float = 60.0) -> pathlib.Path:
  """Downloads the MovieLens zip from `url` and extracts it into `dest_dir`.

  Returns the path of the extracted `u.data`. The zip is checked before it
  is extracted; a failed download leaves `dest_dir` untouched.
  """
  dest_dir = pathlib.Path(dest_dir)
  dest_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
    archive_path = pathlib.Path(tmp) / "download.zip"
    try:
      with urllib.request.urlopen(url, timeout=timeout) as response, \
           open(archive_path, "wb") as out:
        shutil.copyfileobj(response, out)
    except OSError as error:
      raise DataError(f"{url}: download failed: {error}") from error
    if not zipfile.is_zipfile(archive_path):
      raise DataError(f"{url}: the download is not a zip file")
    raw, _ = _read_udata_bytes(archive_path)
    parse_udata(raw, url)
    with zipfile.ZipFile(archive_path) as archive:
      for member in archive.infolist():
        target = (dest_dir / member.filename).resolve()
        if not str(target).startswith(str(dest_dir.resolve()) + os.sep):
          raise DataError(f"{url}: unsafe path in zip: {member.filename}")
      archive.extractall(dest_dir)
  found = sorted(dest_dir.rglob("u.data"), key=lambda p: len(p.parts))
  return found[0]


def generate_ratings(seed: int = 0, num_users: int = NUM_USERS, num_movies: int = NUM_MOVIES,
                     num_ratings: int = NUM_RATINGS, rank: int = 8,
                     noise: float = 0.6) -> Ratings:
  """Seeded MovieLens-100K-shaped ratings.

  Each user rates at least min(20, num_ratings // num_users) movies with a
  heavy-tailed activity; movies are chosen with a skewed popularity (sampling
  without replacement through the Gumbel top-k trick); scores have low-rank
  structure plus user and movie biases and noise, and are cut into 1..5 at the
  quantiles that give the real set's shares of each rating.
  """
  if num_ratings > num_users * num_movies:
    raise ValueError("more ratings than user-movie pairs")
  rng = np.random.default_rng(seed)
  min_per_user = min(20, num_ratings // num_users)
  activity = rng.lognormal(mean=0.0, sigma=0.85, size=num_users)
  extra = (num_ratings - min_per_user * num_users) * activity / activity.sum()
  counts = min_per_user + np.floor(extra).astype(np.int64)
  shortfall = num_ratings - counts.sum()
  counts[np.argsort(extra - np.floor(extra))[::-1][:shortfall]] += 1
  counts = np.minimum(counts, num_movies)

  # As in the real set, lower movie ids (older releases) are rated more often.
  log_popularity = rng.normal(0.0, 1.0, size=num_movies) - 3.0 * np.arange(num_movies) / num_movies
  keys = log_popularity[None, :] + rng.gumbel(size=(num_users, num_movies))
  order = np.argsort(-keys, axis=1)
  rated = np.zeros((num_users, num_movies), bool)
  np.put_along_axis(rated, order, np.arange(num_movies)[None, :] < counts[:, None], axis=1)
  users, movies = np.nonzero(rated)

  user_factors = rng.normal(0.0, 1.0, size=(num_users, rank)) / np.sqrt(rank)
  movie_factors = rng.normal(0.0, 1.0, size=(num_movies, rank))
  user_bias = rng.normal(0.0, 0.4, size=num_users)
  movie_bias = 0.3 * log_popularity + rng.normal(0.0, 0.3, size=num_movies)
  scores = (np.einsum("ij,ij->i", user_factors[users], movie_factors[movies])
            + user_bias[users] + movie_bias[movies] + rng.normal(0.0, noise, size=len(users)))
  thresholds = np.quantile(scores, np.cumsum(RATING_SHARES)[:-1])
  ratings = 1 + np.searchsorted(thresholds, scores)
  timestamps = rng.integers(*TIMESTAMP_RANGE, size=len(users))
  shuffle = rng.permutation(len(users))
  return Ratings(user_ids=(users[shuffle] + 1).astype(np.int32),
                 movie_ids=(movies[shuffle] + 1).astype(np.int32),
                 ratings=ratings[shuffle].astype(np.int8),
                 timestamps=timestamps[shuffle].astype(np.int64),
                 source=f"generated(seed={seed})")


def describe(ratings: Ratings) -> dict:
  """Shape, sparsity and skew statistics, to compare a set with the real MovieLens 100K."""
  # Over the users and movies with ratings: ids need not be contiguous.
  per_user = np.unique(ratings.user_ids, return_counts=True)[1]
  per_movie = np.unique(ratings.movie_ids, return_counts=True)[1]
  top_share = np.sort(per_movie)[::-1][:max(1, len(per_movie) // 10)].sum() / len(ratings)
  return {
      "source": ratings.source,
      "ratings": len(ratings),
      "users": len(per_user),
      "movies": len(per_movie),
      "density": len(ratings) / (len(per_user) * len(per_movie)),
      "rating_shares": (np.bincount(ratings.ratings, minlength=6)[1:]
                        / len(ratings)).round(4).tolist(),
      "mean_rating": float(ratings.ratings.mean()),
      "ratings_per_user": {"min": int(per_user.min()), "median": float(np.median(per_user)),
                           "max": int(per_user.max())},
      "ratings_per_movie": {"median": float(np.median(per_movie)), "max": int(per_movie.max())},
      "top_10pct_movies_share": float(top_share),
  }


def ratings_from_config(data_config) -> Ratings:
  """The ratings a `DataConfig` names: the file at its path, else generated."""
  if data_config.path:
    return load_ratings(data_config.path)
  return generate_ratings(seed=data_config.seed)
