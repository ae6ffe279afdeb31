"""Tests of request parsing: every body is parsed or refused with a reason, nothing else."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlops import records
from rlops.serving import parsing

_FLOAT32_MAX = float(np.finfo(np.float32).max)

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None, database=None)
@given(body=st.one_of(st.binary(max_size=100), _JSON.map(lambda value: json.dumps(value).encode()),
                      _JSON.map(lambda value: json.dumps({"instances": value}).encode()),
                      st.lists(st.fixed_dictionaries({"observation": _JSON},
                                                     optional={"request_id": _JSON}), max_size=3)
                      .map(lambda rows: json.dumps({"instances": rows}).encode())))
def test_any_body_is_parsed_or_refused_with_a_reason(body):
  try:
    observations, sent, request_ids = parsing.parse_instances(body, rank_k=3, max_instances=2)
  except ValueError as error:
    assert str(error)
    return
  assert observations.shape == (len(sent), 3) and len(request_ids) == len(sent) <= 2



def _storable(row) -> bool:
  try:
    records.Prediction.from_row(row)
    return True
  except ValueError:
    return False


@pytest.mark.parametrize("values", [
    [0.5, -1.0, 2.0], [1, 2, 3], [True, 1.0, 2.0], [float("nan"), 1.0, 2.0],
    [_FLOAT32_MAX, -_FLOAT32_MAX, 0.0], [np.nextafter(_FLOAT32_MAX, np.inf), 1.0, 2.0],
    [3.5e38, 1.0, 2.0], [10**40, 1, 2], [10**400, 1, 2], ["1", 2.0, 3.0],
])
def test_an_accepted_request_brings_only_what_a_prediction_row_stores(values):
  """The endpoint writes its rows unchecked: parsing refuses what `records` would refuse."""
  request_ids = ["ok", "x\ud800", "x" * 129]
  for request_id in request_ids:
    body = json.dumps({"instances": [{"observation": values, "request_id": request_id}]})
    row = {"request_id": request_id, "event_time": 1.0, "observation": values, "action": 0,
           "propensity": 1.0, "model_version": "1", "source": "endpoint"}
    try:
      _, sent, _ = parsing.parse_instances(body.encode(), rank_k=3, max_instances=1)
    except ValueError:
      accepted = False
    else:
      accepted = True
      assert all(type(value) is float for value in sent[0])  # Logged as floats, as JSON.
    assert accepted == _storable(row), (values, request_id)
