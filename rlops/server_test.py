"""Tests of the prediction server: real uvicorn on loopback, a trained model, a SQLite warehouse."""
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from rlops import log_sinks, model_io, server, testing, training
from rlops.config import AgentConfig

EPSILON = 0.5


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
  """A LinUCB model directory trained on uniformly logged records of the small model."""
  model = testing.small_model()
  rng = np.random.default_rng(0)
  users = rng.integers(0, model.num_users, size=3000)
  actions = rng.integers(0, model.num_movies, size=3000).astype(np.int32)
  config = AgentConfig(name="linucb", epsilon=EPSILON)
  agent = model_io.new_agent(config, model.num_movies, model.rank_k)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions))
  directory = str(tmp_path_factory.mktemp("model") / "trained")
  model_io.save(agent, config, model.num_movies, model.rank_k, directory, {})
  return directory


def _push(trained_model: str, serving: str, version: int) -> None:
  """Writes serving/<version> as a whole: a copy under a temporary name, then a rename."""
  temporary = os.path.join(serving, f".tmp-{version}")
  shutil.copytree(trained_model, temporary)
  os.rename(temporary, os.path.join(serving, str(version)))


class _FailingSink:

  def deliver(self, message):
    raise ConnectionError(f"warehouse unreachable ({len(message['predictions'])} rows)")


def _app(tmp_path, sink=None, **kwargs):
  sink = sink or log_sinks.InProcessSink(str(tmp_path / "warehouse.sqlite"))
  kwargs.setdefault("poll_seconds", 0.05)
  return server.create_app(str(tmp_path / "serving"), sink,
                           outbox_path=str(tmp_path / "outbox.jsonl"), **kwargs)


@pytest.fixture
def serving(tmp_path, trained_model):
  """The serving base directory with version 1 pushed."""
  os.makedirs(tmp_path / "serving")
  _push(trained_model, str(tmp_path / "serving"), 1)
  return str(tmp_path / "serving")


def _logged(tmp_path) -> dict:
  with sqlite3.connect(tmp_path / "warehouse.sqlite") as connection:
    rows = connection.execute("SELECT request_id, observation, action, propensity, model_version, "
                              "source FROM predictions").fetchall()
  return {row[0]: (json.loads(row[1]), *row[2:]) for row in rows}


def _until(predicate, timeout: float = 20.0) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.02)


def _instances(observations, ids=None):
  return {"instances": [{"observation": [float(x) for x in row],
                         **({"request_id": ids[i]} if ids else {})}
                        for i, row in enumerate(observations)]}


def test_predictions_are_logged_once_with_exact_propensities(tmp_path, serving, trained_model):
  model = testing.small_model()
  k = model.num_movies
  greedy_p, other_p = 1 - EPSILON + EPSILON / k, EPSILON / k
  observations = model.observe(np.arange(100))
  policy_probs = model_io.probabilities(model_io.load_serving_policy(trained_model), observations)
  app = _app(tmp_path, seed=0)
  sent = {}
  latencies = []
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    for i, observation in enumerate(observations):
      body = _instances([observation], [f"single-{i}"] if i % 2 else None)
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
      response = client.post("/predict", json=_instances(np.repeat(observations[:1], 256, axis=0)))
      for prediction in response.json()["predictions"]:
        counts[prediction["action"]] += 1
        sent[prediction["request_id"]] = (observations[0], prediction)
    assert app.state.logger.flush(timeout=30.0)
    stats = client.get("/stats").json()
  np.testing.assert_allclose(counts / counts.sum(), policy_probs[0], atol=0.03)
  assert stats["predictions"] == stats["logged"] == len(sent) == 100 + 16 * 256
  assert stats["pending"] == 0 and stats["version"] == "1"
  logged = _logged(tmp_path)
  assert len(logged) == len(sent)
  for request_id, (observation, prediction) in sent.items():
    greedy = int(np.argmax(policy_probs[np.flatnonzero((observations == observation).all(1))[0]]))
    expected = greedy_p if prediction["action"] == greedy else other_p
    assert prediction["propensity"] == expected and prediction["model_version"] == "1"
    assert logged[request_id] == ([float(x) for x in observation], prediction["action"], expected,
                                  "1", "endpoint")
  print(f"\np50 latency of one-instance requests: {1e3 * statistics.median(latencies):.2f} ms")


