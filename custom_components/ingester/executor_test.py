"""Tests of the Ingester: its executor on a real warehouse, and the component in a
LocalDagRunner."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs

from custom_components.ingester import component
from custom_components.ingester import executor
from rlops import warehouse

K = 5
BEGIN, END = 1_700_000_000.0, 1_700_003_600.0
NUM_REWARDED = 500
SPAN = 7


def _record(i: int, event_time: float, prefix: str) -> tuple:
  request_id = f"{prefix}-{i:04d}"
  prediction = {"request_id": request_id, "event_time": event_time,
                "observation": [np.sin(i + j) for j in range(K)], "action": i % 11,
                "propensity": 1 / (1 + i % 9), "model_version": f"model-{i % 4}", "source": "test"}
  feedback = {"request_id": request_id, "event_time": event_time + 30, "reward": 0.5 * (i % 9)}
  return prediction, feedback


@pytest.fixture(scope="module")
def warehouse_path(tmp_path_factory):
  """500 rewarded records in [BEGIN, END), some unrewarded ones in it, and rewarded ones
  around it."""
  path = str(tmp_path_factory.mktemp("warehouse") / "warehouse.db")
  store = warehouse.Warehouse(path)
  in_span = [_record(i, BEGIN + i * (END - BEGIN) / NUM_REWARDED, "in")
             for i in range(NUM_REWARDED)]
  unrewarded = [_record(i, BEGIN + 10 + i, "unrewarded") for i in range(60)]
  outside = [_record(i, t, "out") for i, t in enumerate([BEGIN - 1e-3, BEGIN - 600, END, END + 1])]
  store.insert_predictions([prediction for prediction, _ in in_span + unrewarded + outside])
  store.insert_feedback([feedback for _, feedback in in_span + outside])
  assert store.count_rewarded(BEGIN, END) == NUM_REWARDED
  store.close()
  return path


def _read_examples(split_dir: str) -> list:
  files = tf.io.gfile.glob(os.path.join(split_dir, "*.gz"))
  assert files, f"no examples in {split_dir}"
  return [tf.train.Example.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _run_executor(path: str, query: str, output_uri: str) -> standard_artifacts.Examples:
  example_gen = component.SqliteExampleGen(query=query, warehouse_path=path, span=SPAN)
  # Proto parameters are JSON already; the driver adds the span.
  exec_properties = {**example_gen.exec_properties, "span": SPAN}
  examples = standard_artifacts.Examples()
  examples.uri = output_uri
  executor.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
  return examples


def test_executor_writes_the_rewarded_records_of_the_span(warehouse_path, tmp_path):
  examples = _run_executor(warehouse_path, warehouse.training_query(BEGIN, END), str(tmp_path))
  assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
  splits = {split: _read_examples(artifact_utils.get_split_uri([examples], split))
            for split in ("train", "eval")}
  records = warehouse.Warehouse(warehouse_path).rewarded_records(BEGIN, END)
  expected = {request_id: i for i, request_id in enumerate(records["request_id"])}
  seen = []
  for example in splits["train"] + splits["eval"]:
    features = example.features.feature
    assert set(features) == {"observation", "action", "reward", "propensity", "model_version",
                             "request_id", "event_time"}
    request_id = features["request_id"].bytes_list.value[0].decode()
    i = expected[request_id]
    np.testing.assert_array_equal(features["observation"].float_list.value,
                                  records["observation"][i])
    assert features["action"].int64_list.value == [records["action"][i]]
    assert features["reward"].float_list.value == [records["reward"][i]]
    assert features["propensity"].float_list.value == [records["propensity"][i]]
    assert features["model_version"].bytes_list.value == [records["model_version"][i].encode()]
    # float_list is float32: Unix seconds keep about 7 digits.
    assert features["event_time"].float_list.value == [np.float32(records["event_time"][i])]
    seen.append(request_id)
  assert sorted(seen) == sorted(expected) and len(seen) == NUM_REWARDED
  assert all(request_id.startswith("in-") for request_id in seen)
  train_share = len(splits["train"]) / NUM_REWARDED
  assert 0.72 < train_share < 0.88, f"train share {train_share}, expected about 0.8"


def test_executor_fails_on_an_empty_span(warehouse_path, tmp_path):
  query = warehouse.training_query(END + 3600, END + 7200)
  with pytest.raises(ValueError, match="no rewarded records") as error:
    _run_executor(warehouse_path, query, str(tmp_path))
  assert repr(END + 3600) in str(error.value)
  with pytest.raises(FileNotFoundError, match="no warehouse"):
    _run_executor(str(tmp_path / "missing.db"), query, str(tmp_path))


def test_row_to_example_accepts_json_text_and_lists():
  row = {"request_id": "r", "event_time": 1.5, "observation": [0.25, -1.0], "action": 3,
         "propensity": 0.5, "model_version": "m", "reward": 4.0}
  from_list = executor.row_to_example(row)
  assert executor.row_to_example(
      {**row, "observation": json.dumps(row["observation"])}) == from_list
  assert from_list.features.feature["observation"].float_list.value == [0.25, -1.0]


def test_component_in_local_dag_runner_records_span_and_splits(warehouse_path, tmp_path):
  metadata_path = str(tmp_path / "metadata.db")
  example_gen = component.SqliteExampleGen(
      query=warehouse.training_query(BEGIN, END), warehouse_path=warehouse_path, span=SPAN)
  tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
      pipeline_name="ingester-test",
      pipeline_root=str(tmp_path / "root"),
      components=[example_gen],
      metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
          metadata_path),
      enable_cache=False))
  store = metadata_store.MetadataStore(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
  [artifact] = store.get_artifacts_by_type(standard_artifacts.Examples.TYPE_NAME)
  assert artifact.custom_properties["span"].int_value == SPAN
  assert json.loads(artifact.properties["split_names"].string_value) == ["train", "eval"]
  counts = [len(_read_examples(os.path.join(artifact.uri, f"Split-{split}")))
            for split in ("train", "eval")]
  assert sum(counts) == NUM_REWARDED
