"""Stand-ins for Google's network clients, for the Vertex rehearsal (`vertex_rehearsal`).

Only the clients that would go on the wire are replaced: the BigQuery client and
Beam's BigQuery source run the same SQL on a SQLite file whose tables have the
warehouse's columns, and the Vertex AI SDK's `init`, `Endpoint` and `Model` keep
their state in a JSON file. Every request is appended to a JSON-lines log, so a
test asserts on exactly what would have been sent. `install()` patches them into
a process (the rehearsal runs it from a `sitecustomize` module in each task's
subprocess); the paths come from the environment variables below.
"""
import contextlib
import fcntl
import json
import os
import re
import sqlite3
from typing import Any, Dict, List, Mapping

# SQLite file standing in for the BigQuery dataset.
WAREHOUSE_ENV = "RLOPS_FAKE_BIGQUERY_SQLITE"
# JSON file holding the Vertex AI endpoints and models.
AIPLATFORM_STATE_ENV = "RLOPS_FAKE_AIPLATFORM_STATE"
# JSON-lines log of every request.
REQUESTS_ENV = "RLOPS_FAKE_GOOGLE_REQUESTS"

# What BigQuery's API reports for the warehouse's columns (legacy type names).
_LEGACY_TYPES = {"FLOAT64": "FLOAT", "INT64": "INTEGER"}
_MERGE = re.compile(r"MERGE `([^`.]+)\.([^`.]+)\.([^`.]+)`")


def _record(request: Dict[str, Any]) -> None:
  with open(os.environ[REQUESTS_ENV], "a") as log:
    fcntl.flock(log, fcntl.LOCK_EX)
    log.write(json.dumps(request, sort_keys=True) + "\n")


def read_requests(path: str) -> List[Dict[str, Any]]:
  """The requests logged at `path`, in order."""
  if not os.path.exists(path):
    return []
  with open(path) as log:
    return [json.loads(line) for line in log]


def _column_types() -> Dict[str, tuple]:
  from rlops import bigquery as bigquery_warehouse  # pylint: disable=import-outside-toplevel
  return {field.name: (_LEGACY_TYPES.get(field.field_type, field.field_type), field.mode)
          for schema in bigquery_warehouse.SCHEMAS.values() for field in schema}


class _QueryResult(list):
  """Rows of a finished query job, with their schema, as `QueryJob.result()` gives them."""

  def __init__(self, rows, schema):
    super().__init__(rows)
    self.schema = schema


class _QueryJob:

  def __init__(self, result, num_dml_affected_rows=None):
    self._result = result
    self.num_dml_affected_rows = num_dml_affected_rows

  def result(self):
    return self._result


