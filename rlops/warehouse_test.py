"""Tests of the SQLite warehouse and its training query."""
import multiprocessing
import multiprocessing.pool
import sqlite3
from typing import Optional

import numpy as np
import pytest

from rlops import warehouse

K = 4


def _prediction(i: int, event_time: Optional[float] = None, prefix: str = "r") -> dict:
  return {"request_id": f"{prefix}{i}",
          "event_time": 1000.0 + i if event_time is None else event_time,
          "observation": np.arange(K, dtype=np.float32) + i / 8, "action": i % 7,
          "propensity": 1 / (2 + i % 5), "model_version": f"v{i % 3}", "source": "test"}


def _feedback(i: int, prefix: str = "r") -> dict:
  return {"request_id": f"{prefix}{i}", "event_time": 5000.0 + i, "reward": i / 4 - 3}


def test_schema_wal_and_index(tmp_path):
  path = tmp_path / "nested" / "dir" / "warehouse.db"
  store = warehouse.Warehouse(path)
  assert store.path == str(path) and path.is_file()
  store.close()
  with sqlite3.connect(path) as connection:
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for table, columns in (("predictions", warehouse.PREDICTION_COLUMNS),
                           ("feedback", warehouse.FEEDBACK_COLUMNS)):
      info = connection.execute(f"PRAGMA table_info({table})").fetchall()
      assert tuple(column[1] for column in info) == columns
      assert all(column[3] for column in info), f"{table}: every column is NOT NULL"
      assert [column[1] for column in info if column[5]] == ["request_id"]
    indexed = connection.execute("PRAGMA index_list(predictions)").fetchall()
    indexed_columns = [connection.execute(f"PRAGMA index_info({index[1]})").fetchall()[0][2]
                       for index in indexed]
    assert "event_time" in indexed_columns
  # Reopening an existing warehouse keeps its rows.
  store = warehouse.Warehouse(path)
  store.insert_predictions([_prediction(0)])
  store.close()
  assert warehouse.Warehouse(path).insert_predictions([_prediction(0)]) == 0


def test_insert_deduplicates_by_request_id(tmp_path):
  store = warehouse.Warehouse(tmp_path / "w.db")
  assert store.insert_predictions([_prediction(i) for i in range(10)]) == 10
  assert store.insert_predictions([_prediction(i) for i in range(5, 15)]) == 5
  assert store.insert_predictions([_prediction(20), _prediction(20)]) == 1
  assert store.insert_feedback([_feedback(i) for i in range(8)]) == 8
  assert store.insert_feedback([_feedback(i) for i in range(8)]) == 0
  assert store.insert_feedback([]) == 0
  assert store.count_rewarded() == 8
  assert len(store.rewarded_records()["request_id"]) == 8


def test_join_pairs_each_reward_with_its_prediction(tmp_path):
  store = warehouse.Warehouse(tmp_path / "w.db")
  # Logged in shuffled order; feedback for 0..29 (even ids only) plus one orphan reward.
  order = np.random.default_rng(0).permutation(30)
  store.insert_predictions([_prediction(int(i)) for i in order])
  store.insert_feedback([_feedback(i) for i in range(0, 30, 2)] + [_feedback(99, prefix="orphan")])
  records = store.rewarded_records()
  ids = np.arange(0, 30, 2)
  np.testing.assert_array_equal(records["request_id"], [f"r{i}" for i in ids])
  np.testing.assert_array_equal(records["event_time"], 1000.0 + ids)
  np.testing.assert_array_equal(records["observation"],
                                np.arange(K, dtype=np.float32)[None, :] + ids[:, None] / 8)
  np.testing.assert_array_equal(records["action"], ids % 7)
  np.testing.assert_allclose(records["propensity"], 1 / (2 + ids % 5), rtol=1e-6)
  np.testing.assert_array_equal(records["model_version"], [f"v{i % 3}" for i in ids])
  np.testing.assert_array_equal(records["reward"], ids / 4 - 3)
  assert {key: value.dtype for key, value in records.items()} == {
      "request_id": object, "event_time": np.float64, "observation": np.float32,
      "action": np.int32, "propensity": np.float32, "model_version": object,
      "reward": np.float32}


