"""The Simulator as deployed: functions-framework, a scheduler tick, a real endpoint."""
import json
import os
import types

import numpy as np

from functions import testing_utils
from functions.simulator import main as simulator
from rlops import log_sinks, model_io, simulation, testing, traffic, training
from rlops import warehouse as warehouse_lib
from rlops.config import AgentConfig, Config, DataConfig, EnvironmentConfig, GcpConfig
from rlops.serving import app as serving_app
from rlops.serving import server

SOURCE = os.path.join(os.path.dirname(simulator.__file__), "main.py")
CONFIG = Config(data=DataConfig(seed=8), environment=EnvironmentConfig(num_movies=10, rank_k=4))


def _push_model(serving_dir: str, model: simulation.MovieLensModel) -> None:
  rng = np.random.default_rng(0)
  users = rng.integers(0, model.num_users, size=2000)
  actions = rng.integers(0, model.num_movies, size=2000).astype(np.int32)
  agent = model_io.new_agent(AgentConfig(), model.num_movies, model.rank_k)
  training.train_on_logged(agent, model.observe(users), actions, model.reward(users, actions))
  model_io.save(agent, AgentConfig(), model.num_movies, model.rank_k,
                os.path.join(serving_dir, "1"), {})


def test_scheduled_tick_sends_requests_and_the_reward_of_that_user_and_movie(tmp_path):
  model = simulation.MovieLensModel.from_config(CONFIG)
  _push_model(str(tmp_path / "serving"), model)
  path = str(tmp_path / "warehouse.sqlite")
  sink = log_sinks.InProcessSink(path)
  app = serving_app.create_app(str(tmp_path / "serving"), sink,
                               outbox_path=str(tmp_path / "outbox.jsonl"))
  with server.ServerThread(app) as endpoint:
    env = {"ENDPOINT_URL": f"{endpoint.url}/predict", "RLOPS_CONFIG": CONFIG.to_json(),
           "RLOPS_WAREHOUSE": path, "SIMULATOR_REQUESTS": "40"}
    with testing_utils.functions_framework(SOURCE, "simulate", env) as url:
      headers, body = log_sinks.pubsub_cloud_event({}, topic="projects/local/topics/simulator-tick")
      assert testing_utils.post(url, headers, body).status_code == 200
    assert app.state.logger.flush(timeout=30.0)
  records = warehouse_lib.Warehouse(path).rewarded_records()
  assert len(records["request_id"]) == 40
  users = testing.users_of(model, records["observation"])
  np.testing.assert_allclose(records["reward"], model.reward(users, records["action"]), atol=1e-5)


class _Unreachable:
  """A Logger that cannot be reached: every delivery fails, retryably."""

  def deliver(self, message):
    raise OSError("connection refused")


def test_rewards_that_could_not_be_delivered_are_kept_and_sent_first_by_the_next_run(tmp_path):
  model = simulation.MovieLensModel.from_config(CONFIG)
  _push_model(str(tmp_path / "serving"), model)
  path = str(tmp_path / "warehouse.sqlite")
  kept = str(tmp_path / "feedback-undelivered.jsonl")
  app = serving_app.create_app(str(tmp_path / "serving"), log_sinks.InProcessSink(path),
                               outbox_path=str(tmp_path / "outbox.jsonl"))
  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    url = f"{endpoint.url}/predict"
    lost = traffic.run_simulation(url, model, 6, _Unreachable(), feedback_retry_seconds=0.2,
                                  undelivered_path=kept)
    assert lost["errors"] == 0 and lost["feedback_undelivered"] == 6
    assert lost["feedback_undelivered_file"] == kept
    with open(kept, "ab") as f:  # A line torn by a crash as it was written: it cannot be sent.
      f.write(b'{"request_id": "torn", "event_ti')
    sent = traffic.run_simulation(url, model, 4, log_sinks.InProcessSink(path), seed=1,
                                  undelivered_path=kept)
    assert app.state.logger.flush(timeout=30.0)
  assert sent["feedback_delivered"] == 10 and sent["feedback_undelivered_file"] is None
  assert not os.path.exists(kept)
  assert len(warehouse_lib.Warehouse(path).rewarded_records()["request_id"]) == 10


class _Refusing:
  """A Logger URL that answers 404: every message refused for good."""

  def deliver(self, message):
    raise log_sinks.RejectedMessage("the Logger answered 404")


class _Interrupting(_Refusing):
  """Interrupted (Ctrl-C) at its first delivery."""

  def deliver(self, message):
    raise KeyboardInterrupt


def test_rewards_refused_or_pending_at_an_interrupt_are_kept(tmp_path):
  model = simulation.MovieLensModel.from_config(CONFIG)
  _push_model(str(tmp_path / "serving"), model)
  kept = str(tmp_path / "feedback-undelivered.jsonl")
  app = serving_app.create_app(str(tmp_path / "serving"),
                               log_sinks.InProcessSink(str(tmp_path / "warehouse.sqlite")),
                               outbox_path=str(tmp_path / "outbox.jsonl"))
  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    url = f"{endpoint.url}/predict"
    refused = traffic.run_simulation(url, model, 3, _Refusing(), undelivered_path=kept)
    assert refused["feedback_rejected"] == refused["feedback_undelivered"] == 3
    try:  # The 3 kept rows and the first request's make a batch, interrupted as it goes out.
      traffic.run_simulation(url, model, 2, _Interrupting(), feedback_batch=4,
                             undelivered_path=kept)
      raise AssertionError("not interrupted")
    except KeyboardInterrupt:
      pass
  with open(kept, "rb") as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 4 and len({row["request_id"] for row in rows}) == 4
  assert [name for name in os.listdir(tmp_path) if "claimed" in name] == []


def test_vertex_endpoint_is_found_by_its_one_name():
  gcp = GcpConfig(project="my-rlops-project", region="us-central1", bucket="gs://b-rlops",
                  dataset="rlops", endpoint_name="rlops-movielens",
                  pipeline_image="us-docker.pkg.dev/p/r/pipeline:1",
                  serving_image="us-docker.pkg.dev/p/r/serving:1")
  requests = []

  def list_endpoints(**kwargs):
    requests.append(kwargs)
    return [types.SimpleNamespace(resource_name="projects/123/locations/us-central1/endpoints/456")]

  fake = types.SimpleNamespace(Endpoint=types.SimpleNamespace(list=list_endpoints))
  assert simulator.vertex_predict_url(gcp, fake) == (
      "https://us-central1-aiplatform.googleapis.com/v1/"
      "projects/123/locations/us-central1/endpoints/456:predict")
  assert requests == [{"filter": 'display_name="rlops-movielens"', "project": "my-rlops-project",
                       "location": "us-central1"}]