class SqliteBigQueryClient:
  """`google.cloud.bigquery.Client` on the SQLite file named by WAREHOUSE_ENV.

  The dataset `project.dataset` is that file: queries run unchanged with the file
  attached under that name, a MERGE inserts the @rows whose request_id its table
  lacks, and tables exist once the file has them.
  """

  def __init__(self, project=None, **unused_kwargs):
    self.project = project
    self._path = os.environ[WAREHOUSE_ENV]

  @contextlib.contextmanager
  def _dataset(self, dataset_id: str):
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as connection:
      connection.execute("ATTACH DATABASE ? AS ?", (self._path, dataset_id))
      yield connection

  def get_dataset(self, dataset_id):
    from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
    _record({"api": "bigquery.get_dataset", "dataset": dataset_id})
    return bigquery.Dataset(dataset_id)

  def get_table(self, table_id):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
    from rlops import bigquery as bigquery_warehouse  # pylint: disable=import-outside-toplevel
    _record({"api": "bigquery.get_table", "table": table_id})
    project, dataset, table = table_id.split(".")
    with self._dataset(f"{project}.{dataset}") as connection:
      exists = connection.execute(
          f'SELECT COUNT(*) FROM "{project}.{dataset}".sqlite_master WHERE name = ?',
          (table,)).fetchone()[0]
    if not exists:
      raise exceptions.NotFound(f"Not found: Table {table_id}")
    return bigquery.Table(table_id, schema=bigquery_warehouse.SCHEMAS[table])

  def query(self, sql, job_config=None):
    _record({"api": "bigquery.query", "query": sql,
             "job_config": job_config.to_api_repr() if job_config else None})
    merge = _MERGE.match(sql)
    if merge:
      return self._merge(*merge.groups(), job_config)
    from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
    from google.cloud.bigquery import table  # pylint: disable=import-outside-toplevel
    types = _column_types()
    with self._dataset(self._dataset_of(sql)) as connection:
      cursor = connection.execute(sql)
      names = [column[0] for column in cursor.description]
      rows = cursor.fetchall()
    schema = [bigquery.SchemaField(name, *types.get(name, ("INTEGER", "NULLABLE")))
              for name in names]
    repeated = [field.mode == "REPEATED" for field in schema]
    index = {name: i for i, name in enumerate(names)}
    return _QueryJob(_QueryResult(
        [table.Row([json.loads(value) if is_repeated else value
                    for value, is_repeated in zip(row, repeated)], index) for row in rows], schema))

  @staticmethod
  def _dataset_of(sql: str) -> str:
    match = re.search(r"`([^`.]+\.[^`.]+)`\.", sql)
    if not match:
      raise ValueError(f"the query names no `project.dataset`: {sql}")
    return match.group(1)

  def _merge(self, project, dataset, table_name, job_config):
    """Inserts the rows of @rows, decoded from the request's wire form, that `table_name` lacks."""
    parameter, = job_config.to_api_repr()["query"]["queryParameters"]
    types = {field["name"]: field["type"]
             for field in parameter["parameterType"]["arrayType"]["structTypes"]}
    inserted = 0
    with self._dataset(f"{project}.{dataset}") as connection:
      for struct in parameter["parameterValue"]["arrayValues"]:
        values = {name: _sqlite_value(value, types[name])
                  for name, value in struct["structValues"].items()}
        columns = list(values)
        inserted += connection.execute(
            f'INSERT OR IGNORE INTO "{project}.{dataset}".{table_name} ({", ".join(columns)}) '
            f'VALUES ({", ".join("?" * len(columns))})', [values[c] for c in columns]).rowcount
    return _QueryJob(_QueryResult([], []), num_dml_affected_rows=inserted)

  def close(self):
    pass


def _sqlite_value(value: Mapping[str, Any], value_type: Mapping[str, Any]):
  """A query parameter's wire value as the SQLite warehouse stores it (arrays as JSON text)."""
  if value_type["type"] == "ARRAY":
    return json.dumps([_sqlite_value(item, value_type["arrayType"])
                       for item in value["arrayValues"]])
  return {"INT64": int, "FLOAT64": float, "STRING": str}[value_type["type"]](value["value"])