def test_span_begin_inclusive_end_exclusive(tmp_path):
  store = warehouse.Warehouse(tmp_path / "w.db")
  times = [99.999, 100.0, 100.5, 199.999, 200.0, 250.0]
  store.insert_predictions([_prediction(i, event_time=t) for i, t in enumerate(times)])
  store.insert_feedback([_feedback(i) for i in range(len(times))])
  np.testing.assert_array_equal(store.rewarded_records(100.0, 200.0)["event_time"],
                                [100.0, 100.5, 199.999])
  assert store.count_rewarded(100.0, 200.0) == 3
  assert store.count_rewarded(200.0) == 2
  assert store.count_rewarded() == 6
  assert store.count_rewarded(100.0, 100.0) == 0
  empty = store.rewarded_records(300.0, 400.0)
  assert empty["observation"].shape == (0, 0) and empty["reward"].dtype == np.float32


def test_query_text_holds_literal_bounds_and_prefix():
  query = warehouse.training_query(1700000000.25, 1700003600, "`proj.ds`.")
  assert "event_time >= 1700000000.25 AND event_time < 1700003600.0" in query
  assert "FROM `proj.ds`.predictions WHERE" in query
  assert "FROM `proj.ds`.feedback) AS f ON f.request_id = p.request_id" in query
  assert query != warehouse.training_query(1700000000.25, 1700003601, "`proj.ds`.")
  assert warehouse.training_query(0, 1) == warehouse.training_query(0, 1, "").replace("`", "")
  assert "<" not in warehouse.training_query(5.0, float("inf"))
  for begin, end in ((2.0, 1.0), (float("nan"), 1.0), (0.0, float("nan")), (-float("inf"), 1.0)):
    with pytest.raises(ValueError):
      warehouse.training_query(begin, end)


def _keyless_tables(path):
  """The warehouse's tables without keys, as in BigQuery: duplicates can be stored."""
  connection = sqlite3.connect(path)
  connection.execute(f"CREATE TABLE predictions ({', '.join(warehouse.PREDICTION_COLUMNS)})")
  connection.execute(f"CREATE TABLE feedback ({', '.join(warehouse.FEEDBACK_COLUMNS)})")
  return connection


def test_training_and_count_queries_count_a_redelivered_request_once(tmp_path):
  connection = _keyless_tables(tmp_path / "bigquery-like.db")
  predictions = [warehouse.prediction_values(_prediction(i)) for i in range(3)]
  feedback = [warehouse.feedback_values(_feedback(i)) for i in range(3)]
  # r1's prediction and r2's feedback are stored twice, as two racing MERGEs would.
  connection.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [*predictions, predictions[1]])
  connection.executemany("INSERT INTO feedback VALUES (?, ?, ?)", [*feedback, feedback[2]])
  rows = connection.execute(warehouse.training_query(0.0, float("inf"))).fetchall()
  assert [row[0] for row in rows] == ["r0", "r1", "r2"]
  assert [row[-1] for row in rows] == [f[2] for f in feedback]
  assert connection.execute(warehouse.count_query(0.0, 2000.0)).fetchone() == (3, 0)
  assert connection.execute(warehouse.count_query(1001.0, 1002.0)).fetchone() == (1, 0)


def test_feedback_without_a_prediction_is_counted_apart_and_never_joined(tmp_path):
  store = warehouse.Warehouse(tmp_path / "warehouse.sqlite")
  store.insert_predictions([_prediction(i) for i in range(2)])
  store.insert_feedback([_feedback(0), {**_feedback(1), "request_id": "forged"},
                         {**_feedback(2), "request_id": "lost"}])
  assert store.count_rewarded() == 1
  assert list(store.rewarded_records()["request_id"]) == ["r0"]
  assert store.count_unmatched_feedback() == 2
  store.insert_predictions([{**_prediction(5), "request_id": "lost"}])  # Arrived late.
  assert store.count_unmatched_feedback() == 1
  store.close()


