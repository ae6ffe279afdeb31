"""The production warehouse: the `predictions` and `feedback` tables in BigQuery.

Same columns and row validation as the SQLite warehouse (`rlops.warehouse`):
observations are ARRAY<FLOAT64> here, event times FLOAT64 Unix seconds. Rows are
written by one parameterized MERGE per table and batch,

    MERGE `project.dataset.predictions` AS T
    USING (SELECT * FROM UNNEST(@rows)) AS S ON T.request_id = S.request_id
    WHEN NOT MATCHED THEN INSERT (...) VALUES (...)

so a redelivered batch inserts nothing (at-least-once delivery, de-duplicated by
request_id). One query job per batch is atomic, needs no staging table and no
load job, and leaves no rows in a streaming buffer (which DML cannot touch for
about 30 minutes). `rlops.warehouse.open_warehouse` picks this or the SQLite warehouse.
"""
import json
import math
import re
from typing import Iterable, Iterator, List, Optional, Tuple

from google.api_core import exceptions
from google.cloud import bigquery

from rlops import records
from rlops import warehouse as warehouse_lib

# BigQuery type and mode of every warehouse column.
_COLUMN_TYPES = {
    "request_id": ("STRING", "REQUIRED"),
    "event_time": ("FLOAT64", "REQUIRED"),
    "observation": ("FLOAT64", "REPEATED"),
    "action": ("INT64", "REQUIRED"),
    "propensity": ("FLOAT64", "REQUIRED"),
    "model_version": ("STRING", "REQUIRED"),
    "source": ("STRING", "REQUIRED"),
    "reward": ("FLOAT64", "REQUIRED"),
}
TABLE_COLUMNS = {"predictions": records.PREDICTION_COLUMNS,
                 "feedback": records.FEEDBACK_COLUMNS}
SCHEMAS = {table: [bigquery.SchemaField(column, *_COLUMN_TYPES[column]) for column in columns]
           for table, columns in TABLE_COLUMNS.items()}
CLUSTERING_FIELDS = ["request_id"]
# Serialized @rows of one MERGE at most: far below BigQuery's 10 MB request limit.
MAX_PARAMETER_BYTES = 2 * 2**20
# tables.get reports legacy type names whatever a table was created with.
_STANDARD_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64"}
_URI_RE = re.compile(r"bq://([a-z][a-z0-9.:-]*[a-z0-9])\.([A-Za-z0-9_]{1,1024})")


def make_client(project: str) -> bigquery.Client:
  """A BigQuery client running jobs in `project`; called on first use, never at import."""
  return bigquery.Client(project=project)


def _columns(schema: List[bigquery.SchemaField]) -> List[Tuple[str, str, bool]]:
  """(name, standard SQL type, repeated) of each field."""
  return [(field.name, _STANDARD_TYPES.get(field.field_type, field.field_type),
           field.mode == "REPEATED") for field in schema]


def ensure_tables(client: bigquery.Client, project: str, dataset: str,
                  location: Optional[str] = None) -> None:
  """Creates the dataset and both tables unless they exist; checks existing tables' columns.

  Looks first, so writers that may only read metadata (not create datasets) pass
  once the tables exist; creating tolerates a concurrent creator. The tables are
  clustered by request_id, the MERGE and join key. They are not partitioned:
  event_time is FLOAT64 Unix seconds as in SQLite, which BigQuery can neither
  time- nor range-partition.

  Raises:
    ValueError: A table exists with other columns.
  """
  try:
    client.get_dataset(f"{project}.{dataset}")
  except exceptions.NotFound:
    new_dataset = bigquery.Dataset(f"{project}.{dataset}")
    if location:  # Otherwise BigQuery's default, US.
      new_dataset.location = location
    client.create_dataset(new_dataset, exists_ok=True)
  for table_name, schema in SCHEMAS.items():
    table_id = f"{project}.{dataset}.{table_name}"
    try:
      table = client.get_table(table_id)
    except exceptions.NotFound:
      table = bigquery.Table(table_id, schema=schema)
      table.clustering_fields = CLUSTERING_FIELDS
      table = client.create_table(table, exists_ok=True)
    if _columns(table.schema) != _columns(schema):
      raise ValueError(f"{table_id} has columns {_columns(table.schema)}, "
                       f"expected {_columns(schema)}")


def _merge_sql(table_id: str, columns: Tuple[str, ...]) -> str:
  """MERGE inserting the rows of @rows whose request_id is not yet in `table_id`."""
  return (f"MERGE `{table_id}` AS T\n"
          "USING (SELECT * FROM UNNEST(@rows)) AS S\n"
          "ON T.request_id = S.request_id\n"
          "WHEN NOT MATCHED THEN\n"
          f"  INSERT ({', '.join(columns)})\n"
          f"  VALUES ({', '.join(f'S.{column}' for column in columns)})")