def test_hot_swap_under_concurrent_requests(tmp_path, serving, trained_model):
  observations = testing.small_model().observe(np.arange(4))
  app = _app(tmp_path)
  versions = [[] for _ in range(4)]
  failures = []

  def send(url, index):
    deadline = time.monotonic() + 20.0
    with httpx.Client(base_url=url) as client:
      while time.monotonic() < deadline and versions[index].count("2") < 100:
        try:
          response = client.post("/predict", json=_instances(observations[index:index + 1]))
          response.raise_for_status()
          versions[index].append(response.json()["predictions"][0]["model_version"])
        except Exception as error:  # pylint: disable=broad-except
          failures.append(repr(error))

  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    threads = [threading.Thread(target=send, args=(endpoint.url, i)) for i in range(4)]
    for thread in threads:
      thread.start()
    _until(lambda: min(map(len, versions)) >= 20)
    # A partial push that never completes must be ignored: no metadata file yet.
    shutil.copytree(os.path.join(trained_model, model_io.CHECKPOINT_DIR),
                    os.path.join(serving, "3", model_io.CHECKPOINT_DIR))
    _push(trained_model, serving, 2)
    for thread in threads:
      thread.join()
    assert app.state.logger.flush(timeout=30.0)
    final_version = httpx.get(f"{endpoint.url}/version").json()["version"]
  assert not failures
  assert final_version == "2"
  for sequence in versions:
    assert sequence[0] == "1" and sequence.count("2") == 100
    first_new = sequence.index("2")
    assert set(sequence[first_new:]) == {"2"} and set(sequence[:first_new]) == {"1"}
  assert len(_logged(tmp_path)) == sum(map(len, versions))


def test_version_that_fails_to_load_is_retried_while_the_old_one_serves(tmp_path, serving,
                                                                         trained_model):
  # Pusher copies in place: the metadata file can land before the checkpoint.
  os.makedirs(os.path.join(serving, "2"))
  shutil.copy(os.path.join(trained_model, model_io.METADATA_FILE), os.path.join(serving, "2"))
  app = _app(tmp_path)
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    _until(lambda: app.state.models.load_failures >= 2)
    assert client.get("/version").json()["version"] == "1"
    body = _instances(testing.small_model().observe(np.arange(1)))
    assert client.post("/predict", json=body).json()["predictions"][0]["model_version"] == "1"
    for name in (model_io.CHECKPOINT_DIR, model_io.POLICY_DIR):
      shutil.copytree(os.path.join(trained_model, name), os.path.join(serving, "2", name))
    _until(lambda: client.get("/version").json()["version"] == "2")


def test_bad_requests_get_400_with_a_reason(tmp_path, serving):
  good = [0.5, -1.0, 2.0, 0.25]
  ok = {"observation": good}

  def body(*instances):
    return json.dumps({"instances": [ok, *instances]})

  numbers = "instance 1: observation values must be numbers"
  finite = "instance 1: observation values must be finite"
  request_id = "instance 1: request_id must be a string of 1 to 128 characters"

  cases = [
      ("{not json", "malformed JSON"),
      ("[1, 2]", '"instances"'),
      ("{}", '"instances"'),
      ('{"instances": []}', "non-empty"),
      ('{"instances": {"observation": [1, 2, 3, 4]}}', "non-empty list"),
      (json.dumps({"instances": [ok] * 5}), "at most 4"),
      (body([1, 2, 3, 4]), "instance 1: must be an object"),
      (body({}), "instance 1: observation must be a list"),
      (body({"observation": "1,2,3,4"}), "instance 1: observation must be a list"),
      (body({"observation": good[:3]}), "instance 1: observation has 3 values, the model takes 4"),
      (body({"observation": good + [1.0]}), "instance 1: observation has 5"),
      (body({"observation": [1.0, "2", 3.0, 4.0]}), numbers),
      (body({"observation": [1.0, True, 3.0, 4.0]}), numbers),
      (body({"observation": [1.0, None, 3.0, 4.0]}), numbers),
      (body({"observation": [1.0, float("nan"), 3.0, 4.0]}), finite),
      (body({"observation": [1.0, float("-inf"), 3.0, 4.0]}), finite),
      (body({"observation": [1.0, 1e39, 3.0, 4.0]}), finite),  # Beyond float32.
      (body({"observation": [1.0, 10**400, 3.0, 4.0]}), finite),  # Beyond float64.
      (body({"observation": good, "request_id": 7}), request_id),
      (body({"observation": good, "request_id": ""}), request_id),
      (body({"observation": good, "request_id": "x" * 129}), request_id),
      (body({"observation": good, "requestid": "a"}), "instance 1: unknown field(s) requestid"),
      (body({"observation": good, "request_id": "a"}, {"observation": good, "request_id": "a"}),
       "request_ids must be unique"),
  ]
  app = _app(tmp_path, max_instances=4)
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    for content, reason in cases:
      response = client.post("/predict", content=content,
                             headers={"content-type": "application/json"})
      assert response.status_code == 400, (content, response.text)
      assert reason in response.json()["error"], (content, response.json())
    response = client.post("/predict", json={"instances": [ok, {**ok, "request_id": "x" * 128}]})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2
    assert app.state.logger.flush(timeout=30.0)
    stats = client.get("/stats").json()
  assert stats["bad_requests"] == len(cases) and stats["predictions"] == 2
  assert stats["requests"] == len(cases) + 1 and len(_logged(tmp_path)) == 2


