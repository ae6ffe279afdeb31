"""The scheduler's ticks for real, locally: a tick published as Cloud Scheduler publishes it
(body `{}`) to the Simulator's or the Trigger's topic reaches the function served by
functions-framework through a push subscription of Google's Pub/Sub emulator, as Eventarc
delivers it in production (`cli/deploy.py`). The emulator (`pubsub_emulator` fixture) runs
once for the module; the tests skip where it is absent.
"""
import json
import os
import time
from typing import Any, Dict, List

import pytest
from google.cloud import pubsub_v1

from functions import testing_utils
from rlops import log_sinks, model_io, workdirs
from rlops import warehouse as warehouse_lib
from rlops.config import AgentConfig, Config, DataConfig, EnvironmentConfig
from rlops.serving import app as serving_app
from rlops.serving import server
from rlops.serving import testing as serving_testing

PROJECT = "rlops-test"
FUNCTIONS = os.path.dirname(os.path.abspath(__file__))
SIMULATOR_REQUESTS = 20
RETRAIN_THRESHOLD = 1000
# Longer than a tick's handling takes, so a slow run is not redelivered as if it had failed.
ACK_DEADLINE_SECONDS = 60
DELIVERY_SECONDS = 60.0


@pytest.fixture(scope="module")
def clients(pubsub_emulator):
  """(publisher, subscriber) of the module's emulator."""
  del pubsub_emulator  # Reached through PUBSUB_EMULATOR_HOST.
  publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
  yield publisher, subscriber
  subscriber.close()


def _push_topic(clients, name: str, url: str) -> str:
  """Creates topic `name` and its subscription `name` pushing to `url`; returns the topic."""
  publisher, subscriber = clients
  topic = publisher.topic_path(PROJECT, name)
  publisher.create_topic(name=topic)
  subscriber.create_subscription(
      name=subscriber.subscription_path(PROJECT, name), topic=topic,
      ack_deadline_seconds=ACK_DEADLINE_SECONDS,
      push_config=pubsub_v1.types.PushConfig(push_endpoint=url))
  return topic


def _tick(clients, name: str) -> None:
  """Publishes a tick to topic `name` as the Cloud Scheduler job of `cli/deploy.py` does."""
  clients[0].publish(clients[0].topic_path(PROJECT, name), b"{}").result(timeout=30)


def _pending(clients, name: str) -> int:
  """How many messages subscription `name` offers again: pushing stops, and a pull gets
  those refused or redelivered (not those acknowledged)."""
  subscriber = clients[1]
  subscription = subscriber.subscription_path(PROJECT, name)
  subscriber.modify_push_config(subscription=subscription, push_config=pubsub_v1.types.PushConfig())
  return len(subscriber.pull(subscription=subscription, max_messages=10, return_immediately=True,
                             timeout=10).received_messages)


def _printed(log_path: str, key: str) -> List[Dict[str, Any]]:
  """The JSON objects with `key` a function printed, one a line, among its other output."""
  objects = []
  with open(log_path) as log:
    for line in log:
      try:
        value = json.loads(line)
      except ValueError:
        continue
      if isinstance(value, dict) and key in value:
        objects.append(value)
  return objects


def test_simulator_tick_serves_predictions_logged_with_their_feedback(tmp_path, pubsub_emulator,
                                                                      clients):
  config = Config(data=DataConfig(seed=8), environment=EnvironmentConfig(num_movies=10, rank_k=4))
  env = config.environment
  model_io.save(model_io.new_agent(AgentConfig(), env.num_movies, env.rank_k), AgentConfig(),
                env.num_movies, env.rank_k, str(tmp_path / "serving" / "1"), {})
  warehouse = str(tmp_path / "warehouse.sqlite")
  simulator_log = str(tmp_path / "simulator.log")
  with testing_utils.functions_framework(
      os.path.join(FUNCTIONS, "logger", "main.py"), "log_records",
      {"RLOPS_WAREHOUSE": warehouse}, log_path=str(tmp_path / "logger.log")) as logger_url:
    logs_topic = _push_topic(clients, "rlops-logs", logger_url)
    app = serving_app.create_app(str(tmp_path / "serving"),
                                 log_sinks.PubSubSink(logs_topic, publisher=clients[0]),
                                 outbox_path=str(tmp_path / "outbox.jsonl"))
    with server.ServerThread(app) as endpoint, testing_utils.functions_framework(
        os.path.join(FUNCTIONS, "simulator", "main.py"), "simulate",
        {"ENDPOINT_URL": f"{endpoint.url}/predict", "RLOPS_CONFIG": config.to_json(),
         "SIMULATOR_REQUESTS": str(SIMULATOR_REQUESTS), "RLOPS_LOG_TOPIC": logs_topic,
         "PUBSUB_EMULATOR_HOST": pubsub_emulator},
        log_path=simulator_log) as simulator_url:
      _push_topic(clients, "rlops-simulator-tick", simulator_url)
      _tick(clients, "rlops-simulator-tick")
      testing_utils.wait_for(lambda: testing_utils.rewarded(warehouse) >= SIMULATOR_REQUESTS,
                             DELIVERY_SECONDS, "every served prediction joined to its feedback")
      assert _pending(clients, "rlops-simulator-tick") == 0
    [summary] = _printed(simulator_log, "feedback_delivered")
    assert (summary["requests"], summary["predictions"], summary["feedback_delivered"]) == (
        SIMULATOR_REQUESTS,) * 3
  # Exactly the Simulator's requests, each logged once and joined to its one reward.
  served = serving_testing.logged_predictions(warehouse)
  store = warehouse_lib.Warehouse(warehouse)
  rewarded = store.rewarded_records()["request_id"]
  store.close()
  assert len(served) == len(rewarded) == SIMULATOR_REQUESTS
  assert sorted(served) == sorted(rewarded)


def test_trigger_tick_counts_the_new_records_and_waits_below_its_threshold(tmp_path, clients):
  config = Config(workdir=str(tmp_path / "work"))
  os.makedirs(config.workdir)
  store = warehouse_lib.Warehouse(workdirs.LocalPaths(config.workdir).warehouse)
  for index in range(3):
    store.insert_predictions([{"request_id": f"r{index}", "event_time": 1000.0 + index,
                               "observation": [0.5] * 4, "action": 1, "propensity": 0.5,
                               "model_version": "1", "source": "endpoint"}])
    store.insert_feedback([{"request_id": f"r{index}", "event_time": 1001.0 + index,
                            "reward": 2.0}])
  store.close()
  trigger_log = str(tmp_path / "trigger.log")
  with testing_utils.functions_framework(
      os.path.join(FUNCTIONS, "trigger", "main.py"), "trigger",
      {"RLOPS_CONFIG": config.to_json(), "RETRAIN_THRESHOLD": str(RETRAIN_THRESHOLD)},
      log_path=trigger_log) as trigger_url:
    _push_topic(clients, "rlops-trigger-tick", trigger_url)
    published = time.time()
    _tick(clients, "rlops-trigger-tick")
    testing_utils.wait_for(lambda: _printed(trigger_log, "started"), DELIVERY_SECONDS,
                           "the Trigger's decision")
    assert _pending(clients, "rlops-trigger-tick") == 0
  [decision] = _printed(trigger_log, "started")
  assert not decision["started"] and decision["new_records"] == 3
  assert decision["reason"].endswith(f"fewer than {RETRAIN_THRESHOLD}")
  # The first window: every record up to the last whole second before the tick was handled.
  assert decision["window"]["begin"] == 0.0
  assert int(published) <= decision["window"]["end"] <= time.time()
