"""The local warehouse: prediction logs and their feedback in one SQLite file.

The tables have the columns the BigQuery dataset has in production, so the
training query is the same text on both (see `training_query`). Observations
are JSON arrays of floats as text here and ARRAY<FLOAT64> in BigQuery;
event times are Unix seconds. WAL mode lets serving write while pipelines read.
"""
import contextlib
import itertools
import json
import math
import os
import pathlib
import sqlite3
import threading
from typing import Any, Dict, Iterable, List, Mapping, Tuple, Union

import numpy as np

from rlops import records
from rlops.records import FEEDBACK_COLUMNS, PREDICTION_COLUMNS
# The columns `training_query` selects, in order.
TRAINING_COLUMNS = ("request_id", "event_time", "observation", "action", "propensity",
                    "model_version", "reward")
BUSY_TIMEOUT_SECONDS = 30.0
# Rows of one INSERT statement: 7 columns each stay under SQLite's oldest limit of 999 variables.
ROWS_PER_STATEMENT = 100

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
      request_id TEXT PRIMARY KEY NOT NULL,
      event_time REAL NOT NULL,
      observation TEXT NOT NULL,
      action INTEGER NOT NULL,
      propensity REAL NOT NULL,
      model_version TEXT NOT NULL,
      source TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS feedback (
      request_id TEXT PRIMARY KEY NOT NULL,
      event_time REAL NOT NULL,
      reward REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS predictions_event_time ON predictions (event_time)",
)


def _literal(value: float) -> str:
  """A float as an SQL literal both SQLite and BigQuery read back exactly."""
  return repr(float(value))


def training_query(begin: float, end: float, table_prefix: str = "") -> str:
  """SQL selecting rewarded records with begin <= predictions.event_time < end.

  The predictions joined with their feedback on request_id, ordered by
  event_time and request_id, each request_id once: BigQuery enforces no keys and
  concurrent inserting MERGEs do not conflict, so a redelivered log may be stored
  twice; the first copy (by event_time) of each counts. Redelivered predictions
  carry their original event_time, so their copies fall in the same window.
  Same text for SQLite (table_prefix "") and BigQuery (table_prefix
  "`project.dataset`."). The bounds are literals on purpose: query-based
  ExampleGens have no input fingerprint, so with caching the query must change
  when its data does. An infinite `end` drops the upper bound.
  """
  if not math.isfinite(begin) or math.isnan(end) or end < begin:
    raise ValueError(f"need a finite begin <= end, got [{begin}, {end})")
  selected = ",\n  ".join(
      f"{'f' if column == 'reward' else 'p'}.{column} AS {column}" for column in TRAINING_COLUMNS)
  where = f"event_time >= {_literal(begin)}"
  if math.isfinite(end):
    where += f" AND event_time < {_literal(end)}"
  first_copy = "ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY event_time) AS copy_number"
  return (f"SELECT\n  {selected}\n"
          f"FROM (SELECT *, {first_copy}\n"
          f"      FROM {table_prefix}predictions WHERE {where}) AS p\n"
          f"JOIN (SELECT *, {first_copy}\n"
          f"      FROM {table_prefix}feedback) AS f ON f.request_id = p.request_id\n"
          "WHERE p.copy_number = 1 AND f.copy_number = 1\n"
          "ORDER BY p.event_time, p.request_id")


Row = Union[Mapping[str, Any], records.Prediction, records.Feedback]


def prediction_values(row: Row) -> tuple:
  """A prediction (record or row) as stored, in PREDICTION_COLUMNS order.

  Raises:
    ValueError: The row is malformed; the message names the request and the field.
  """
  record = row if isinstance(row, records.Prediction) else records.Prediction.from_row(row)
  return record.values()


def predictions_values(rows: Iterable[Row]) -> List[tuple]:
  """`prediction_values` of each row, in order; plain rows are checked as one batch.

  Raises:
    ValueError: A row is malformed; the message names the first such request and its field.
  """
  rows = list(rows)
  return records.plain_prediction_values(rows) or [prediction_values(row) for row in rows]


def feedback_values(row: Row) -> tuple:
  """A feedback (record or row) as stored, in FEEDBACK_COLUMNS order.

  Raises:
    ValueError: The row is malformed; the message names the request and the field.
  """
  record = row if isinstance(row, records.Feedback) else records.Feedback.from_row(row)
  return record.values()


def unmatched_feedback_query(begin: float, end: float, table_prefix: str = "") -> str:
  """SQL counting the request_ids with feedback (begin <= its event_time < end) but no
  prediction: kept apart, never joined (a forged or mistyped id, or a prediction log
  that was lost or has not arrived yet)."""
  where = f"event_time >= {_literal(begin)}"
  if math.isfinite(end):
    where += f" AND event_time < {_literal(end)}"
  return (f"SELECT COUNT(DISTINCT request_id) FROM {table_prefix}feedback WHERE {where} "
          f"AND request_id NOT IN (SELECT request_id FROM {table_prefix}predictions)")


def count_query(begin: float, end: float, table_prefix: str = "") -> str:
  """SQL of the Trigger's question on either store: `records`, the rows of
  `training_query`, and `unmatched_feedback`, as `unmatched_feedback_query`."""
  return (f"SELECT (SELECT COUNT(*) FROM ({training_query(begin, end, table_prefix)})) "
          f"AS records, ({unmatched_feedback_query(begin, end, table_prefix)}) "
          "AS unmatched_feedback")


