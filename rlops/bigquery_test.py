"""Tests of the BigQuery warehouse against a fake of the BigQuery client (the network edge)."""
import collections
import contextlib
import math
import re
import sqlite3
import threading

import pytest
from google.api_core import exceptions
from google.cloud import bigquery as bigquery_lib

from rlops import bigquery
from rlops import warehouse as warehouse_lib

PROJECT, DATASET = "rlops-test", "rlops_logs"
URI = f"bq://{PROJECT}.{DATASET}"


class FakeJob:

  def __init__(self, rows=(), num_dml_affected_rows=None):
    self._rows = list(rows)
    self.num_dml_affected_rows = num_dml_affected_rows

  def result(self):
    return self._rows


class FakeClient:
  """Stands in for `google.cloud.bigquery.Client`; records each request as it goes on the wire.

  `requests` holds (method, API representation, ...) tuples. Datasets and tables
  exist once created. A MERGE inserts the request_ids of @rows it has not seen
  for that table, as BigQuery would; other queries run on the SQLite file
  `sqlite_path` attached as "`project.dataset`".
  """

  def __init__(self, sqlite_path=None):
    self.requests = []
    self.closed = False
    self._sqlite_path = sqlite_path
    self._resources = {}
    self._merged = collections.defaultdict(set)
    self._lock = threading.Lock()

  def _get(self, method, resource_id):
    with self._lock:
      self.requests.append((method, resource_id))
      if resource_id not in self._resources:
        raise exceptions.NotFound(f"Not found: {resource_id}")
      return self._resources[resource_id]

  def _create(self, method, resource, resource_id, exists_ok):
    with self._lock:
      self.requests.append((method, resource.to_api_repr(), exists_ok))
      if resource_id in self._resources and not exists_ok:
        raise exceptions.Conflict(f"Already exists: {resource_id}")
      return self._resources.setdefault(resource_id, resource)

  def get_dataset(self, dataset_id):
    return self._get("get_dataset", dataset_id)

  def create_dataset(self, dataset, exists_ok=False):
    return self._create("create_dataset", dataset, f"{dataset.project}.{dataset.dataset_id}",
                        exists_ok)

  def get_table(self, table_id):
    return self._get("get_table", table_id)

  def create_table(self, table, exists_ok=False):
    return self._create("create_table", table,
                        f"{table.project}.{table.dataset_id}.{table.table_id}", exists_ok)

  def query(self, sql, job_config=None):
    with self._lock:
      self.requests.append(("query", sql, job_config.to_api_repr() if job_config else None))
      merge = re.match(r"MERGE `([^`]+)`", sql)
      if merge:
        rows, = job_config.query_parameters
        ids = {struct.struct_values["request_id"] for struct in rows.values}
        new = ids - self._merged[merge.group(1)]
        self._merged[merge.group(1)] |= new
        return FakeJob(num_dml_affected_rows=len(new))
    with contextlib.closing(sqlite3.connect(":memory:")) as connection:
      connection.execute(f'ATTACH DATABASE ? AS "{PROJECT}.{DATASET}"', (self._sqlite_path,))
      return FakeJob(connection.execute(sql).fetchall())

  def close(self):
    self.closed = True


def _decode(value, value_type):
  if value_type["type"] == "ARRAY":
    return [_decode(item, value_type["arrayType"]) for item in value["arrayValues"]]
  return {"INT64": int, "FLOAT64": float, "STRING": str}[value_type["type"]](value["value"])


def merged_rows(client: FakeClient):
  """{table id: [row dict, ...]} of every MERGE request, decoded from its wire form."""
  rows = collections.defaultdict(list)
  for request in client.requests:
    if request[0] == "query" and request[1].startswith("MERGE"):
      _, sql, job = request
      parameter, = job["query"]["queryParameters"]
      types = {field["name"]: field["type"]
               for field in parameter["parameterType"]["arrayType"]["structTypes"]}
      for struct in parameter["parameterValue"]["arrayValues"]:
        rows[re.match(r"MERGE `([^`]+)`", sql).group(1)].append(
            {name: _decode(value, types[name]) for name, value in struct["structValues"].items()})
  return rows


