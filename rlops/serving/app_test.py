"""Tests of the endpoint app: real uvicorn on loopback, a trained model, a SQLite warehouse."""
import json
import statistics
import time

import httpx
import numpy as np
import prometheus_client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rlops import model_io, testing
from rlops.serving import server
from rlops.serving.conftest import EPSILON
from rlops.serving.testing import instances, logged_predictions, push, until

K = 4  # rank_k of testing.small_model()


def test_predictions_are_logged_once_with_exact_propensities(tmp_path, serving, trained_model,
                                                              make_app):
  model = testing.small_model()
  k = model.num_movies
  greedy_p, other_p = 1 - EPSILON + EPSILON / k, EPSILON / k
  observations = model.observe(np.arange(100))
  policy_probs = model_io.probabilities(model_io.load_serving_policy(trained_model), observations)
  app = make_app(seed=0)
  sent = {}
  latencies = []
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    for i, observation in enumerate(observations):
      body = instances([observation], [f"single-{i}"] if i % 2 else None)
      start = time.perf_counter()
      response = client.post("/predict", json=body)
      latencies.append(time.perf_counter() - start)
      assert response.status_code == 200, response.text
      [prediction] = response.json()["predictions"]
      assert prediction["request_id"] == f"single-{i}" or not i % 2
      sent[prediction["request_id"]] = (observation, prediction)
    # One context, many draws: the action frequencies follow the propensities.
    counts = np.zeros(k)
    for _ in range(16):
      response = client.post("/predict", json=instances(np.repeat(observations[:1], 256, axis=0)))
      for prediction in response.json()["predictions"]:
        counts[prediction["action"]] += 1
        sent[prediction["request_id"]] = (observations[0], prediction)
    assert app.state.logger.flush(timeout=30.0)
    stats = client.get("/stats").json()
    metrics = client.get("/metrics")
  np.testing.assert_allclose(counts / counts.sum(), policy_probs[0], atol=0.03)
  # The same counters for Prometheus, in its text format.
  assert metrics.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
  lines = [line for line in metrics.text.splitlines() if not line.startswith("#")]
  scraped = {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines)}
  assert scraped["rlops_predictions_total"] == scraped["rlops_logged_total"] == len(sent)
  assert scraped["rlops_pending"] == 0 and scraped['rlops_serving_model{version="1"}'] == 1
  assert stats["predictions"] == stats["logged"] == len(sent) == 100 + 16 * 256
  assert stats["pending"] == 0 and stats["version"] == "1" and stats["dead_letters"] == 0
  logged = logged_predictions(tmp_path / "warehouse.sqlite")
  assert len(logged) == len(sent)
  for request_id, (observation, prediction) in sent.items():
    greedy = int(np.argmax(policy_probs[np.flatnonzero((observations == observation).all(1))[0]]))
    expected = greedy_p if prediction["action"] == greedy else other_p
    assert prediction["propensity"] == expected and prediction["model_version"] == "1"
    assert logged[request_id] == ([float(x) for x in observation], prediction["action"], expected,
                                  "1", "endpoint")
  print(f"\np50 latency of one-instance requests: {1e3 * statistics.median(latencies):.2f} ms")


