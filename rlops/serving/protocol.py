"""uvicorn's httptools protocol, answering the predict route in the parser's callbacks.

uvicorn runs each request as an ASGI cycle: a task, a scope, receive and send
coroutines and the app's middleware, more work than the prediction itself.
`PredictProtocol` predicts POST <predict route> as soon as its body is complete,
inside the parser's callback, with the app's `PredictHandler`: the answers are
those of the ASGI route. The requests predicted in one event-loop iteration, on
all connections, are logged together (`GroupCommit`): one outbox write, then
their answers. A request refused by its headers is answered at once, as on the
ASGI path, and its body read and dropped. Everything else takes uvicorn's ASGI
path unchanged: other routes and methods, a request pipelined behind one still
in flight there, HTTP/1.0, `Connection: close`, `Expect: 100-continue` and a
client not reading its answers (where the `PredictRoute` middleware answers the
predict route).

This module imports neither the app nor TensorFlow: the handler comes with the app.
"""
import functools
import json
from typing import Any, Dict, List, Optional, Tuple

from uvicorn.protocols.http import httptools_impl

_CLOSE_HEADER = (b"connection", b"close")


def http_protocol(app) -> Any:
  """uvicorn's `http` setting for `app`: PredictProtocol with its predict handler."""
  handler = app.state.predict_handler
  return functools.partial(PredictProtocol, handler=handler, group=GroupCommit(handler))


class GroupCommit:
  """Requests predicted in the current event-loop iteration, logged and answered at its end.

  The first request of an iteration schedules `commit`, which appends the rows of
  all of them to the outbox in one write (`PredictHandler.commit`) and then
  answers each on its connection, in the order they were predicted. A request
  answered without a row waits here too while its connection has one waiting
  before it, so that the connection's answers keep the order of its requests.
  """

  def __init__(self, handler):
    self._handler = handler
    # (connection, the request's final answer, or the handler's pending request)
    self._waiting: List[Tuple["PredictProtocol", Any]] = []

  def add(self, connection: "PredictProtocol", outcome) -> None:
    if not self._waiting:
      connection.loop.call_soon(self.commit)
    self._waiting.append((connection, outcome))

  def commit(self) -> None:
    """Logs and answers the requests waiting (none: nothing to do)."""
    waiting, self._waiting = self._waiting, []
    if not waiting:
      return
    pending = [outcome for _, outcome in waiting if not isinstance(outcome, tuple)]
    answers = iter(self._handler.commit(pending) if pending else ())
    for connection, outcome in waiting:
      connection.answer(*(outcome if isinstance(outcome, tuple) else next(answers)))


class PredictProtocol(httptools_impl.HttpToolsProtocol):
  """HttpToolsProtocol answering POST `handler.path` without an ASGI cycle.

  Args:
    handler: The app's `PredictHandler` (HTTP rules and the predictor).
    group: The group commit of the server's connections.
    *args, **kwargs: HttpToolsProtocol's (uvicorn passes them).
  """

  def __init__(self, *args, handler, group: GroupCommit, **kwargs):
    super().__init__(*args, **kwargs)
    self._handler = handler
    self._group = group
    self._path = handler.path.encode()
    self._chunks: Optional[list] = None  # The predict request being read; None: not one.
    self._size = 0
    self._refused = False  # The request being read was answered: its body is dropped.
    self._waiting = 0  # Requests of this connection waiting in the group commit.

  def _answers_here(self) -> bool:
    parser = self.parser
    return (self.url == self._path and parser.get_method() == b"POST"
            and parser.get_http_version() == "1.1" and not self.expect_100_continue
            and (self.cycle is None or self.cycle.response_complete)
            and not self.flow.write_paused and _CLOSE_HEADER not in self.headers)

  def on_headers_complete(self) -> None:
    if not self._answers_here():
      if self._waiting:  # Answered first: answers go out in the order of the requests.
        self._group.commit()
      super().on_headers_complete()
      return
    self._chunks, self._size = [], 0
    if self.parser.should_upgrade():
      # The parser hands what follows the headers to the protocol upgraded to: the body is
      # never read, and neither is anything after it, so the connection closes.
      self._refuse(self._handler.predictor.refused(
          400, f"Upgrade is not supported on {self._handler.path}: send the request without "
               "it"), close=True)
      return
    refusal = self._handler.refusal("POST", self.headers)
    if refusal is not None:
      self._refuse(refusal)

  def _refuse(self, answer: Tuple[int, Dict[str, Any]], close: bool = False) -> None:
    """Answers the request being read now, without its body, which is then dropped."""
    self._refused = True
    self._chunks.clear()
    if self._waiting:  # Answered first: answers go out in the order of the requests.
      self._group.commit()
    self._send(*answer, close=close)

  def on_body(self, body: bytes) -> None:
    if self._chunks is None:
      super().on_body(body)
      return
    if self._refused:
      return
    self._size += len(body)
    if self._size > self._handler.max_body_bytes:
      self._refuse(self._handler.too_large())
      return
    self._chunks.append(body)

  def on_message_complete(self) -> None:
    if self._chunks is None:
      super().on_message_complete()
      return
    body = b"".join(self._chunks)
    self._chunks = None
    if self._refused:
      self._refused = False
      return
    outcome = self._handler.begin(body)
    if isinstance(outcome, tuple) and not self._waiting:
      self._send(*outcome)
    else:
      self._waiting += 1
      self._group.add(self, outcome)

  def answer(self, status: int, answer: Dict[str, Any]) -> None:
    """The group commit's answer to this connection's oldest waiting request."""
    self._waiting -= 1
    self._send(status, answer)

  def _send(self, status: int, answer: Dict[str, Any], close: bool = False) -> None:
    if self.transport.is_closing():
      return
    self._write(*self._handler.encode(status, answer), close=close)
    if close:
      self.transport.close()
      return
    self.on_response_complete()

  def _unsupported_upgrade_warning(self) -> None:
    if not self.transport.is_closing():  # Not an upgrade of the predict route, answered 400.
      super()._unsupported_upgrade_warning()

  def _write(self, status: int, content: bytes, close: bool = False) -> None:
    self.transport.write(b"".join([
        httptools_impl.STATUS_LINE[status],
        *[name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers],
        b"content-type: application/json\r\n", b"connection: close\r\n" if close else b"",
        b"content-length: %d\r\n\r\n" % len(content), content]))

  def send_400_response(self, msg: str) -> None:
    """uvicorn's answer to bytes its parser refuses, as JSON with the reason like every answer
    of the route; the connection closes, since where the next request starts is unknown.

    A whole request being answered on the ASGI path keeps its answer: the connection closes
    after it, and the refused bytes are dropped (after `Connection: close`, RFC 9112 has
    them ignored)."""
    cycle = self.cycle
    if cycle is not None and not cycle.response_complete and not cycle.more_body:
      cycle.keep_alive = False
      return
    if self._waiting:  # Answered first: answers go out in the order of the requests.
      self._group.commit()
    self._write(400, json.dumps({"error": f"invalid HTTP: {msg}"}).encode(), close=True)
    self.transport.close()

  def shutdown(self) -> None:
    if self._waiting:  # Answered before the connection closes.
      self._group.commit()
    super().shutdown()
