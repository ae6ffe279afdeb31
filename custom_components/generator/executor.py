"""Generator executor: a Beam pipeline over index ranges of the records to log."""
from typing import Any, Dict, Iterator, List, Tuple

import apache_beam as beam
import numpy as np
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from custom_components import keys
from rlops import records
from rlops import simulation
from rlops import warehouse as warehouse_lib
from rlops.config import DataConfig, EnvironmentConfig, section_from_json

LOGGING_POLICY = "uniform-random"
CHUNK_SIZE = 2000


def request_id(prefix: str, index: int) -> str:
  return f"{prefix}-{index:08d}"


class _SimulateChunk(beam.DoFn):
  """Turns an index range into prediction and feedback rows of the uniform-random policy."""

  def __init__(self, data: DataConfig, environment: EnvironmentConfig, event_time: float,
               prefix: str):
    self._data = data
    self._environment = environment
    self._event_time = event_time
    self._prefix = prefix
    self._model = None

  def setup(self):
    self._model = simulation.MovieLensModel.from_sections(self._data, self._environment)

  def process(self, index_range: Tuple[int, int]
              ) -> Iterator[Tuple[List[records.Prediction], List[records.Feedback]]]:
    start, end = index_range
    # One generator per chunk, keyed by its start: the same records whatever the worker.
    rng = np.random.default_rng([self._environment.seed, int(self._event_time), start])
    model = self._model
    users = rng.integers(0, model.num_users, size=end - start)
    actions = rng.integers(0, model.num_movies, size=end - start)
    observations = model.observe(users)
    rewards = model.reward(users, actions)
    propensity = 1.0 / model.num_movies
    ids = [request_id(self._prefix, index) for index in range(start, end)]
    predictions = [records.Prediction(
        request_id=rid, event_time=self._event_time, observation=observation, action=int(action),
        propensity=propensity, model_version=LOGGING_POLICY, source="generator")
                   for rid, observation, action in zip(ids, observations, actions)]
    feedback = [records.Feedback(request_id=rid, event_time=self._event_time, reward=float(reward))
                for rid, reward in zip(ids, rewards)]
    yield predictions, feedback


class _WriteToWarehouse(beam.DoFn):
  """Writes each chunk to the warehouse at `uri` ("bq://project.dataset" or a SQLite path).

  Rows are de-duplicated by request id, so a retried bundle writes nothing twice.
  """

  def __init__(self, uri: str):
    self._uri = uri
    self._warehouse = None

  def setup(self):
    self._warehouse = warehouse_lib.open_warehouse(self._uri)

  def process(self, chunk: Tuple[List[records.Prediction], List[records.Feedback]]
              ) -> Iterator[int]:
    predictions, feedback = chunk
    self._warehouse.insert_predictions(predictions)
    self._warehouse.insert_feedback(feedback)
    yield len(predictions)

  def teardown(self):
    if self._warehouse is not None:
      self._warehouse.close()


class Executor(base_beam_executor.BaseBeamExecutor):
  """Logs `samples` uniform-random interactions to the warehouse."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    data = section_from_json(DataConfig, exec_properties[keys.DATA_KEY])
    environment = section_from_json(EnvironmentConfig, exec_properties[keys.ENVIRONMENT_KEY])
    event_time = float(exec_properties[keys.EVENT_TIME_KEY])
    uri = exec_properties[keys.WAREHOUSE_KEY]
    prefix = f"gen-{int(event_time)}"
    samples = int(exec_properties[keys.SAMPLES_KEY])
    ranges = [(start, min(start + CHUNK_SIZE, samples)) for start in range(0, samples, CHUNK_SIZE)]
    with self._make_beam_pipeline() as pipeline:
      _ = (pipeline
           | "IndexRanges" >> beam.Create(ranges)
           | "Simulate" >> beam.ParDo(_SimulateChunk(data, environment, event_time, prefix))
           | "Write" >> beam.ParDo(_WriteToWarehouse(uri)))
    interactions = artifact_utils.get_single_instance(output_dict[keys.INTERACTIONS_KEY])
    interactions.set_int_custom_property("record_count", samples)
    interactions.set_float_custom_property("event_time", event_time)
    interactions.set_string_custom_property("warehouse", uri)
    interactions.set_string_custom_property("logging_policy", LOGGING_POLICY)
    interactions.set_string_custom_property("request_id_prefix", prefix)