def test_acknowledged_predictions_survive_a_restart(tmp_path, serving):
  observations = testing.small_model().observe(np.arange(50))
  ids = [f"durable-{i}" for i in range(50)]
  app = _app(tmp_path, sink=_FailingSink())
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert app.state.models.wait(30.0)
    for i in range(50):
      response = client.post("/predict", json=_instances(observations[i:i + 1], ids[i:i + 1]))
      assert response.status_code == 200
    assert not app.state.logger.flush(timeout=0.5)
    stats = client.get("/stats").json()
  assert stats["logged"] == 0 and stats["pending"] == 50 and stats["log_delivery_failures"] >= 1
  assert not os.path.exists(tmp_path / "warehouse.sqlite")

  app = _app(tmp_path)
  assert app.state.logger.pending == 50
  with server.ServerThread(app):
    assert app.state.logger.flush(timeout=30.0)
  assert sorted(_logged(tmp_path)) == sorted(ids)
  with open(tmp_path / "outbox.jsonl.offset") as f:
    assert int(f.read()) == os.path.getsize(tmp_path / "outbox.jsonl")


def test_health_is_503_until_a_version_is_pushed(tmp_path, trained_model):
  app = _app(tmp_path)
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    assert client.get("/health").status_code == 503
    assert client.get("/version").json() == {"version": None}
    body = _instances(testing.small_model().observe(np.arange(1)))
    assert client.post("/predict", json=body).status_code == 503
    os.makedirs(tmp_path / "serving")
    _push(trained_model, str(tmp_path / "serving"), 7)
    _until(lambda: client.get("/health").status_code == 200)
    assert client.get("/health").json() == {"status": "ok", "version": "7"}
    assert client.post("/predict", json=body).status_code == 200


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def test_app_from_vertex_environment(tmp_path, trained_model, monkeypatch):
  port = _free_port()
  monkeypatch.setenv("AIP_HTTP_PORT", str(port))
  monkeypatch.setenv("AIP_HEALTH_ROUTE", "/v1/healthz")
  monkeypatch.setenv("AIP_PREDICT_ROUTE", "/v1/models/rlops:predict")
  monkeypatch.setenv("AIP_STORAGE_URI", trained_model)  # One model directory, as Vertex gives.
  monkeypatch.setenv("RLOPS_WAREHOUSE", str(tmp_path / "warehouse.sqlite"))
  monkeypatch.setenv("RLOPS_OUTBOX", str(tmp_path / "outbox.jsonl"))
  monkeypatch.delenv("RLOPS_HOST", raising=False)
  monkeypatch.delenv("RLOPS_LOG_URL", raising=False)
  assert server.address_from_env() == ("127.0.0.1", port)
  app = server.app_from_env()
  with server.ServerThread(app, port=port) as endpoint, \
      httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
    assert endpoint.port == port
    _until(lambda: client.get("/v1/healthz").status_code == 200)
    assert client.get("/v1/healthz").json()["version"] == "trained"
    body = _instances(testing.small_model().observe(np.arange(1)), ["vertex-1"])
    response = client.post("/v1/models/rlops:predict", json=body)
    assert response.status_code == 200
    assert client.post("/predict", json=body).status_code == 404
    operation = client.get("/openapi.json").json()["paths"]["/v1/models/rlops:predict"]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert request_schema["properties"]["instances"]["maxItems"] == 256
    assert set(operation["responses"]) >= {"200", "400"}
    assert app.state.logger.flush(timeout=30.0)
  assert list(_logged(tmp_path)) == ["vertex-1"]
  monkeypatch.delenv("RLOPS_WAREHOUSE")
  with pytest.raises(RuntimeError, match="RLOPS_LOG_URL or RLOPS_WAREHOUSE"):
    server.app_from_env()