def _prediction(i):
  return {"request_id": f"r{i}", "event_time": 1000.0 + i / 3,
          "observation": [0.1 * i, -1 / 3, 2.5], "action": i % 5, "propensity": 0.2,
          "model_version": "7", "source": "endpoint"}


def _feedback(i):
  return {"request_id": f"r{i}", "event_time": 2000.0 + i, "reward": i / 7}


def test_schemas_have_the_sqlite_tables_columns(tmp_path):
  store = warehouse_lib.Warehouse(tmp_path / "w.sqlite")
  store.close()
  with sqlite3.connect(tmp_path / "w.sqlite") as connection:
    for table, schema in bigquery.SCHEMAS.items():
      sqlite_columns = [column[1] for column in connection.execute(f"PRAGMA table_info({table})")]
      assert [field.name for field in schema] == sqlite_columns
  assert [(f.name, f.field_type, f.mode) for f in bigquery.SCHEMAS["predictions"]] == [
      ("request_id", "STRING", "REQUIRED"), ("event_time", "FLOAT64", "REQUIRED"),
      ("observation", "FLOAT64", "REPEATED"), ("action", "INT64", "REQUIRED"),
      ("propensity", "FLOAT64", "REQUIRED"), ("model_version", "STRING", "REQUIRED"),
      ("source", "STRING", "REQUIRED")]
  assert [(f.name, f.field_type, f.mode) for f in bigquery.SCHEMAS["feedback"]] == [
      ("request_id", "STRING", "REQUIRED"), ("event_time", "FLOAT64", "REQUIRED"),
      ("reward", "FLOAT64", "REQUIRED")]


def _table_request(table):
  fields = [{"name": f.name, "type": f.field_type, "mode": f.mode} for f in bigquery.SCHEMAS[table]]
  return ("create_table", {
      "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": table},
      "labels": {}, "schema": {"fields": fields}, "clustering": {"fields": ["request_id"]}}, True)


# ensure_tables on an empty project, then once everything exists.
ENSURE_REQUESTS = [
    ("get_dataset", f"{PROJECT}.{DATASET}"),
    ("create_dataset", {"datasetReference": {"projectId": PROJECT, "datasetId": DATASET},
                        "labels": {}}, True),
    ("get_table", f"{PROJECT}.{DATASET}.predictions"),
    _table_request("predictions"),
    ("get_table", f"{PROJECT}.{DATASET}.feedback"),
    _table_request("feedback"),
]
EXISTING_REQUESTS = [("get_dataset", f"{PROJECT}.{DATASET}"),
                     ("get_table", f"{PROJECT}.{DATASET}.predictions"),
                     ("get_table", f"{PROJECT}.{DATASET}.feedback")]


def test_ensure_tables_creates_dataset_and_clustered_tables_idempotently():
  client = FakeClient()
  bigquery.ensure_tables(client, PROJECT, DATASET)
  bigquery.ensure_tables(client, PROJECT, DATASET)
  assert client.requests == ENSURE_REQUESTS + EXISTING_REQUESTS


def test_ensure_tables_creates_the_dataset_in_the_given_location():
  client = FakeClient()
  bigquery.ensure_tables(client, PROJECT, DATASET, location="europe-west4")
  assert client.requests[1] == ("create_dataset", {
      "datasetReference": {"projectId": PROJECT, "datasetId": DATASET}, "labels": {},
      "location": "europe-west4"}, True)


def test_ensure_tables_accepts_existing_tables_as_bigquery_reports_them():
  client = FakeClient()
  client.create_dataset(bigquery_lib.Dataset(f"{PROJECT}.{DATASET}"))
  for table, schema in bigquery.SCHEMAS.items():
    # Legacy type names, modes left NULLABLE (e.g. made by `bq mk`): same columns.
    reported = [bigquery_lib.SchemaField(
        f.name, {"INT64": "INTEGER", "FLOAT64": "FLOAT"}.get(f.field_type, f.field_type),
        "REPEATED" if f.mode == "REPEATED" else "NULLABLE") for f in schema]
    client.create_table(bigquery_lib.Table(f"{PROJECT}.{DATASET}.{table}", schema=reported))
  del client.requests[:]
  bigquery.ensure_tables(client, PROJECT, DATASET)
  assert client.requests == EXISTING_REQUESTS


