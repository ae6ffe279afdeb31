"""The log transport for real, locally: the Pub/Sub sink publishes to Google's Pub/Sub
emulator, a push subscription delivers to the Logger served by functions-framework, and
a Logger failure is redelivered until the rows are stored, and a message it keeps refusing
is dead-lettered whole.

The emulator ships with the Cloud CLI (`gcloud beta emulators pubsub start`); the
`pubsub_emulator` fixture starts and stops it, and skips where it is absent.
"""
import contextlib
import os
import time

import pytest

from functions import testing_utils
from rlops import log_sinks
from rlops import warehouse as warehouse_lib

PROJECT = "rlops-test"
TOPIC = f"projects/{PROJECT}/topics/rlops-logs"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/rlops-logger"
DELIVERY_TIMEOUT_SECONDS = 120.0
LOGGER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")


def _message(index):
  request_id = f"emulated-{index}"
  return {"predictions": [{"request_id": request_id, "event_time": 100.0 + index,
                           "observation": [0.25, -0.5], "action": index % 3, "propensity": 0.5,
                           "model_version": "7", "source": "endpoint"}],
          "feedback": [{"request_id": request_id, "event_time": 200.0 + index, "reward": 1.5}]}


@contextlib.contextmanager
def _logger_over_a_store_that_is_down(tmp_path):
  """Yields (Logger URL, bring the store back, warehouse path): the Logger served by
  functions-framework fails while its warehouse folder is a file, as a store that is down."""
  blocked = tmp_path / "store"
  blocked.write_text("not a folder")
  warehouse_path = blocked / "warehouse.sqlite"
  with testing_utils.functions_framework(
      LOGGER_SOURCE, "log_records", {"RLOPS_WAREHOUSE": str(warehouse_path)}) as logger_url:
    yield logger_url, blocked.unlink, str(warehouse_path)


@pytest.mark.usefixtures("pubsub_emulator")
def test_published_logs_reach_the_warehouse_through_a_failing_then_recovered_logger(tmp_path):
  with _logger_over_a_store_that_is_down(tmp_path) as (logger_url, store_back, warehouse_path):
    from google.cloud import pubsub_v1  # pylint: disable=import-outside-toplevel
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(name=TOPIC)
    subscriber.create_subscription(
        name=SUBSCRIPTION, topic=TOPIC, ack_deadline_seconds=10,
        push_config=pubsub_v1.types.PushConfig(push_endpoint=logger_url))
    sink = log_sinks.PubSubSink(TOPIC, publisher=publisher)
    for index in range(3):
      sink.deliver(_message(index))

    # Pushed and refused: nothing is stored, nothing acknowledged.
    time.sleep(3.0)
    assert not os.path.exists(warehouse_path)
    store_back()
    # Redelivered once the store is back: every record, each once.
    testing_utils.wait_for(lambda: testing_utils.rewarded(warehouse_path) == 3,
                           DELIVERY_TIMEOUT_SECONDS, "the redelivered records stored")
    # A redelivered copy of an acknowledged message changes nothing.
    sink.deliver(_message(0))
    time.sleep(3.0)
    store = warehouse_lib.Warehouse(warehouse_path)
    try:
      records = store.rewarded_records()
      assert sorted(records["request_id"]) == ["emulated-0", "emulated-1", "emulated-2"]
    finally:
      store.close()


@pytest.mark.usefixtures("pubsub_emulator")
def test_a_message_the_logger_keeps_refusing_is_dead_lettered_whole_and_replays(tmp_path):
  """The dead-letter policy `rlops deploy` gives the Logger's subscription, with the fewest
  attempts Pub/Sub allows: the message is kept on the dead-letter topic's subscription, and
  published again once the store is back it is stored."""
  from google.cloud import pubsub_v1  # pylint: disable=import-outside-toplevel
  from google.protobuf import duration_pb2  # pylint: disable=import-outside-toplevel
  topic, dead_letters = f"{TOPIC}-dl-test", f"projects/{PROJECT}/topics/rlops-logs-dead-letter"
  kept = f"projects/{PROJECT}/subscriptions/rlops-logs-dead-letter"
  with _logger_over_a_store_that_is_down(tmp_path) as (logger_url, store_back, warehouse_path):
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for name in (topic, dead_letters):
      publisher.create_topic(name=name)
    subscriber.create_subscription(name=kept, topic=dead_letters)
    subscriber.create_subscription(request={
        "name": f"{SUBSCRIPTION}-dl-test", "topic": topic, "ack_deadline_seconds": 10,
        "push_config": {"push_endpoint": logger_url},
        "dead_letter_policy": {"dead_letter_topic": dead_letters, "max_delivery_attempts": 5},
        "retry_policy": {"minimum_backoff": duration_pb2.Duration(seconds=1),
                         "maximum_backoff": duration_pb2.Duration(seconds=2)}})
    log_sinks.PubSubSink(topic, publisher=publisher).deliver(_message(7))

    pulled = []
    def dead_lettered():
      pulled.extend(subscriber.pull(request={"subscription": kept, "max_messages": 10,
                                             "return_immediately": True},
                                    timeout=10).received_messages)
      return bool(pulled)
    testing_utils.wait_for(dead_lettered, DELIVERY_TIMEOUT_SECONDS, "the dead-lettered message")
    assert not os.path.exists(warehouse_path)
    message = pulled[0].message
    assert message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert message.data == log_sinks.encode_message(_message(7))  # Whole, as published.
    # Replayed: published again to the logs topic once the store is back.
    store_back()
    publisher.publish(topic, message.data).result(timeout=30)
    subscriber.acknowledge(request={"subscription": kept, "ack_ids": [pulled[0].ack_id]})
    testing_utils.wait_for(lambda: testing_utils.rewarded(warehouse_path) == 1,
                           DELIVERY_TIMEOUT_SECONDS, "the replayed records stored")