def _struct(columns: Tuple[str, ...], values: tuple) -> bigquery.StructQueryParameter:
  fields = []
  for column, value in zip(columns, values):
    field_type, mode = _COLUMN_TYPES[column]
    if mode == "REPEATED":  # JSON text, as `records.Prediction.values` gives it.
      fields.append(bigquery.ArrayQueryParameter(column, field_type, json.loads(value)))
    else:
      fields.append(bigquery.ScalarQueryParameter(column, field_type, value))
  return bigquery.StructQueryParameter(None, *fields)


def _batches(structs: List[bigquery.StructQueryParameter]) -> Iterator[list]:
  """Consecutive runs of `structs` of at most MAX_PARAMETER_BYTES serialized (or one struct)."""
  batch, size = [], 0
  for struct in structs:
    struct_size = len(json.dumps(struct.to_api_repr()["parameterValue"]))
    if batch and size + struct_size > MAX_PARAMETER_BYTES:
      yield batch
      batch, size = [], 0
    batch.append(struct)
    size += struct_size
  if batch:
    yield batch


class BigQueryWarehouse:
  """The warehouse in a BigQuery dataset; same writing API as `rlops.warehouse.Warehouse`."""

  def __init__(self, client: bigquery.Client, project: str, dataset: str):
    self._client = client
    self.project = project
    self.dataset = dataset

  @property
  def table_prefix(self) -> str:
    """Prefix of the tables in `rlops.warehouse.training_query`: "`project.dataset`."."""
    return f"`{self.project}.{self.dataset}`."

  def _merge(self, table: str, values: List[tuple]) -> int:
    columns = TABLE_COLUMNS[table]
    first = {}  # Within a batch too, the first row of a request_id wins, as in SQLite.
    for row in values:
      first.setdefault(row[0], row)
    structs = [_struct(columns, row) for row in first.values()]
    sql = _merge_sql(f"{self.project}.{self.dataset}.{table}", columns)
    inserted = 0
    for batch in _batches(structs):
      job_config = bigquery.QueryJobConfig(
          query_parameters=[bigquery.ArrayQueryParameter("rows", "STRUCT", batch)])
      job = self._client.query(sql, job_config=job_config)
      job.result()
      inserted += job.num_dml_affected_rows
    return inserted

  def insert_predictions(self, rows: Iterable[warehouse_lib.Row]) -> int:
    """Inserts prediction logs, ignoring request_ids already present; returns rows inserted.

    Raises:
      ValueError: A row is malformed; nothing of the batch is written.
    """
    return self.insert_prediction_values(warehouse_lib.predictions_values(rows))

  def insert_prediction_values(self, values: List[tuple]) -> int:
    """`insert_predictions` of rows already checked, as `predictions_values` gave them."""
    return self._merge("predictions", values)

  def insert_feedback(self, rows: Iterable[warehouse_lib.Row]) -> int:
    """Inserts rewards, ignoring request_ids already present; returns rows inserted.

    Raises:
      ValueError: A row is malformed; nothing of the batch is written.
    """
    return self.insert_feedback_values([warehouse_lib.feedback_values(row) for row in rows])

  def insert_feedback_values(self, values: List[tuple]) -> int:
    """`insert_feedback` of rows already checked, as `feedback_values` gave them."""
    return self._merge("feedback", values)

  def count_rewarded(self, begin: float = 0.0, end: float = math.inf) -> int:
    """Number of predictions with feedback and begin <= event_time < end."""
    sql = f"SELECT COUNT(*) FROM ({warehouse_lib.training_query(begin, end, self.table_prefix)})"
    return next(iter(self._client.query(sql).result()))[0]

  def count_unmatched_feedback(self, begin: float = 0.0, end: float = math.inf) -> int:
    """Request_ids with feedback in [begin, end) and no prediction."""
    sql = warehouse_lib.unmatched_feedback_query(begin, end, self.table_prefix)
    return next(iter(self._client.query(sql).result()))[0]

  def close(self) -> None:
    self._client.close()


def parse_uri(uri: str) -> Tuple[str, str]:
  """(project, dataset) of "bq://project.dataset"."""
  match = _URI_RE.fullmatch(uri)
  if not match:
    raise ValueError(f"a BigQuery warehouse is bq://project.dataset, got {uri!r}")
  return match.group(1), match.group(2)
