"""Tests of running the endpoint: Vertex's environment, worker processes, kill -9 under load."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest

from rlops import model_io, testing
from rlops.serving import server
from rlops.serving.testing import instances, logged_predictions, until

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(server.__file__))))


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
  monkeypatch.setenv("RLOPS_MAX_BODY_BYTES", "5000")
  monkeypatch.delenv("RLOPS_HOST", raising=False)
  monkeypatch.delenv("RLOPS_LOG_URL", raising=False)
  monkeypatch.delenv("RLOPS_LOG_TOPIC", raising=False)
  assert server.address_from_env() == ("127.0.0.1", port)
  app = server.app_from_env()
  with server.ServerThread(app, port=port) as endpoint, \
      httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
    assert endpoint.port == port
    until(lambda: client.get("/v1/healthz").status_code == 200)
    # The version its metadata records: Vertex's copy of the directory has an arbitrary path.
    version = model_io.read_metadata(trained_model)["model_version"]
    assert client.get("/v1/healthz").json()["version"] == version
    body = instances(testing.small_model().observe(np.arange(1)), ["vertex-1"])
    response = client.post("/v1/models/rlops:predict", json=body)
    assert response.status_code == 200
    assert response.json()["predictions"][0]["model_version"] == version
    assert client.post("/predict", json=body).status_code == 404
    assert client.post("/v1/models/rlops:predict", json={"instances": [], "pad": "x" * 5000}
                       ).status_code == 413
    operation = client.get("/openapi.json").json()["paths"]["/v1/models/rlops:predict"]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert request_schema["properties"]["instances"]["maxItems"] == 256
    assert app.state.logger.flush(timeout=30.0)
  assert list(logged_predictions(tmp_path / "warehouse.sqlite")) == ["vertex-1"]
  monkeypatch.delenv("RLOPS_WAREHOUSE")
  with pytest.raises(RuntimeError, match="RLOPS_LOG_URL or RLOPS_WAREHOUSE"):
    server.app_from_env()


def _start(tmp_path, serving: str, port: int, workers: int) -> subprocess.Popen:
  env = {**os.environ, "AIP_HTTP_PORT": str(port), "AIP_STORAGE_URI": serving,
         "RLOPS_WAREHOUSE": str(tmp_path / "warehouse.sqlite"),
         "RLOPS_OUTBOX": str(tmp_path / "outbox.jsonl"), "RLOPS_WORKERS": str(workers)}
  return subprocess.Popen([sys.executable, "-m", "rlops.serving"], env=env, cwd=_ROOT)


def _wait_healthy(process: subprocess.Popen, client: httpx.Client) -> None:

  def healthy():
    assert process.poll() is None, "the server exited"
    try:
      return client.get("/health").status_code == 200
    except httpx.TransportError:
      return False

  until(healthy, timeout=90.0)


def test_workers_serve_as_deployed_and_drain_on_sigterm(tmp_path, serving):
  port = _free_port()
  process = _start(tmp_path, serving, port, workers=2)
  observations = testing.small_model().observe(np.arange(40))
  ids = [f"deployed-{i}" for i in range(40)]
  processes = set()

  def both_serving():  # Each new connection goes to one worker: ask until both answered.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
      _wait_healthy(process, client)
      processes.add(client.get("/stats").json()["process"])
    return len(processes) == 2

  try:
    until(both_serving, timeout=120.0)
    for i in range(0, 40, 2):  # A connection each: the kernel spreads them over the workers.
      with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        body = instances(observations[i:i + 2], ids[i:i + 2])
        assert client.post("/predict", json=body).status_code == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
  finally:
    if process.poll() is None:
      process.kill()
  assert sorted(logged_predictions(tmp_path / "warehouse.sqlite")) == sorted(ids)
  assert {path.name for path in tmp_path.glob("outbox-*.jsonl")} == {"outbox-0.jsonl",
                                                                      "outbox-1.jsonl"}


def test_a_request_id_reused_on_another_worker_gets_its_first_prediction_or_409(tmp_path,
                                                                                 serving):
  port = _free_port()
  process = _start(tmp_path, serving, port, workers=2)
  observations = testing.small_model().observe(np.arange(2))
  first = instances(observations[:1], ["shared"])
  other = instances(observations[1:2], ["shared"])
  clients = {}  # process -> a keep-alive connection to that worker

  def connected_to_both():  # Each new connection goes to one worker.
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    _wait_healthy(process, client)
    worker = client.get("/stats").json()["process"]
    if worker in clients:
      client.close()
    else:
      clients[worker] = client
    return len(clients) == 2

  try:
    until(connected_to_both, timeout=120.0)
    (worker_a, client_a), (worker_b, client_b) = clients.items()
    response = client_a.post("/predict", json=first)
    assert response.status_code == 200, response.text
    [served] = response.json()["predictions"]
    response = client_b.post("/predict", json=first)
    assert response.status_code == 200 and response.json()["predictions"] == [served]
    response = client_b.post("/predict", json=other)
    assert response.status_code == 409
    assert "already served for another observation" in response.json()["error"]
    stats_a, stats_b = client_a.get("/stats").json(), client_b.get("/stats").json()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
  finally:
    for client in clients.values():
      client.close()
    if process.poll() is None:
      process.kill()
  assert (stats_a["process"], stats_b["process"]) == (worker_a, worker_b)  # Same connections.
  assert stats_a["predictions"] == 1 and stats_b["predictions"] == 0
  assert stats_b["repeated"] == 1 and stats_b["conflicts"] == 1
  logged = [json.loads(line)["request_id"] for path in tmp_path.glob("outbox-*.jsonl")
            for line in path.read_text().splitlines()]
  assert logged == ["shared"]
  assert logged_predictions(tmp_path / "warehouse.sqlite")["shared"][1] == served["action"]


def test_every_acknowledged_prediction_is_logged_once_after_kill_9_under_load(tmp_path, serving):
  port = _free_port()
  observations = testing.small_model().observe(np.arange(8))
  acknowledged = {}  # request_id -> action
  stop = threading.Event()

  def load(thread_index: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
      for i in range(5000):  # Bounded; stopped by the kill well before.
        if stop.is_set():
          return
        request_id = f"load-{thread_index}-{i}"
        try:
          response = client.post("/predict", json=instances(observations[i % 8:i % 8 + 1],
                                                             [request_id]))
        except httpx.TransportError:
          return
        if response.status_code == 200:
          acknowledged[request_id] = response.json()["predictions"][0]["action"]

  process = _start(tmp_path, serving, port, workers=1)
  try:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
      _wait_healthy(process, client)
    threads = [threading.Thread(target=load, args=(index,)) for index in range(4)]
    for thread in threads:
      thread.start()
    until(lambda: len(acknowledged) >= 300)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stop.set()
    for thread in threads:
      thread.join(timeout=30)
  finally:
    if process.poll() is None:
      process.kill()
  process = _start(tmp_path, serving, port, workers=1)
  try:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
      _wait_healthy(process, client)
      until(lambda: client.get("/stats").json()["pending"] == 0, timeout=60.0)
      # The restarted server answers a reused id with the action it acknowledged before.
      request_id, action = next(iter(acknowledged.items()))
      index = int(request_id.rsplit("-", 1)[1]) % 8
      response = client.post("/predict", json=instances(observations[index:index + 1],
                                                         [request_id]))
      assert response.json()["predictions"][0]["action"] == action
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  logged = logged_predictions(tmp_path / "warehouse.sqlite")
  assert {request_id: logged[request_id][1] for request_id in acknowledged} == acknowledged
