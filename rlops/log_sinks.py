"""Where logs go: the Logger function in process, or over HTTP as a Pub/Sub CloudEvent."""
import base64
import json
import os
import time
import uuid
from typing import Any, Dict, Protocol

import httpx

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


class LogSink(Protocol):
  """Delivers one message {"predictions": [...], "feedback": [...]}; raises on failure."""

  def deliver(self, message: Dict[str, Any]) -> None:
    ...


class InProcessSink:
  """Calls the Logger function's code directly, writing to a local warehouse."""

  def __init__(self, warehouse_path: str):
    self.warehouse_path = warehouse_path

  def deliver(self, message: Dict[str, Any]) -> None:
    from functions.logger import main as logger  # pylint: disable=import-outside-toplevel
    logger.write_message(message, self.warehouse_path)


def pubsub_cloud_event(message: Dict[str, Any], topic: str = "projects/local/topics/rlops-logs"):
  """(headers, body) of a binary-mode CloudEvent as Pub/Sub push delivers it."""
  message_id = uuid.uuid4().hex
  headers = {
      "ce-id": message_id, "ce-specversion": "1.0", "ce-type": PUBSUB_EVENT_TYPE,
      "ce-source": f"//pubsub.googleapis.com/{topic}",
      "ce-time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "content-type": "application/json",
  }
  body = {"message": {"data": base64.b64encode(json.dumps(message).encode()).decode(),
                      "messageId": message_id, "attributes": {}},
          "subscription": "projects/local/subscriptions/rlops-logger"}
  return headers, body


class CloudEventSink:
  """Posts each message to a Logger served by functions-framework (loopback by default)."""

  def __init__(self, url: str, timeout: float = 10.0):
    self.url = url
    self._client = httpx.Client(timeout=timeout)

  def deliver(self, message: Dict[str, Any]) -> None:
    headers, body = pubsub_cloud_event(message)
    response = self._client.post(self.url, headers=headers, json=body)
    response.raise_for_status()


def sink_from_env() -> LogSink:
  """RLOPS_LOG_URL: a Logger served over HTTP; else RLOPS_WAREHOUSE: its code in process."""
  if os.environ.get("RLOPS_LOG_URL"):
    return CloudEventSink(os.environ["RLOPS_LOG_URL"])
  if os.environ.get("RLOPS_WAREHOUSE"):
    return InProcessSink(os.environ["RLOPS_WAREHOUSE"])
  raise RuntimeError("set RLOPS_LOG_URL or RLOPS_WAREHOUSE: where logs go")
