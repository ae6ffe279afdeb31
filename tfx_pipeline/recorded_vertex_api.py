"""A loopback HTTP server answering Vertex AI REST requests with recorded responses, for tests.

The recordings are Vertex AI v1 REST response bodies (testdata/vertex_lineage: a
startup run and a retraining run warm-started from its model, pushed to one
endpoint); its routes.json maps each request, "GET <path>[?<parameter>=<value>&...]"
without the client's `$alt`, to its file, in the order `VertexMetadata.lineage`
sends them.
"""
import http.server
import json
import pathlib
import threading
import urllib.parse
from typing import Any, Dict, List, Mapping

RECORDINGS = pathlib.Path(__file__).parent / "testdata" / "vertex_lineage"


def recorded_lineage() -> Dict[str, Any]:
  """{request: response body} of the recorded lineage walk, in the order it is walked."""
  routes = json.loads((RECORDINGS / "routes.json").read_text())
  return {request: json.loads((RECORDINGS / file).read_text()) for request, file in routes.items()}


def request_key(method: str, target: str) -> str:
  """"METHOD path?parameters" of a request, without the GAPIC REST transport's `$alt`."""
  url = urllib.parse.urlsplit(target)
  parameters = [f"{name}={value}" for name, value in urllib.parse.parse_qsl(url.query)
                if name != "$alt"]
  return f"{method} {urllib.parse.unquote(url.path)}" + (
      "?" + "&".join(sorted(parameters)) if parameters else "")


class RecordedVertexApi:
  """Serves `responses` ({request key: JSON body}) on 127.0.0.1; unknown requests get 404.

  A context manager; `url` is the API endpoint to give the clients, `requests` the
  request keys received and `authorizations` their Authorization headers.
  """

  def __init__(self, responses: Mapping[str, Any]):
    self.requests: List[str] = []
    self.authorizations: List[str] = []
    api = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def do_GET(self):  # pylint: disable=invalid-name
        key = request_key("GET", self.path)
        api.requests.append(key)
        api.authorizations.append(self.headers.get("Authorization", ""))
        if key in responses:
          self._reply(200, responses[key])
        else:
          self._reply(404, {"error": {"code": 404, "message": f"no recording of {key}",
                                      "status": "NOT_FOUND"}})

      def log_message(self, *unused_args):
        pass

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

  def __enter__(self) -> "RecordedVertexApi":
    threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self._server.shutdown()
    self._server.server_close()
