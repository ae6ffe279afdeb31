"""uvicorn's httptools protocol, answering the predict route in the parser's callbacks.

uvicorn runs each request as an ASGI cycle: a task, a scope, receive and send
coroutines and the app's middleware, more work than the prediction itself.
`PredictProtocol` answers POST <predict route> as soon as its body is complete,
inside the parser's callback, with the app's `PredictHandler`: the answers are
those of the ASGI route. Everything else takes uvicorn's ASGI path unchanged:
other routes and methods, a request pipelined behind one still in flight there, HTTP/1.0,
`Connection: close`, `Expect: 100-continue`, upgrades and a client not reading
its answers (where the `PredictRoute` middleware answers the predict route).

This module imports neither the app nor TensorFlow: the handler comes with the app.
"""
import functools
from typing import Any, Dict, Optional, Tuple

import orjson
from uvicorn.protocols.http import httptools_impl

_CLOSE_HEADER = (b"connection", b"close")


def http_protocol(app) -> Any:
  """uvicorn's `http` setting for `app`: PredictProtocol with its predict handler."""
  return functools.partial(PredictProtocol, handler=app.state.predict_handler)


class PredictProtocol(httptools_impl.HttpToolsProtocol):
  """HttpToolsProtocol answering POST `handler.path` without an ASGI cycle.

  Args:
    handler: The app's `PredictHandler` (HTTP rules and the predictor).
    *args, **kwargs: HttpToolsProtocol's (uvicorn passes them).
  """

  def __init__(self, *args, handler, **kwargs):
    super().__init__(*args, **kwargs)
    self._handler = handler
    self._path = handler.path.encode()
    self._chunks: Optional[list] = None  # The predict request being read; None: not one.
    self._size = 0
    self._refusal: Optional[Tuple[int, Dict[str, Any]]] = None

  def _answers_here(self) -> bool:
    parser = self.parser
    return (self.url == self._path and parser.get_method() == b"POST"
            and parser.get_http_version() == "1.1"
            and not parser.should_upgrade() and not self.expect_100_continue
            and (self.cycle is None or self.cycle.response_complete)
            and not self.flow.write_paused and _CLOSE_HEADER not in self.headers)

  def on_headers_complete(self) -> None:
    if not self._answers_here():
      super().on_headers_complete()
      return
    self._chunks, self._size = [], 0
    self._refusal = self._handler.refusal("POST", self.headers)

  def on_body(self, body: bytes) -> None:
    if self._chunks is None:
      super().on_body(body)
      return
    if self._refusal is not None:
      return  # Refused: the rest of the body is read and dropped.
    self._size += len(body)
    if self._size > self._handler.max_body_bytes:
      self._refusal = self._handler.too_large()
      self._chunks.clear()
      return
    self._chunks.append(body)

  def on_message_complete(self) -> None:
    if self._chunks is None:
      super().on_message_complete()
      return
    body = b"".join(self._chunks)
    self._chunks = None
    status, answer = self._refusal or self._handler.predict(body)
    self._refusal = None
    content = orjson.dumps(answer)
    self.transport.write(b"".join([
        httptools_impl.STATUS_LINE[status],
        *[name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers],
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(content), content]))
    self.on_response_complete()