def test_bad_requests_get_4xx_with_a_reason(tmp_path, serving, make_app):
  good = [0.5, -1.0, 2.0, 0.25]
  ok = {"observation": good}

  def body(*more):
    return json.dumps({"instances": [ok, *more]})

  numbers = "instance 1: observation values must be numbers"
  finite = "instance 1: observation values must be finite"
  request_id = "instance 1: request_id must be a string of 1 to 128 characters"
  json_type = {"content-type": "application/json"}
  cases = [
      ("{not json", json_type, 400, "malformed JSON"),
      ("[" * 9000 + "]" * 9000, json_type, 400, "nested too deep"),
      ('{"instances": ' + "[" * 5000 + "]" * 5000 + "}", json_type, 400, "nested too deep"),
      ("[1, 2]", json_type, 400, '"instances"'),
      ("{}", json_type, 400, '"instances"'),
      ('{"instances": []}', json_type, 400, "non-empty"),
      ('{"instances": {"observation": [1, 2, 3, 4]}}', json_type, 400, "non-empty list"),
      (json.dumps({"instances": [ok] * 5}), json_type, 400, "at most 4"),
      (body([1, 2, 3, 4]), json_type, 400, "instance 1: must be an object"),
      (body({}), json_type, 400, "instance 1: observation must be a list"),
      (body({"observation": "1,2,3,4"}), json_type, 400, "instance 1: observation must be a list"),
      (body({"observation": good[:3]}), json_type, 400,
       "instance 1: observation has 3 values, the model takes 4"),
      (body({"observation": [*good, 1.0]}), json_type, 400, "instance 1: observation has 5"),
      (body({"observation": [1.0, "2", 3.0, 4.0]}), json_type, 400, numbers),
      (body({"observation": [1.0, True, 3.0, 4.0]}), json_type, 400, numbers),
      (body({"observation": [1.0, None, 3.0, 4.0]}), json_type, 400, numbers),
      (body({"observation": [1.0, float("nan"), 3.0, 4.0]}), json_type, 400, finite),
      (body({"observation": [1.0, float("-inf"), 3.0, 4.0]}), json_type, 400, finite),
      (body({"observation": [1.0, 1e39, 3.0, 4.0]}), json_type, 400, finite),  # Beyond float32.
      (body({"observation": [1.0, 10**400, 3.0, 4.0]}), json_type, 400, finite),  # Beyond float64.
      (body({"observation": good, "request_id": 7}), json_type, 400, request_id),
      (body({"observation": good, "request_id": ""}), json_type, 400, request_id),
      (body({"observation": good, "request_id": "x" * 129}), json_type, 400, request_id),
      # A lone surrogate: valid JSON, but no warehouse can store it.
      (body({"observation": good, "request_id": "x\ud800"}), json_type, 400, "not valid Unicode"),
      (body({"observation": good, "requestid": "a"}), json_type, 400,
       "instance 1: unknown field(s) 'requestid'"),
      (body({"observation": good, "request_id": "a"}, {"observation": good, "request_id": "a"}),
       json_type, 400, "request_ids must be unique"),
      (body(), {"content-type": "text/plain"}, 415, "application/json"),
      ("instances=1", {"content-type": "application/x-www-form-urlencoded"}, 415,
       "application/json"),
      (body(), {}, 415, "application/json"),
      (json.dumps({"instances": [ok], "pad": "x" * 20_000}), json_type, 413, "at most 20000 bytes"),
  ]
  app = make_app(max_instances=4, max_body_bytes=20_000)
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    for content, headers, status, reason in cases:
      response = client.post("/predict", content=content, headers=headers)
      assert response.status_code == status, (content[:100], response.text)
      assert reason in response.json()["error"], (content[:100], response.json())
    assert client.get("/predict").status_code == 405
    # The other routes' refusals are JSON with a reason too.
    assert (client.get("/nope").status_code, client.get("/nope").json()) == (
        404, {"error": "Not Found"})
    assert (client.post("/stats").status_code, client.post("/stats").json()) == (
        405, {"error": "Method Not Allowed"})
    response = client.post("/predict", json={"instances": [ok, {**ok, "request_id": "x" * 128}]})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2
    assert app.state.logger.flush(timeout=30.0)
    stats = client.get("/stats").json()
  assert stats["bad_requests"] == len(cases) + 1 and stats["predictions"] == 2
  assert stats["requests"] == len(cases) + 2
  assert len(logged_predictions(tmp_path / "warehouse.sqlite")) == 2


def test_a_reused_request_id_gets_its_first_prediction_or_409(tmp_path, serving, make_app):
  observations = testing.small_model().observe(np.arange(3))
  first = instances(observations[:1], ["reused"])
  other = instances(observations[1:2], ["reused"])
  app = make_app()
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    [served] = client.post("/predict", json=first).json()["predictions"]
    for _ in range(20):  # Exploration at epsilon 0.5 would soon draw another action.
      assert client.post("/predict", json=first).json()["predictions"] == [served]
    response = client.post("/predict", json=other)
    assert response.status_code == 409 and "already served" in response.json()["error"]
    # Refused for its second instance: the first one's id is not kept reserved.
    refused = instances(observations[1:3], ["new-1", "reused"])
    assert client.post("/predict", json=refused).status_code == 409
    mixed = instances(observations[:3], ["reused", "new-1", "new-2"])
    predictions = client.post("/predict", json=mixed).json()["predictions"]
    assert predictions[0] == served and [p["request_id"] for p in predictions[1:]] == [
        "new-1", "new-2"]
    # A row the warehouse cannot store is refused each time, not held as being served.
    unstorable = instances(observations[:1], ["x\ud800"])
    for _ in range(2):
      response = client.post("/predict", json=unstorable)
      assert response.status_code == 400 and "not valid Unicode" in response.json()["error"]
    assert app.state.logger.flush(timeout=30.0)
    stats = client.get("/stats").json()
  assert stats["predictions"] == 3 and stats["repeated"] == 21 and stats["conflicts"] == 2
  assert logged_predictions(tmp_path / "warehouse.sqlite")["reused"][1] == served["action"]
  # After a restart, the outbox remembers what was served.
  app = make_app()
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    assert client.post("/predict", json=first).json()["predictions"] == [served]
    assert client.post("/predict", json=other).status_code == 409


