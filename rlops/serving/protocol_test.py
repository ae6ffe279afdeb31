"""The predict route answered in uvicorn's parser callbacks, beside uvicorn's ASGI path."""
import json
import socket

import httpx
import numpy as np

from rlops import testing
from rlops.serving import protocol, server
from rlops.serving.testing import instances, logged_predictions

K = 4  # rank_k of testing.small_model()


def _request(body: bytes, method: str = "POST", path: str = "/predict", version: str = "1.1",
             headers: str = "Content-Type: application/json\r\n") -> bytes:
  return (f"{method} {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n{headers}"
          f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _responses(sock: socket.socket, count: int):
  """The next `count` (status, JSON body) on `sock`."""
  reader = sock.makefile("rb")
  answers = []
  for _ in range(count):
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) != b"\r\n":
      name, _, value = line.partition(b":")
      if name.strip().lower() == b"content-length":
        length = int(value)
    answers.append((status, json.loads(reader.read(length))))
  return answers


def _body(observations, ids=None) -> bytes:
  return json.dumps(instances(observations, ids)).encode()


def test_the_parser_path_and_the_asgi_path_answer_alike(tmp_path, serving, make_app):
  observations = testing.small_model().observe(np.arange(3))
  app = make_app(max_body_bytes=5_000)
  requests = {
      "new id": _body(observations[:1], ["both-0"]),
      "reused id": _body(observations[:1], ["both-0"]),
      "reused id, other observation": _body(observations[1:2], ["both-0"]),
      "malformed": b"{not json",
      "too deep": b'{"instances": ' + b"[" * 2000 + b"]" * 2000 + b"}",
      "too large": b'{"instances": [' + b" " * 6000 + b"]}",
      # A field name with a lone surrogate (escaped in the JSON): quoted in the reason, escaped.
      "unknown field": b'{"instances": [{"observation": [0.5, 0.5, 0.5, 0.5], "\\ud800": 1}]}',
  }
  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    answers = {}
    # Keep-alive HTTP/1.1 takes the parser path; Connection: close and HTTP/1.0 take uvicorn's
    # ASGI cycle (the PredictRoute middleware).
    for path, options in (("parser", {}), ("asgi, Connection: close",
                                           {"headers": "Content-Type: application/json\r\n"
                                                       "Connection: close\r\n"}),
                          ("asgi, HTTP/1.0", {"version": "1.0"})):
      answers[path] = {}
      for name, body in requests.items():
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
          sock.sendall(_request(body, **options))
          answers[path][name] = _responses(sock, 1)[0]
      for name, options in (("text/plain", {"headers": "Content-Type: text/plain\r\n"}),
                            ("GET", {"method": "GET"})):
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
          sock.sendall(_request(b"{}", **options))
          answers[path][name] = _responses(sock, 1)[0]
    stats = httpx.get(f"{endpoint.url}/stats").json()
  expected = {"new id": 200, "reused id": 200, "reused id, other observation": 409,
              "malformed": 400, "too deep": 400, "too large": 413, "unknown field": 400,
              "text/plain": 415, "GET": 405}
  for path, by_name in answers.items():
    assert {name: status for name, (status, _) in by_name.items()} == expected, path
  # One prediction, answered alike on every path; the refusals give the same reasons.
  assert len({json.dumps(by_name["new id"][1]) for by_name in answers.values()}) == 1
  for name in expected:
    if name not in ("new id", "reused id"):
      assert len({by_name[name][1]["error"] for by_name in answers.values()}) == 1, name
  assert stats["requests"] == 3 * len(expected) and stats["predictions"] == 1
  assert stats["repeated"] == 5 and stats["conflicts"] == 3
  assert answers["parser"]["unknown field"][1]["error"] == (
      "instance 0: unknown field(s) '\\ud800'")