def test_ensure_tables_rejects_an_existing_table_with_other_columns():
  client = FakeClient()
  client.create_table(bigquery_lib.Table(f"{PROJECT}.{DATASET}.predictions",
                                         schema=bigquery.SCHEMAS["feedback"]))
  with pytest.raises(ValueError, match="rlops_logs.predictions has columns"):
    bigquery.ensure_tables(client, PROJECT, DATASET)


PREDICTIONS_MERGE = f"""MERGE `{PROJECT}.{DATASET}.predictions` AS T
USING (SELECT * FROM UNNEST(@rows)) AS S
ON T.request_id = S.request_id
WHEN NOT MATCHED THEN
  INSERT (request_id, event_time, observation, action, propensity, model_version, source)
  VALUES (S.request_id, S.event_time, S.observation, S.action, S.propensity, \
S.model_version, S.source)"""
FEEDBACK_MERGE = f"""MERGE `{PROJECT}.{DATASET}.feedback` AS T
USING (SELECT * FROM UNNEST(@rows)) AS S
ON T.request_id = S.request_id
WHEN NOT MATCHED THEN
  INSERT (request_id, event_time, reward)
  VALUES (S.request_id, S.event_time, S.reward)"""


def _rows_parameter(struct_types, rows):
  return {"query": {"parameterMode": "NAMED", "queryParameters": [{
      "name": "rows",
      "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRUCT", "structTypes": [
          {"name": name, "type": field_type} for name, field_type in struct_types]}},
      "parameterValue": {"arrayValues": [{"structValues": row} for row in rows]}}]}}


def test_inserts_are_one_merge_per_table_with_the_rows_as_a_typed_parameter():
  client = FakeClient()
  store = bigquery.BigQueryWarehouse(client, PROJECT, DATASET)
  first = _prediction(1)
  # A redelivered row in the same batch: the first one wins, as in SQLite.
  assert store.insert_predictions([first, dict(first, action=4), _prediction(2)]) == 2
  assert store.insert_feedback([_feedback(1)]) == 1
  assert store.insert_predictions([first]) == 0  # At-least-once delivery: nothing new.
  assert store.insert_feedback([]) == 0  # Nothing to send.

  float_array = {"type": "ARRAY", "arrayType": {"type": "FLOAT64"}}
  prediction_types = [("request_id", {"type": "STRING"}), ("event_time", {"type": "FLOAT64"}),
                      ("observation", float_array), ("action", {"type": "INT64"}),
                      ("propensity", {"type": "FLOAT64"}), ("model_version", {"type": "STRING"}),
                      ("source", {"type": "STRING"})]

  def prediction_value(i):
    row = _prediction(i)
    return {"request_id": {"value": row["request_id"]}, "event_time": {"value": row["event_time"]},
            "observation": {"arrayValues": [{"value": x} for x in row["observation"]]},
            "action": {"value": str(row["action"])}, "propensity": {"value": 0.2},
            "model_version": {"value": "7"}, "source": {"value": "endpoint"}}

  assert client.requests == [
      ("query", PREDICTIONS_MERGE,
       _rows_parameter(prediction_types, [prediction_value(1), prediction_value(2)])),
      ("query", FEEDBACK_MERGE, _rows_parameter(
          [("request_id", {"type": "STRING"}), ("event_time", {"type": "FLOAT64"}),
           ("reward", {"type": "FLOAT64"})],
          [{"request_id": {"value": "r1"}, "event_time": {"value": 2001.0},
            "reward": {"value": 1 / 7}}])),
      ("query", PREDICTIONS_MERGE, _rows_parameter(prediction_types, [prediction_value(1)])),
  ]
  # Floats cross the wire exactly.
  assert merged_rows(client)[f"{PROJECT}.{DATASET}.predictions"][0] == _prediction(1)