class Warehouse:
  """The SQLite warehouse; safe to share between threads and processes.

  One connection per instance, serialised by a lock; writers in other
  processes wait up to BUSY_TIMEOUT_SECONDS for the write lock.
  """

  def __init__(self, path):
    self._path = os.fspath(path)
    pathlib.Path(self._path).parent.mkdir(parents=True, exist_ok=True)
    self._lock = threading.Lock()
    # Autocommit mode: transactions are explicit, writes take the write lock up front.
    self._connection = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_SECONDS,
                                       isolation_level=None, check_same_thread=False)
    mode = self._connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
      raise sqlite3.OperationalError(f"{self._path}: cannot switch to WAL mode (got {mode!r})")
    self._connection.execute("PRAGMA synchronous=NORMAL")
    with self._transaction() as connection:
      for statement in _SCHEMA:
        connection.execute(statement)

  @property
  def path(self) -> str:
    return self._path

  @contextlib.contextmanager
  def _transaction(self):
    """An immediate transaction: takes the write lock up front (waiting up to the busy timeout)."""
    with self._lock:
      self._connection.execute("BEGIN IMMEDIATE")
      try:
        yield self._connection
      except BaseException:
        self._connection.execute("ROLLBACK")
        raise
      self._connection.execute("COMMIT")

  def _insert(self, table: str, columns: Tuple[str, ...], values: list) -> int:
    """Inserts rows, up to ROWS_PER_STATEMENT in one statement; returns rows inserted.

    One statement for many rows, not executemany: sqlite3 releases the GIL once per
    statement step, and each release hands it to the serving thread when it waits.
    """
    if not values:
      return 0  # No transaction: a message of predictions only has no feedback.
    inserted = 0
    row = f"({', '.join('?' * len(columns))})"
    with self._transaction() as connection:
      for start in range(0, len(values), ROWS_PER_STATEMENT):
        chunk = values[start:start + ROWS_PER_STATEMENT]
        inserted += connection.execute(
            f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES "
            + ", ".join([row] * len(chunk)), list(itertools.chain.from_iterable(chunk))).rowcount
    return inserted

  def insert_predictions(self, rows: Iterable[Row]) -> int:
    """Inserts prediction logs, ignoring request_ids already present; returns rows inserted.

    Raises:
      ValueError: A row is malformed; nothing of the batch is written.
    """
    return self.insert_prediction_values(predictions_values(rows))

  def insert_prediction_values(self, values: List[tuple]) -> int:
    """`insert_predictions` of rows already checked, as `predictions_values` gave them."""
    return self._insert("predictions", PREDICTION_COLUMNS, values)

  def insert_feedback(self, rows: Iterable[Row]) -> int:
    """Inserts rewards, ignoring request_ids already present; returns rows inserted.

    Feedback may arrive before its prediction is logged: the join pairs them later.

    Raises:
      ValueError: A row is malformed; nothing of the batch is written.
    """
    return self.insert_feedback_values([feedback_values(row) for row in rows])

  def insert_feedback_values(self, values: List[tuple]) -> int:
    """`insert_feedback` of rows already checked, as `feedback_values` gave them."""
    return self._insert("feedback", FEEDBACK_COLUMNS, values)

  def _query(self, sql: str) -> list:
    with self._lock:
      return self._connection.execute(sql).fetchall()

  def count_rewarded(self, begin: float = 0.0, end: float = float("inf")) -> int:
    """Number of predictions with feedback and begin <= event_time < end."""
    return self._query(count_query(begin, end))[0][0]

  def count_unmatched_feedback(self, begin: float = 0.0, end: float = float("inf")) -> int:
    """Request_ids with feedback in [begin, end) and no prediction."""
    return self._query(unmatched_feedback_query(begin, end))[0][0]

  def rewarded_records(self, begin: float = 0.0,
                       end: float = float("inf")) -> Dict[str, np.ndarray]:
    """The rows of `training_query(begin, end)` as NumPy arrays, one per column."""
    rows = self._query(training_query(begin, end))
    observations = [json.loads(row[2]) for row in rows]
    size = len(observations[0]) if rows else 0
    for row, observation in zip(rows, observations):
      if len(observation) != size:
        raise ValueError(f"request_id {row[0]!r}: observation of length {len(observation)}, "
                         f"the first record's has {size}")
    columns = list(zip(*rows)) or [()] * len(TRAINING_COLUMNS)
    return {
        "request_id": np.array(columns[0], dtype=object),
        "event_time": np.array(columns[1], dtype=np.float64),
        "observation": np.array(observations, dtype=np.float32).reshape(len(rows), size),
        "action": np.array(columns[3], dtype=np.int32),
        "propensity": np.array(columns[4], dtype=np.float32),
        "model_version": np.array(columns[5], dtype=object),
        "reward": np.array(columns[6], dtype=np.float32),
    }

  def close(self) -> None:
    with self._lock:
      self._connection.close()


BIGQUERY_SCHEME = "bq://"


def open_warehouse(uri: str):
  """The warehouse at `uri`: "bq://project.dataset" (BigQuery, tables created if missing)
  or the path of a SQLite file."""
  if uri.startswith(BIGQUERY_SCHEME):
    from rlops import bigquery  # pylint: disable=import-outside-toplevel
    project, dataset = bigquery.parse_uri(uri)
    client = bigquery.make_client(project)
    bigquery.ensure_tables(client, project, dataset)
    return bigquery.BigQueryWarehouse(client, project, dataset)
  if "://" in uri:
    raise ValueError(f"a warehouse is bq://project.dataset or a SQLite file path, got {uri!r}")
  return Warehouse(uri)