def read_from_bigquery(query, use_standard_sql=False, **unused_kwargs):
  """Beam's `ReadFromBigQuery(query=...)`: the query's rows as dicts, read through the fake
  client."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  _record({"api": "beam.ReadFromBigQuery", "query": query, "use_standard_sql": use_standard_sql})
  rows = [dict(row.items()) for row in SqliteBigQueryClient().query(query).result()]
  return beam.Create(rows)


@contextlib.contextmanager
def _aiplatform_state():
  """The endpoints and models, locked for the duration of one call."""
  path = os.environ[AIPLATFORM_STATE_ENV]
  with open(path, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    text = f.read()
    state = json.loads(text) if text else {"location": None, "endpoints": [], "models": [],
                                           "deployments": 0}
    yield state
    f.seek(0)
    f.truncate()
    f.write(json.dumps(state, sort_keys=True))


def _location():
  with _aiplatform_state() as state:
    return state["location"]


def init(project=None, location=None, **unused_kwargs):
  _record({"api": "aiplatform.init", "project": project, "location": location})
  with _aiplatform_state() as state:
    state["location"] = f"projects/{project}/locations/{location}"


class DeployedModel:

  def __init__(self, deployed_model_id: str, model: str):
    self.id = deployed_model_id
    self.model = model


class Endpoint:
  """`aiplatform.Endpoint`: list, create, list_models, undeploy."""

  def __init__(self, resource_name: str, display_name: str = ""):
    self.resource_name = resource_name
    self.display_name = display_name

  @classmethod
  def list(cls, filter=None, **unused_kwargs):  # pylint: disable=redefined-builtin
    _record({"api": "aiplatform.Endpoint.list", "filter": filter})
    with _aiplatform_state() as state:
      return [cls(e["resource_name"], e["display_name"]) for e in state["endpoints"]
              if filter == f'display_name="{e["display_name"]}"']

  @classmethod
  def create(cls, display_name, labels=None, **unused_kwargs):
    _record({"api": "aiplatform.Endpoint.create", "display_name": display_name,
             "labels": labels})
    with _aiplatform_state() as state:
      resource_name = f"{state['location']}/endpoints/{len(state['endpoints']) + 1}"
      state["endpoints"].append({"resource_name": resource_name, "display_name": display_name,
                                 "deployed_models": [], "traffic_split": {}})
    return cls(resource_name, display_name)

  def list_models(self):
    _record({"api": "aiplatform.Endpoint.list_models", "endpoint": self.resource_name})
    with _aiplatform_state() as state:
      endpoint, = [e for e in state["endpoints"] if e["resource_name"] == self.resource_name]
      return [DeployedModel(d["id"], d["model"]) for d in endpoint["deployed_models"]]

  def undeploy(self, deployed_model_id, **kwargs):
    _record({"api": "aiplatform.Endpoint.undeploy", "endpoint": self.resource_name,
             "deployed_model_id": deployed_model_id, **kwargs})
    with _aiplatform_state() as state:
      endpoint, = [e for e in state["endpoints"] if e["resource_name"] == self.resource_name]
      if endpoint["traffic_split"].get(deployed_model_id):
        raise ValueError(f"cannot undeploy {deployed_model_id}: it still has traffic")
      endpoint["deployed_models"] = [d for d in endpoint["deployed_models"]
                                     if d["id"] != deployed_model_id]
      endpoint["traffic_split"].pop(deployed_model_id, None)

  def traffic_split(self) -> Dict[str, int]:
    with _aiplatform_state() as state:
      endpoint, = [e for e in state["endpoints"] if e["resource_name"] == self.resource_name]
      return dict(endpoint["traffic_split"])


class Model:
  """`aiplatform.Model`: upload, wait, deploy (to an Endpoint, with traffic_percentage)."""

  def __init__(self, resource_name: str):
    self.resource_name = resource_name

  @classmethod
  def upload(cls, display_name, artifact_uri, serving_container_image_uri, **kwargs):
    _record({"api": "aiplatform.Model.upload", "display_name": display_name,
             "artifact_uri": artifact_uri,
             "serving_container_image_uri": serving_container_image_uri, **kwargs})
    with _aiplatform_state() as state:
      resource_name = f"{state['location']}/models/{len(state['models']) + 1}"
      state["models"].append({"resource_name": resource_name, "display_name": display_name,
                              "artifact_uri": artifact_uri})
    return cls(resource_name)

  def wait(self):
    pass

  def deploy(self, endpoint, traffic_percentage=0, **kwargs):
    _record({"api": "aiplatform.Model.deploy", "model": self.resource_name,
             "endpoint": endpoint.resource_name, "traffic_percentage": traffic_percentage,
             **kwargs})
    with _aiplatform_state() as state:
      target, = [e for e in state["endpoints"] if e["resource_name"] == endpoint.resource_name]
      state["deployments"] += 1
      deployed_model_id = str(1000 + state["deployments"])
      target["deployed_models"].append({"id": deployed_model_id, "model": self.resource_name})
      others = sum(share for key, share in target["traffic_split"].items())
      scale = (100 - traffic_percentage) / others if others else 0
      target["traffic_split"] = {key: round(share * scale)
                                 for key, share in target["traffic_split"].items()}
      target["traffic_split"][deployed_model_id] = traffic_percentage


def install() -> None:
  """Patches the fakes over Google's clients in this process."""
  from apache_beam.io.gcp import bigquery as beam_bigquery  # pylint: disable=import-outside-toplevel
  from google.cloud import aiplatform  # pylint: disable=import-outside-toplevel
  from google.cloud import bigquery  # pylint: disable=import-outside-toplevel
  bigquery.Client = SqliteBigQueryClient
  beam_bigquery.ReadFromBigQuery = read_from_bigquery
  aiplatform.init = init
  aiplatform.Endpoint = Endpoint
  aiplatform.Model = Model
