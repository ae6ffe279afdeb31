"""Ingester executor: runs the training query on the SQLite warehouse and writes tf.Examples."""
import contextlib
import json
import os
import pathlib
import sqlite3
from typing import Any, Dict, Iterator, Mapping

import apache_beam as beam
import tensorflow as tf
from google.protobuf import struct_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from rlops import warehouse

# Key of the warehouse path in the Struct packed into ExampleGen's custom_config.
WAREHOUSE_PATH_KEY = "warehouse_path"


def make_custom_config(warehouse_path: str) -> example_gen_pb2.CustomConfig:
  """ExampleGen's custom_config (a proto wrapping an Any) carrying the warehouse path."""
  custom_config = example_gen_pb2.CustomConfig()
  custom_config.custom_config.Pack(struct_pb2.Struct(fields={
      WAREHOUSE_PATH_KEY: struct_pb2.Value(string_value=os.fspath(warehouse_path))}))
  return custom_config


def warehouse_path_of(exec_properties: Mapping[str, Any]) -> str:
  """The warehouse path in the JSON custom_config of `exec_properties`."""
  custom_config = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY],
                            custom_config)
  config = struct_pb2.Struct()
  if not custom_config.custom_config.Unpack(config) or WAREHOUSE_PATH_KEY not in config:
    raise ValueError(f"custom_config holds no {WAREHOUSE_PATH_KEY}: {custom_config}")
  return config[WAREHOUSE_PATH_KEY]


def _connect_read_only(path: str) -> sqlite3.Connection:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no warehouse at {path}")
  return sqlite3.connect(pathlib.Path(path).resolve().as_uri() + "?mode=ro", uri=True,
                         timeout=warehouse.BUSY_TIMEOUT_SECONDS)


def _query_rows(query: str, path: str) -> Iterator[Dict[str, Any]]:
  with contextlib.closing(_connect_read_only(path)) as connection:
    cursor = connection.execute(query)
    names = [column[0] for column in cursor.description]
    for values in cursor:
      yield dict(zip(names, values))


def _float(value: float) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))


def _bytes(value: str) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))


def row_to_example(row: Mapping[str, Any]) -> tf.train.Example:
  """A row of `warehouse.training_query` as a tf.train.Example.

  The observation is a JSON array in SQLite and a list in BigQuery; both are
  accepted. Float features are float32: `event_time` keeps about 7 digits.
  """
  observation = row["observation"]
  if isinstance(observation, (str, bytes)):
    observation = json.loads(observation)
  return tf.train.Example(features=tf.train.Features(feature={
      "observation": tf.train.Feature(float_list=tf.train.FloatList(value=observation)),
      "action": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["action"]])),
      "reward": _float(row["reward"]),
      "propensity": _float(row["propensity"]),
      "model_version": _bytes(row["model_version"]),
      "request_id": _bytes(row["request_id"]),
      "event_time": _float(row["event_time"]),
  }))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _SqliteToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],  # pylint: disable=invalid-name
                     split_pattern: str) -> beam.pvalue.PCollection:
  """Runs the query `split_pattern` on the warehouse; fails when it selects nothing."""
  path = warehouse_path_of(exec_properties)
  with contextlib.closing(_connect_read_only(path)) as connection:
    count = connection.execute(f"SELECT COUNT(*) FROM ({split_pattern})").fetchone()[0]
  if not count:
    raise ValueError(f"no rewarded records in {path} for the query (see its event_time bounds):\n"
                     f"{split_pattern}")
  return (pipeline
          | "Query" >> beam.Create([split_pattern])
          | "ReadRows" >> beam.FlatMap(_query_rows, path)
          | "ToTFExample" >> beam.Map(row_to_example))


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """Reads the rewarded records of the span from the SQLite warehouse."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _SqliteToExample
