"""Tests of the MovieLens loader, downloader and generator."""
import functools
import http.server
import io
import threading
import zipfile

import numpy as np
import pytest

from rlops import movielens

# The first lines of the real u.data.
REAL_LINES = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n" \
             b"244\t51\t2\t880606923\n166\t346\t1\t886397596\n"


def _zip_bytes(members: dict) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return buffer.getvalue()


def _check_real_lines(ratings):
  np.testing.assert_array_equal(ratings.user_ids, [196, 186, 22, 244, 166])
  np.testing.assert_array_equal(ratings.movie_ids, [242, 302, 377, 51, 346])
  np.testing.assert_array_equal(ratings.ratings, [3, 3, 1, 2, 1])
  np.testing.assert_array_equal(ratings.timestamps[:2], [881250949, 891717742])


def test_loads_udata_file_folder_and_zip(tmp_path):
  (tmp_path / "ml-100k").mkdir()
  (tmp_path / "ml-100k" / "u.data").write_bytes(REAL_LINES)
  (tmp_path / "ml-100k.zip").write_bytes(_zip_bytes({"ml-100k/u.data": REAL_LINES,
                                                     "ml-100k/README": b"readme"}))
  for path in (tmp_path / "ml-100k" / "u.data", tmp_path / "ml-100k", tmp_path,
               tmp_path / "ml-100k.zip"):
    _check_real_lines(movielens.load_ratings(path))


def test_accepts_crlf_and_blank_lines():
  raw = b"\n" + REAL_LINES.replace(b"\n", b"\r\n") + b"\n\n"
  _check_real_lines(movielens.parse_udata(raw))


def test_a_blank_line_of_tabs_is_blank():
  _check_real_lines(movielens.parse_udata(REAL_LINES + b"\t\n \t \n"))


def test_missing_final_newline():
  _check_real_lines(movielens.parse_udata(REAL_LINES.rstrip(b"\n")))


@pytest.mark.parametrize("raw, message", [
    (b"", "u.data: no ratings"),
    (b"\n \n", "u.data: no ratings"),
    (REAL_LINES + b"1\t2\t3\n", "u.data:6: expected 4 tab-separated columns"),
    (b"1\t2\t3\t4\t5\n", "u.data:1: expected 4 tab-separated columns"),
    (REAL_LINES + b"1\t\t3\t4\n", "u.data:6: expected 4 integers"),
    (b"1\t2\t3\t4\n1\tx\t3\t4\n", "u.data:2: 'x' is not a non-negative integer"),
    (b"1\t2\t3\t4\n5\t-2\t3\t4\n", "u.data:2: '-2' is not a non-negative integer"),
    (b"0\t2\t3\t4\n", "u.data:1: user id must be at least 1"),
    (b"1\t0\t3\t4\n", "u.data:1: item id must be at least 1"),
    (b"1\t2\t3\t4\n\n1\t2\t6\t4\n", "u.data:3: rating must be between 1 and 5"),
    # A stray field and an empty one on the next line: as many tokens, not in their lines.
    (b"10\t20\t3\t881250949 5\n\t4\t2\t881250950\n", "u.data:1: expected 4 integers"),
    (b"1\t2\t3\t4\n\t4\t2\t8\n", "u.data:2: expected 4 integers"),
    (b"1\t2\t3\t" + b"9" * 23 + b"\n", "u.data:1: '9{23}' is not a non-negative integer of at"),
    # Beyond int32 (which wrapped to another user) and far beyond any rating matrix.
    (b"1\t2\t3\t4\n4294967301\t1\t1\t4\n", "u.data:2: ids up to user 4294967301 and item 2"),
    (b"1\t1\t3\t4\n2\t2\t3\t4\n1\t1\t5\t9\n", "u.data:3: user 1 rated item 1 before, on "
                                                   "line 1"),
    # A vertical tab splits a field as bytes.split() does; ids whose product overflows int64.
    (b"1\t1\t1\t1\x0b1\n2\t2\t2\t2\x0b2\n", "u.data:1: expected 4 integers"),
    (b"1\t2\t3\t4\n" + b"9" * 18 + b"\t" + b"9" * 18 + b"\t3\t0\n", "u.data:2: ids up to user"),
])
def test_bad_files_name_file_and_line(tmp_path, raw, message):
  path = tmp_path / "u.data"
  path.write_bytes(raw)
  with pytest.raises(movielens.DataError, match=f"^{tmp_path!s}/{message}"):
    movielens.load_ratings(path)


def test_ids_beyond_the_declared_range():
  with pytest.raises(movielens.DataError, match="x:2: user id exceeds 943"):
    movielens.parse_udata(b"1\t2\t3\t4\n944\t2\t3\t4\n", "x", num_users=943)


def test_describe_counts_only_the_ids_with_ratings():
  stats = movielens.describe(movielens.parse_udata(
      b"1\t1\t5\t1\n1\t2\t4\t1\n1000\t1\t3\t1\n1000\t2\t2\t1\n"))
  assert (stats["users"], stats["movies"], stats["density"]) == (2, 2, 1.0)
  assert stats["ratings_per_user"] == {"min": 2, "median": 2.0, "max": 2}


