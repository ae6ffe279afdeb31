"""Tests of the model watcher: hot swaps under load, incomplete and invalid versions."""
import os
import shutil
import threading
import time

import httpx
import numpy as np

from rlops import model_io, testing
from rlops.serving import server, watcher
from rlops.serving.policy_test import _edited
from rlops.serving.testing import instances, logged_predictions, push, until


def test_hot_swap_under_load_fails_no_request(tmp_path, serving, trained_model, make_app):
  observations = testing.small_model().observe(np.arange(4))
  app = make_app()
  versions = [[] for _ in range(4)]
  failures = []

  def send(url, index):
    deadline = time.monotonic() + 20.0
    with httpx.Client(base_url=url) as client:
      while time.monotonic() < deadline and versions[index].count("2") < 100:
        try:
          response = client.post("/predict", json=instances(observations[index:index + 1]))
          response.raise_for_status()
          versions[index].append(response.json()["predictions"][0]["model_version"])
        except Exception as error:  # pylint: disable=broad-except
          failures.append(repr(error))

  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    threads = [threading.Thread(target=send, args=(endpoint.url, i)) for i in range(4)]
    for thread in threads:
      thread.start()
    until(lambda: min(map(len, versions)) >= 20)
    # A partial push that never completes must be ignored: no metadata file yet.
    shutil.copytree(os.path.join(trained_model, model_io.CHECKPOINT_DIR),
                    os.path.join(serving, "3", model_io.CHECKPOINT_DIR))
    push(trained_model, serving, 2)
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
  assert len(logged_predictions(tmp_path / "warehouse.sqlite")) == sum(map(len, versions))


def test_version_that_fails_to_load_is_retried_while_the_old_one_serves(serving, trained_model,
                                                                         make_app):
  # Pusher copies in place: the metadata file can land before the checkpoint.
  os.makedirs(os.path.join(serving, "2"))
  shutil.copy(os.path.join(trained_model, model_io.METADATA_FILE), os.path.join(serving, "2"))
  app = make_app()
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    until(lambda: app.state.models.load_failures >= 2)
    assert client.get("/version").json()["version"] == "1"
    body = instances(testing.small_model().observe(np.arange(1)))
    assert client.post("/predict", json=body).json()["predictions"][0]["model_version"] == "1"
    for name in (model_io.CHECKPOINT_DIR, model_io.POLICY_DIR):
      shutil.copytree(os.path.join(trained_model, name), os.path.join(serving, "2", name))
    until(lambda: client.get("/version").json()["version"] == "2")
    assert client.get("/stats").json()["rejected_versions"] == {}


def test_invalid_versions_are_skipped_one_by_one_and_reported(tmp_path, serving, trained_model,
                                                              make_app):
  _edited(trained_model, os.path.join(serving, "2"), epsilon=1.5, agent={"epsilon": 1.5})
  _edited(trained_model, os.path.join(serving, "3"),
          agent={"name": "neural_epsilon_greedy", "hidden_units": [8]})
  push(trained_model, serving, "²")  # isdigit() but not a version number.
  push(trained_model, serving, "v4")
  app = make_app()
  body = instances(testing.small_model().observe(np.arange(1)))
  with server.ServerThread(app) as endpoint, httpx.Client(base_url=endpoint.url) as client:
    until(lambda: client.get("/version").json()["version"] == "1")
    stats = client.get("/stats").json()
    assert set(stats["rejected_versions"]) == {"2", "3"}
    assert "epsilon must be in [0, 1]" in stats["rejected_versions"]["2"]
    assert "AssertionError" in stats["rejected_versions"]["3"]
    assert client.post("/predict", json=body).json()["predictions"][0]["model_version"] == "1"
    push(trained_model, serving, 5)
    until(lambda: client.get("/version").json()["version"] == "5")
    assert client.get("/stats").json()["rejected_versions"] == {}


def test_a_refused_folder_is_tried_again_once_its_files_change_and_forgotten_once_gone(
    serving, trained_model):
  _edited(trained_model, os.path.join(serving, "2"), epsilon=1.5, agent={"epsilon": 1.5})
  models = watcher.ModelWatcher(serving, poll_seconds=1.0)
  models.poll()
  assert models.current.version == "1" and set(models.rejected) == {"2"}
  for _ in range(5):  # Unchanged: not built again at every poll.
    models.poll()
  assert models.load_failures == 1
  shutil.rmtree(os.path.join(serving, "2"))
  _edited(trained_model, os.path.join(serving, "2"), agent={"tikhonov_weight": -1.0})
  models.poll()  # Changed files: tried again at once, and refused for the new reason.
  assert models.load_failures == 2
  assert "tikhonov_weight must be positive" in models.rejected["2"]
  shutil.rmtree(os.path.join(serving, "2"))
  models.poll()
  assert models.rejected == {} and models.current.version == "1"
  push(trained_model, serving, 3)
  models.poll()
  assert models.current.version == "3"
