"""Tests of request parsing: every body is parsed or refused with a reason, nothing else."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from rlops.serving import parsing

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

