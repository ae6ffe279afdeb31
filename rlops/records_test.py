"""Tests of the loop's records: what a warehouse can store, and the rows they travel as."""
import json
import time
import uuid

import pytest

from rlops import records

PREDICTION = records.Prediction(request_id="r1", event_time=1700000000.5, observation=(0.25, -1.0),
                                action=3, propensity=0.9, model_version="7", source="endpoint")
FEEDBACK = records.Feedback(request_id="r1", event_time=1700000001.0, reward=4.5)


def test_rows_round_trip_through_json():
  for record in (PREDICTION, FEEDBACK):
    row = json.loads(json.dumps(record.to_row()))
    assert type(record).from_row(row) == record
  assert PREDICTION.values() == ("r1", 1700000000.5, "[0.25,-1.0]", 3, 0.9, "7", "endpoint")
  assert FEEDBACK.values() == ("r1", 1700000001.0, 4.5)


def test_new_request_ids_are_uuid7_in_creation_order():
  before = time.time()
  first = [records.new_request_id() for _ in range(10_000)]
  time.sleep(0.002)
  second = records.new_request_id()
  assert len(set(first)) == len(first)
  for request_id in first[:100] + [second]:
    parsed = uuid.UUID(hex=request_id)
    assert (parsed.version, parsed.variant, parsed.hex) == (7, uuid.RFC_4122, request_id)
    assert before - 0.001 <= int(request_id[:12], 16) / 1000 <= time.time()
  # Ids of later milliseconds sort after every earlier one: the key index grows at its end.
  assert max(first) < second
  assert sorted(first, key=lambda request_id: request_id[:12]) == first


@pytest.mark.parametrize("change, problem", [
    ({"request_id": "x\ud800"}, "request_id is not valid Unicode"),
    ({"request_id": "x" * 129}, "request_id must be a string of 1 to 128"),
    ({"event_time": -1.0}, "event_time must be a finite number"),
    ({"event_time": float("nan")}, "event_time must be a finite number"),
    ({"event_time": 10**400}, "event_time must be a finite number"),  # Beyond float64.
    ({"observation": (1.0, 3.5e38)}, "observation must be"),
    ({"action": -1}, "action must be an integer"),
    ({"propensity": 1.5}, "propensity must be a finite number in \\[0, 1\\]"),
    ({"propensity": 0.0}, "propensity must be positive"),
    ({"model_version": 7}, "model_version must be a string"),
])
def test_a_record_a_warehouse_cannot_store_is_refused_with_its_reason(change, problem):
  with pytest.raises(ValueError, match=problem):
    records.Prediction(**{**PREDICTION.to_row(), **change})


@pytest.mark.parametrize("observation, stored", [
    ([3e38, 3e38, -3e38], (3e38, 3e38, -3e38)),  # Each within float32, their sum beyond.
    ([1, 2.5], (1.0, 2.5)),
    ([1.0, float("nan")], None), ([1.0, float("inf")], None), ([1.0, -3.5e38], None),
    ([True, 1.0], None), (["1.0"], None), ([], None), ([1.0, 10**400], None),
])
def test_every_way_to_build_a_prediction_checks_its_observation_alike(observation, stored):
  row = {**PREDICTION.to_row(), "observation": observation}
  builders = (records.Prediction.from_row, lambda row: records.Prediction(**row),
              records.prediction_values)
  if stored is None:
    for build in builders:
      with pytest.raises(ValueError, match="observation must be a non-empty list of finite"):
        build(row)
    return
  record = records.Prediction.from_row(row)
  assert record == records.Prediction(**row) and record.observation == stored
  assert records.prediction_values(row) == record.values()
  assert type(record.observation[0]) is float  # pylint: disable=unidiomatic-typecheck


def test_feedback_rewards_must_be_finite():
  with pytest.raises(ValueError, match="request_id 'r1': reward must be a finite number"):
    records.Feedback(request_id="r1", event_time=1.0, reward=float("inf"))
  with pytest.raises(ValueError, match="reward must be a finite number"):  # Not OverflowError.
    records.Feedback(request_id="r1", event_time=1.0, reward=10**400)
  with pytest.raises(ValueError, match="missing field.*reward.*unknown field.*rating"):
    records.Feedback.from_row({"request_id": "r1", "event_time": 1.0, "rating": 4.0})