def test_main_serves_as_deployed_and_drains_on_sigterm(tmp_path, serving):
  port = _free_port()
  env = {**os.environ, "AIP_HTTP_PORT": str(port), "AIP_STORAGE_URI": serving,
         "RLOPS_WAREHOUSE": str(tmp_path / "warehouse.sqlite"),
         "RLOPS_OUTBOX": str(tmp_path / "outbox.jsonl")}
  root = os.path.dirname(os.path.dirname(os.path.abspath(server.__file__)))
  process = subprocess.Popen([sys.executable, "-m", "rlops.server"], env=env, cwd=root)
  ids = [f"deployed-{i}" for i in range(20)]
  try:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:

      def healthy():
        assert process.poll() is None, "the server exited"
        try:
          return client.get("/health").status_code == 200
        except httpx.TransportError:
          return False

      _until(healthy, timeout=60.0)
      body = _instances(testing.small_model().observe(np.arange(20)), ids)
      assert client.post("/predict", json=body).status_code == 200
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it captured.
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)
  finally:
    if process.poll() is None:
      process.kill()
  assert sorted(_logged(tmp_path)) == sorted(ids)  # Drained on shutdown.


def test_outbox_recovers_a_torn_line_and_compacts(tmp_path):
  outbox = tmp_path / "outbox.jsonl"
  rows = [{"request_id": f"r{i}", "event_time": 1.0, "observation": [0.5, 1.0], "action": i % 3,
           "propensity": 0.5, "model_version": "1", "source": "endpoint"} for i in range(30)]
  outbox.write_text("".join(json.dumps(row) + "\n" for row in rows[:10]) + '{"request_id": "r')
  logger = server.OutboxLogger(str(outbox), log_sinks.InProcessSink(str(tmp_path / "wh.sqlite")),
                               compact_bytes=1000)
  assert logger.pending == 10  # The torn last line was never acknowledged: dropped.
  logger.start()
  try:
    for start in (10, 20):
      logger.append(rows[start:start + 10])
      assert logger.flush(timeout=30.0)
      assert outbox.stat().st_size == 0 and (tmp_path / "outbox.jsonl.offset").read_text() == "0"
    assert logger.delivered == 30 and logger.pending == 0
  finally:
    logger.close()
  with sqlite3.connect(tmp_path / "wh.sqlite") as connection:
    assert connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 30


def test_neural_model_serves_its_greedy_arm(tmp_path):
  model = testing.small_model()
  config = AgentConfig(name="neural_epsilon_greedy", epsilon=0.2, hidden_units=(8,))
  agent = model_io.new_agent(config, model.num_movies, model.rank_k)
  rng = np.random.default_rng(1)
  users = rng.integers(0, model.num_users, size=512)
  actions = rng.integers(0, model.num_movies, size=512).astype(np.int32)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions),
                           batch_size=128)
  model_io.save(agent, config, model.num_movies, model.rank_k, str(tmp_path / "5"), {})
  serving_model = server.load_model(str(tmp_path / "5"), "5")
  observations = model.observe(np.arange(50))
  probabilities = model_io.probabilities(model_io.load_serving_policy(str(tmp_path / "5")),
                                         observations)
  np.testing.assert_array_equal(serving_model.greedy(observations), probabilities.argmax(axis=1))
  actions, propensities = serving_model.act(observations, np.random.default_rng(0))
  greedy = actions == probabilities.argmax(axis=1)
  assert set(propensities[greedy]) == {1 - 0.2 + 0.2 / model.num_movies}
  assert set(propensities[~greedy]) <= {0.2 / model.num_movies}