@pytest.mark.parametrize("bad, problem", [
    ({"propensity": 0.0}, "propensity must be positive"),
    ({"observation": [1.0, float("nan")]}, "observation must be"),
    ({"action": True}, "action must be"),
    ({"source": ""}, "source must be"),
])
def test_a_malformed_row_sends_nothing(bad, problem):
  client = FakeClient()
  store = bigquery.BigQueryWarehouse(client, PROJECT, DATASET)
  with pytest.raises(ValueError, match=problem):
    store.insert_predictions([_prediction(1), dict(_prediction(2), **bad)])
  with pytest.raises(ValueError, match="missing field"):
    store.insert_feedback([{"request_id": "r1", "reward": 1.0}])
  assert not client.requests


def test_large_batches_are_split_into_several_merges(monkeypatch):
  monkeypatch.setattr(bigquery, "MAX_PARAMETER_BYTES", 2000)
  client = FakeClient()
  store = bigquery.BigQueryWarehouse(client, PROJECT, DATASET)
  assert store.insert_predictions([_prediction(i) for i in range(50)]) == 50
  assert store.insert_predictions([_prediction(i) for i in range(25, 75)]) == 25
  merges = [request for request in client.requests if request[1] == PREDICTIONS_MERGE]
  assert len(merges) > 4
  sent = [row["request_id"] for row in merged_rows(client)[f"{PROJECT}.{DATASET}.predictions"]]
  assert sorted(sent) == sorted([f"r{i}" for i in range(50)] + [f"r{i}" for i in range(25, 75)])


def test_count_rewarded_sends_the_local_training_query_with_the_dataset_prefix(tmp_path):
  path = str(tmp_path / "w.sqlite")
  local = warehouse_lib.Warehouse(path)
  local.insert_predictions([_prediction(i) for i in range(12)])
  local.insert_feedback([_feedback(i) for i in range(0, 12, 2)])
  client = FakeClient(sqlite_path=path)
  store = bigquery.BigQueryWarehouse(client, PROJECT, DATASET)
  for begin, end in ((0.0, math.inf), (1001.0, 1003.0), (1002.0, 1002.0)):
    # The same SQL text runs on SQLite with the dataset attached under its BigQuery name.
    assert store.count_rewarded(begin, end) == local.count_rewarded(begin, end)
    assert client.requests[-1] == (
        "query", "SELECT COUNT(*) FROM ("
        f"{warehouse_lib.training_query(begin, end, f'`{PROJECT}.{DATASET}`.')})", None)
  assert store.count_rewarded() == 6
  local.insert_feedback([{**_feedback(0), "request_id": "forged"}])
  assert store.count_unmatched_feedback() == local.count_unmatched_feedback() == 1
  assert client.requests[-1] == (
      "query", warehouse_lib.unmatched_feedback_query(0.0, math.inf,
                                                      f"`{PROJECT}.{DATASET}`."), None)


def test_open_warehouse(monkeypatch, tmp_path):
  client = FakeClient()
  projects = []
  monkeypatch.setattr(bigquery, "make_client", lambda project: projects.append(project) or client)
  store = warehouse_lib.open_warehouse(URI)
  assert isinstance(store, bigquery.BigQueryWarehouse)
  assert (store.project, store.dataset, projects) == (PROJECT, DATASET, [PROJECT])
  assert client.requests == ENSURE_REQUESTS
  store.close()
  assert client.closed

  local = warehouse_lib.open_warehouse(str(tmp_path / "w.sqlite"))
  assert isinstance(local, warehouse_lib.Warehouse) and local.path == str(tmp_path / "w.sqlite")
  assert bigquery.parse_uri("bq://example.com:my-project.logs_1") == ("example.com:my-project",
                                                                      "logs_1")
  for bad in ("bq://project", "bq://Project.logs", "bq://my-project.logs-1", "gs://bucket/w.db"):
    with pytest.raises(ValueError, match="bq://project.dataset"):
      warehouse_lib.open_warehouse(bad)
  assert len(projects) == 1