def test_pipelined_and_split_requests_are_answered_in_order(tmp_path, serving, make_app):
  observations = testing.small_model().observe(np.arange(4))
  app = make_app(max_body_bytes=2_000)
  ids = [f"pipelined-{i}" for i in range(4)]
  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
      # In one write: a predict request, one behind an ASGI request still in flight, a body
      # over the limit (read and dropped), a refusal whose reason quotes a lone surrogate,
      # then one more on the same connection.
      sock.sendall(_request(_body(observations[:1], ids[:1]))
                   + _request(b"", method="GET", path="/stats", headers="")
                   + _request(_body(observations[1:2], ids[1:2]))
                   + _request(b"[" + b" " * 2500 + b"]")
                   + _request(b'{"instances": [{"\\udfff": 1}]}')
                   + _request(_body(observations[2:3], ids[2:3])))
      answers = _responses(sock, 6)
      # A request split across writes, byte by byte in its head.
      request = _request(_body(observations[3:4], ids[3:4]))
      for index in range(0, 80):
        sock.sendall(request[index:index + 1])
      sock.sendall(request[80:])
      answers += _responses(sock, 1)
    assert app.state.logger.flush(timeout=30.0)
  assert [status for status, _ in answers] == [200, 200, 200, 413, 400, 200, 200]
  assert [answers[i][1]["predictions"][0]["request_id"] for i in (0, 2, 5, 6)] == ids
  assert answers[1][1]["requests"] == 1  # /stats answered after the first prediction only.
  assert sorted(logged_predictions(tmp_path / "warehouse.sqlite")) == sorted(ids)


def test_an_unexpected_failure_is_a_json_500_on_both_paths_and_the_connection_stays(
    tmp_path, serving, make_app, monkeypatch):
  observations = testing.small_model().observe(np.arange(2))
  app = make_app()
  predictor = app.state.predict_handler.predictor
  begin = predictor.begin

  def failing_on_request(body: bytes):
    if b"fail-" in body:
      raise RuntimeError("injected failure")
    return begin(body)

  monkeypatch.setattr(predictor, "begin", failing_on_request)
  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
      sock.sendall(_request(_body(observations[:1], ["fail-parser"]))
                   + _request(_body(observations[1:2], ["after-failure"])))
      answers = _responses(sock, 2)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
      sock.sendall(_request(_body(observations[:1], ["fail-asgi"]), version="1.0"))
      answers += _responses(sock, 1)
    assert app.state.logger.flush(timeout=30.0)
  assert [status for status, _ in answers] == [500, 200, 500]
  assert answers[0][1] == answers[2][1] == {"error": "internal error"}
  assert answers[1][1]["predictions"][0]["request_id"] == "after-failure"
  assert list(logged_predictions(tmp_path / "warehouse.sqlite")) == ["after-failure"]


def test_requests_read_in_one_event_loop_iteration_are_logged_in_one_write(
    tmp_path, serving, make_app, monkeypatch):
  observations = testing.small_model().observe(np.arange(3))
  app = make_app()
  logger = app.state.logger
  append = logger.append
  writes = []

  def counted_append(rows):
    writes.append([row["request_id"] for row in rows])
    append(rows)

  monkeypatch.setattr(logger, "append", counted_append)
  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
      # Read at once: "a" again while its first request waits to be logged is refused (409);
      # its answer still comes in its place.
      sock.sendall(_request(_body(observations[:1], ["a"]))
                   + _request(_body(observations[1:2], ["b"]))
                   + _request(_body(observations[:1], ["a"]))
                   + _request(_body(observations[2:3], ["c"])))
      answers = _responses(sock, 4)
    assert logger.flush(timeout=30.0)
  assert [status for status, _ in answers] == [200, 200, 409, 200]
  assert [answers[i][1]["predictions"][0]["request_id"] for i in (0, 1, 3)] == ["a", "b", "c"]
  assert "being served by a concurrent request" in answers[2][1]["error"]
  assert writes == [["a", "b", "c"]]
  assert sorted(logged_predictions(tmp_path / "warehouse.sqlite")) == ["a", "b", "c"]