@pytest.mark.parametrize("change, problem", [
    ({"observation": None}, "observation"),
    ({"observation": []}, "observation"),
    ({"observation": "[1, 2]"}, "observation"),
    ({"observation": [1.0, "x"]}, "observation"),
    ({"observation": [[1.0, 2.0]]}, "observation"),
    ({"observation": [1.0, float("nan")]}, "observation"),
    ({"event_time": float("inf")}, "event_time"),
    ({"propensity": 0.0}, "propensity"),
    ({"propensity": float("nan")}, "propensity"),
    ({"action": 1.5}, "action"),
    ({"action": True}, "action"),
    ({"model_version": ""}, "model_version"),
    ({"source": None}, "source"),
    ({"event_time": 1e300}, "event_time"),
    ({"observation": [1.0, 1e300]}, "observation"),
    ({"action": 2**40}, "action"),
    ({"extra": 1}, "unknown field"),
])
def test_bad_prediction_rejects_whole_batch(tmp_path, change, problem):
  store = warehouse.Warehouse(tmp_path / "w.db")
  rows = [_prediction(0), {**_prediction(1), **change}, _prediction(2)]
  with pytest.raises(ValueError, match=f"request_id 'r1': {problem}"):
    store.insert_predictions(rows)
  store.insert_feedback([_feedback(i) for i in range(3)])
  assert store.count_rewarded() == 0


def test_missing_column_or_bad_feedback_rejects_whole_batch(tmp_path):
  store = warehouse.Warehouse(tmp_path / "w.db")
  missing = _prediction(1)
  del missing["propensity"], missing["source"]
  with pytest.raises(ValueError, match="request_id 'r1': missing field.*propensity, source"):
    store.insert_predictions([_prediction(0), missing])
  store.insert_predictions([_prediction(0), _prediction(1)])
  with pytest.raises(ValueError, match="request_id 'r1': reward must be a finite number"):
    store.insert_feedback([_feedback(0), {**_feedback(1), "reward": float("nan")}])
  with pytest.raises(ValueError, match="request_id 'r1': missing field.*reward"):
    store.insert_feedback([_feedback(0), {"request_id": "r1", "event_time": 1.0}])
  assert store.count_rewarded() == 0


def _write_concurrently(path: str, prefix: str, barrier) -> None:
  store = warehouse.Warehouse(path)
  barrier.wait()
  for start in range(0, 2000, 20):  # Many small transactions, interleaved with the other writer.
    store.insert_predictions([_prediction(i, prefix=prefix) for i in range(start, start + 20)])
    store.insert_feedback([_feedback(i, prefix=prefix) for i in range(start, start + 20)])
  store.close()


def test_concurrent_writers_in_two_processes(tmp_path):
  path = str(tmp_path / "w.db")
  context = multiprocessing.get_context("spawn")
  barrier = context.Barrier(2)
  writers = [context.Process(target=_write_concurrently, args=(path, prefix, barrier))
             for prefix in ("a", "b")]
  for writer in writers:
    writer.start()
  for writer in writers:
    writer.join(timeout=120)
    assert writer.exitcode == 0
  store = warehouse.Warehouse(path)
  assert store.count_rewarded() == 4000
  assert len(set(store.rewarded_records()["request_id"])) == 4000


def test_shared_by_threads(tmp_path):
  store = warehouse.Warehouse(tmp_path / "w.db")
  with multiprocessing.pool.ThreadPool(4) as pool:
    inserted = pool.map(lambda i: store.insert_predictions([_prediction(i)])
                        + store.insert_feedback([_feedback(i)]), range(200))
  assert sum(inserted) == 400 and store.count_rewarded() == 200


def test_observations_of_different_lengths_are_reported(tmp_path):
  store = warehouse.Warehouse(tmp_path / "w.db")
  store.insert_predictions([_prediction(0), {**_prediction(1), "observation": [1.0, 2.0]}])
  store.insert_feedback([_feedback(0), _feedback(1)])
  with pytest.raises(ValueError, match=f"request_id 'r1': observation of length 2, .* has {K}"):
    store.rewarded_records()