def test_a_damaged_zip_or_an_oversized_file_is_a_data_error(tmp_path, monkeypatch):
  archive = _zip_bytes({"ml-100k/u.data": REAL_LINES * 50})
  damaged = bytearray(archive)
  start = archive.index(b"ml-100k/u.data") + len("ml-100k/u.data")  # The compressed data.
  damaged[start + 10:start + 30] = b"\xff" * 20
  (tmp_path / "damaged.zip").write_bytes(bytes(damaged))
  with pytest.raises(movielens.DataError, match="damaged.zip: a zip this cannot read"):
    movielens.load_ratings(tmp_path / "damaged.zip")
  monkeypatch.setattr(movielens, "MAX_UDATA_BYTES", len(REAL_LINES) - 1)
  (tmp_path / "u.data").write_bytes(REAL_LINES)
  with pytest.raises(movielens.DataError, match=f"u.data: {len(REAL_LINES)} bytes, more than"):
    movielens.load_ratings(tmp_path / "u.data")


def test_missing_paths(tmp_path):
  with pytest.raises(movielens.DataError, match="no such file"):
    movielens.load_ratings(tmp_path / "nope")
  with pytest.raises(movielens.DataError, match="no u.data in this folder"):
    movielens.load_ratings(tmp_path)
  (tmp_path / "other.zip").write_bytes(_zip_bytes({"ml-100k/u.item": b"x"}))
  with pytest.raises(movielens.DataError, match="the zip holds no u.data"):
    movielens.load_ratings(tmp_path / "other.zip")


def test_generated_set_has_movielens_shape():
  ratings = movielens.generate_ratings(seed=0)
  stats = movielens.describe(ratings)
  assert stats["ratings"] == movielens.NUM_RATINGS
  assert stats["users"] == movielens.NUM_USERS
  assert ratings.num_movies <= movielens.NUM_MOVIES and stats["movies"] > 1600
  assert stats["ratings_per_user"]["min"] >= 20
  assert stats["ratings_per_user"]["max"] > 5 * stats["ratings_per_user"]["median"]
  np.testing.assert_allclose(stats["rating_shares"], movielens.RATING_SHARES, atol=0.005)
  assert 0.05 < stats["density"] < 0.08
  # Popularity skew: the top tenth of the movies gets far more than a tenth of the ratings.
  assert stats["top_10pct_movies_share"] > 0.3
  assert ratings.timestamps.min() >= movielens.TIMESTAMP_RANGE[0]
  # No user rates the same movie twice.
  pairs = ratings.user_ids.astype(np.int64) * 10_000 + ratings.movie_ids
  assert len(np.unique(pairs)) == len(ratings)


def _top_energy(ratings, values, rank=8, movies=300):
  matrix = np.zeros((ratings.num_users, ratings.num_movies))
  matrix[ratings.user_ids - 1, ratings.movie_ids - 1] = values - values.mean()
  singular = np.linalg.svd(matrix[:, :movies], compute_uv=False)
  return (singular[:rank] ** 2).sum() / (singular ** 2).sum()


def test_generated_ratings_have_low_rank_structure():
  ratings = movielens.generate_ratings(seed=1)
  shuffled = np.random.default_rng(0).permutation(ratings.ratings).astype(float)
  structured = _top_energy(ratings, ratings.ratings.astype(float))
  assert structured > 1.5 * _top_energy(ratings, shuffled)


def test_generator_is_seeded():
  first, again, other = (movielens.generate_ratings(seed=s, num_users=50, num_movies=40,
                                                    num_ratings=1000) for s in (3, 3, 4))
  np.testing.assert_array_equal(first.ratings, again.ratings)
  np.testing.assert_array_equal(first.movie_ids, again.movie_ids)
  assert not np.array_equal(first.movie_ids, other.movie_ids)


def test_udata_round_trip():
  ratings = movielens.generate_ratings(seed=2, num_users=30, num_movies=50, num_ratings=900)
  parsed = movielens.parse_udata(ratings.to_udata())
  for field in ("user_ids", "movie_ids", "ratings", "timestamps"):
    np.testing.assert_array_equal(getattr(parsed, field), getattr(ratings, field))


class _Handler(http.server.BaseHTTPRequestHandler):

  def __init__(self, *args, files, **kwargs):
    self._files = files
    super().__init__(*args, **kwargs)

  def do_GET(self):  # pylint: disable=invalid-name
    body = self._files.get(self.path)
    self.send_response(200 if body is not None else 404)
    self.end_headers()
    self.wfile.write(body or b"not found")

  def log_message(self, *args):
    pass


@pytest.fixture
def loopback_server():
  files = {}
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                           functools.partial(_Handler, files=files))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}", files
  server.shutdown()
  server.server_close()


def test_download_from_loopback(tmp_path, loopback_server):
  url, files = loopback_server
  files["/ml-100k.zip"] = _zip_bytes({"ml-100k/u.data": REAL_LINES, "ml-100k/u.info": b"5 users"})
  path = movielens.download_movielens(tmp_path / "data", url=f"{url}/ml-100k.zip", timeout=10)
  assert path == tmp_path / "data" / "ml-100k" / "u.data"
  _check_real_lines(movielens.load_ratings(path.parent))


def test_failed_downloads_leave_nothing(tmp_path, loopback_server):
  url, files = loopback_server
  files["/not-a-zip"] = b"hello"
  files["/bad.zip"] = _zip_bytes({"ml-100k/u.data": b"1\t2\n"})
  dest = tmp_path / "data"
  with pytest.raises(movielens.DataError, match="download failed"):
    movielens.download_movielens(dest, url=f"{url}/missing.zip", timeout=10)
  with pytest.raises(movielens.DataError, match="not a zip"):
    movielens.download_movielens(dest, url=f"{url}/not-a-zip", timeout=10)
  with pytest.raises(movielens.DataError, match="expected 4 tab-separated columns"):
    movielens.download_movielens(dest, url=f"{url}/bad.zip", timeout=10)
  assert list(dest.iterdir()) == []
