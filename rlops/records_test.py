"""Tests of the loop's records: what a warehouse can store, and the rows they travel as."""
import json
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlops import records, warehouse

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
              lambda row: warehouse.predictions_values([row]))
  if stored is None:
    for build in builders:
      with pytest.raises(ValueError, match="observation must be a non-empty list of finite"):
        build(row)
    return
  record = records.Prediction.from_row(row)
  assert record == records.Prediction(**row) and record.observation == stored
  assert warehouse.predictions_values([row]) == [record.values()]
  assert type(record.observation[0]) is float  # pylint: disable=unidiomatic-typecheck


def test_feedback_rewards_must_be_finite():
  with pytest.raises(ValueError, match="request_id 'r1': reward must be a finite number"):
    records.Feedback(request_id="r1", event_time=1.0, reward=float("inf"))
  with pytest.raises(ValueError, match="reward must be a finite number"):  # Not OverflowError.
    records.Feedback(request_id="r1", event_time=1.0, reward=10**400)
  with pytest.raises(ValueError, match="missing field.*reward.*unknown field.*rating"):
    records.Feedback.from_row({"request_id": "r1", "event_time": 1.0, "rating": 4.0})


_PLAIN_FIELDS = {
    "request_id": st.text("0123456789abcdef", min_size=1, max_size=128),
    "event_time": st.floats(0.0, records.MAX_EVENT_TIME),
    # Values whose sum stays within float32 (else the batch leaves the rows to the row check).
    "observation": st.lists(st.floats(-1e30, 1e30), min_size=1, max_size=4),
    "action": st.integers(0, records.MAX_ACTION),
    "propensity": st.floats(5e-324, 1.0),
    "model_version": st.sampled_from(["1", "uniform-random", "x" * 128]),
    "source": st.sampled_from(["endpoint", "generator"]),
}
# Values at and beyond each field's bounds, of each type a JSON row can bring.
_ODD_VALUES = (
    None, True, False, 0, 1, -1, 2**31 - 1, 2**31, 10**400, float("nan"), float("inf"),
    -float("inf"), -0.0, 0.0, 5e-324, 1.0, 1.0 + 2**-52, -1e-300, records.MAX_EVENT_TIME,
    records.MAX_EVENT_TIME * (1 + 2**-52), "", "7", "x" * 128, "x" * 129, "\u00e9", "x\ud800",
    [], [float("nan")], [1.0, float("inf")], [3.5e38], [3e38, 3e38, -3e38], [True], [1],
    [1, 2.5], ["1.0"], (0.5,), {"a": 1.0})


def _reference(rows):
  """The stored values of each row by `Prediction.from_row`, or the first row's error."""
  try:
    return [records.Prediction.from_row(row).values() for row in rows]
  except ValueError as error:
    return str(error)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries(_PLAIN_FIELDS), min_size=1, max_size=6))
def test_a_batch_of_plain_rows_is_stored_as_each_row_alone(rows):
  assert records.plain_prediction_values(rows) == _reference(rows)


def _checked_alike(rows) -> None:
  """The batch check and the row-by-row one store the same values or raise the same error."""
  expected = _reference(rows)
  plain = records.plain_prediction_values(rows)
  assert plain is None or plain == expected  # The batch accepts only rows each one accepts.
  try:
    assert warehouse.predictions_values(rows) == expected
  except ValueError as error:
    assert str(error) == expected


def test_a_batch_with_an_odd_field_is_checked_as_each_row_alone():
  _checked_alike([{**PREDICTION.to_row(), "request_id": f"r{i}"} for i in range(3)])
  for field in records.PREDICTION_COLUMNS + ("extra",):
    for value in _ODD_VALUES + ("missing",):
      # The odd row in the middle: min and max of a column see a NaN there last.
      rows = [{**PREDICTION.to_row(), "request_id": f"r{i}"} for i in range(3)]
      rows[1][field] = value
      if value == "missing":
        del rows[1][field]
      _checked_alike(rows)