def test_outbox_write_failure_gives_503_with_a_reason(tmp_path, serving, make_app):
  app = make_app()
  body = instances(testing.small_model().observe(np.arange(1)), ["cannot-log"])
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    logger = app.state.logger
    # The disk is full: every write fails with ENOSPC.
    with open("/dev/full", "ab", buffering=0) as full:
      healthy_file, logger._file = logger._file, full  # pylint: disable=protected-access
      try:
        for _ in range(3):
          response = client.post("/predict", json=body)
          assert response.status_code == 503
          assert "prediction log cannot be written" in response.json()["error"]
      finally:
        logger._file = healthy_file  # pylint: disable=protected-access
    # The id reserved by each failed request is served normally on retry, once.
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert client.post("/predict", json=body).json() == response.json()
    assert logger.flush(timeout=30.0)
    stats = client.get("/stats").json()
  assert stats["log_unavailable"] == 3 and stats["predictions"] == stats["repeated"] == 1
  assert list(logged_predictions(tmp_path / "warehouse.sqlite")) == ["cannot-log"]


def test_health_is_503_until_a_version_is_pushed(tmp_path, trained_model, make_app):
  app = make_app()
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert client.get("/health").status_code == 503
    assert client.get("/version").json() == {"version": None}
    body = instances(testing.small_model().observe(np.arange(1)))
    assert client.post("/predict", json=body).status_code == 503
    schema = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    observation = schema["requestBody"]["content"]["application/json"]["schema"]
    observation = observation["properties"]["instances"]["items"]["properties"]["observation"]
    assert "minItems" not in observation
    (tmp_path / "serving").mkdir()
    push(trained_model, str(tmp_path / "serving"), 7)
    until(lambda: client.get("/health").status_code == 200)
    assert client.get("/health").json() == {"status": "ok", "version": "7"}
    assert client.post("/predict", json=body).status_code == 200


_NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                     st.booleans(), st.none(), st.text(max_size=3))
_JSON = st.recursive(st.one_of(_NUMBERS, st.text(max_size=10)),
                     lambda children: st.lists(children, max_size=5) | st.dictionaries(
                         st.text(max_size=10), children, max_size=5), max_leaves=30)
_INSTANCE = st.fixed_dictionaries(
    {"observation": st.one_of(st.lists(_NUMBERS, min_size=K, max_size=K),
                              st.lists(st.floats(-1e3, 1e3), min_size=K, max_size=K), _JSON)},
    optional={"request_id": st.one_of(st.text(max_size=140), _JSON), "extra": _JSON})
_BODIES = st.one_of(
    st.binary(max_size=300),
    _JSON.map(lambda value: json.dumps(value).encode()),
    st.lists(_INSTANCE, max_size=6).map(lambda rows: json.dumps({"instances": rows}).encode()),
    st.integers(1, 3000).map(lambda depth: b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"),
)
_CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                  "text/plain", "application/x-www-form-urlencoded", None])


def test_fuzzed_requests_never_get_5xx_and_every_4xx_has_a_reason(tmp_path, serving, make_app):
  app = make_app(max_instances=4, max_body_bytes=20_000)
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    statuses = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=_BODIES, content_type=_CONTENT_TYPES)
    @example(body=json.dumps({"instances": [{"observation": [0.5] * K}]}).encode(),
             content_type="application/json")
    def check(body, content_type):
      headers = {"content-type": content_type} if content_type else {}
      response = client.post("/predict", content=body, headers=headers)
      statuses.append(response.status_code)
      assert response.status_code < 500, (body[:200], response.text)
      if response.status_code == 200:
        assert len(response.json()["predictions"]) == len(json.loads(body)["instances"])
      else:
        reason = response.json()["error"]
        assert isinstance(reason, str) and reason

    check()  # pylint: disable=no-value-for-parameter
    assert app.state.logger.flush(timeout=30.0)
    stats = client.get("/stats").json()
  assert 200 in statuses and 400 in statuses and 415 in statuses
  assert stats["dead_letters"] == 0 and stats["pending"] == 0
  assert len(logged_predictions(tmp_path / "warehouse.sqlite")) == stats["predictions"]


def test_openapi_states_the_observation_length(tmp_path, serving, make_app):
  app = make_app(max_instances=8)
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
  request = operation["requestBody"]["content"]["application/json"]["schema"]
  assert request["properties"]["instances"]["maxItems"] == 8
  observation = request["properties"]["instances"]["items"]["properties"]["observation"]
  assert observation["minItems"] == observation["maxItems"] == K
  assert set(operation["responses"]) >= {"200", "400", "409", "413", "415", "503"}