def test_a_shutdown_in_the_iteration_of_a_request_answers_and_logs_it_first(
    tmp_path, serving, make_app, monkeypatch):
  observations = testing.small_model().observe(np.arange(1))
  app = make_app()
  complete = protocol.PredictProtocol.on_message_complete

  def shut_down_at_once(self):
    complete(self)
    if self._waiting:  # uvicorn shuts the connection down before the group commit runs.
      self.shutdown()

  monkeypatch.setattr(protocol.PredictProtocol, "on_message_complete", shut_down_at_once)
  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
      sock.sendall(_request(_body(observations, ["last"])))
      [(status, answer)] = _responses(sock, 1)
      assert sock.recv(1) == b""  # Then the connection is closed.
    assert app.state.logger.flush(timeout=30.0)
  assert status == 200
  assert answer["predictions"][0]["request_id"] == "last"
  logged = logged_predictions(tmp_path / "warehouse.sqlite")
  assert list(logged) == ["last"]
  assert logged["last"][1] == answer["predictions"][0]["action"]


def test_requests_at_the_edges_of_http_get_json_answers_and_keep_the_stream_in_step(
    tmp_path, serving, make_app):
  observation = testing.small_model().observe(np.arange(1))
  app = make_app()
  head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
  body = _body(observation, ["spaced"])
  with server.ServerThread(app) as endpoint:
    assert app.state.models.wait(30.0)

    def answer_then_closed(request: bytes):
      with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
        sock.sendall(request)
        [answer] = _responses(sock, 1)
        sock.settimeout(2.0)  # Closed at once, not when uvicorn's 5 s keep-alive runs out.
        return [answer], sock.recv(1) == b""

    # Whitespace after a Content-Length is not part of it.
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
      sock.sendall(head + b"Content-Type: application/json\r\nContent-Length: %d \r\n\r\n"
                   % len(body) + body + _request(b"", method="GET", path="/health", headers=""))
      [(status, answer), (health, _)] = _responses(sock, 2)
    assert status == 200 and answer["predictions"][0]["request_id"] == "spaced"
    assert health == 200  # The next request on the connection, read where it starts.
    # What the HTTP parser refuses: a JSON reason, and the connection closes.
    [(status, answer)], closed = answer_then_closed(
        head + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert status == 400 and answer["error"].startswith("invalid HTTP") and closed
    # Refused by its headers while the client waits for 100 Continue to send the body: the
    # body could come after the answer, where the next request would be read, so it closes.
    [(status, answer)], closed = answer_then_closed(
        head + b"Content-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n")
    assert status == 415 and "application/json" in answer["error"] and closed
    # A Content-Length over the limit is answered before the body is sent; the body is then
    # read and dropped, and the next request on the connection is read where it starts.
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
      sock.sendall(head + b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n")
      [(status, answer)] = _responses(sock, 1)
      assert status == 413 and "at most" in answer["error"]
      sock.sendall(b" " * 2_000_000 + _request(b"", method="GET", path="/health", headers=""))
      assert [status for status, _ in _responses(sock, 1)] == [200]
    # An upgrade hands what follows the headers to another protocol: refused with its reason,
    # and the connection closes.
    [(status, answer)], closed = answer_then_closed(
        head + b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert status == 400 and "Upgrade is not supported" in answer["error"] and closed
    # Bytes after a request with Connection: close (ASGI path) are ignored: it is answered.
    closing = _body(observation, ["then-garbage"])
    [(status, answer)], closed = answer_then_closed(
        head + b"Connection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(closing) + closing + b"\x00garbage\r\n\r\n")
    assert status == 200 and answer["predictions"][0]["request_id"] == "then-garbage" and closed
    assert app.state.logger.flush(timeout=30.0)
  assert sorted(logged_predictions(tmp_path / "warehouse.sqlite")) == ["spaced", "then-garbage"]
