"""A local HTTP stand-in for the few Elasticsearch 8 endpoints the search backend uses.

Elasticsearch cannot run on the test machines, so this server on 127.0.0.1 plays it for the
official client. It keeps indices and documents in memory and records every request. It also
checks what a real node would reject, such as a body that is not a JSON object, and what the
runner must not do, such as writing to an index it did not create with an explicit mapping. Every response carries the
``X-Elastic-Product: Elasticsearch`` header that the 8.x client requires.

Modes switch its behaviour to simulate an index that cannot be reached:
``ok`` serves requests, ``fail`` returns 503 to everything, ``slow`` waits ``delay`` seconds
before it serves, and ``refuse`` closes the listening socket so connections are refused.
``reject`` responds to document writes with 400 as a node does for a document that does not fit
the mapping.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

MODES = ("ok", "fail", "slow", "refuse", "reject")

INFO = {
    "name": "standin-node",
    "cluster_name": "standin",
    "cluster_uuid": "standin-cluster",
    "version": {"number": "8.15.0", "build_flavor": "default", "lucene_version": "9.11.1",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0"},
    "tagline": "You Know, for Search",
}


@dataclass
class RecordedRequest:
    """One request as the stand-in received it, with the path already URL-decoded."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class StandinIndex:
    """An index: the mappings it was created with and its documents by id."""

    mappings: dict[str, Any]
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)


class ElasticsearchStandin:
    """The stand-in server. Start it with ``start()``, stop it with ``stop()``.

    Attributes:
        indices: created indices by name.
        requests: every request received in any mode except ``refuse``, in order.
        problems: requests that broke a rule of the client protocol, as messages.
    """

    def __init__(self) -> None:
        self.indices: dict[str, StandinIndex] = {}
        self.requests: list[RecordedRequest] = []
        self.problems: list[str] = []
        self.mode = "ok"
        self.delay = 2.0
        self.port = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        """Base URL of the server, for ``georeference.search.url``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen on 127.0.0.1, on a random free port the first time, then on the same one."""
        standin = self

        class Handler(_Handler):
            owner = standin

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="es-standin",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the listening socket and drop open keep-alive connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # Already closed by the client.
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def set_mode(self, mode: str) -> None:
        """Switch the behaviour. ``refuse`` stops the listener, and leaving it restarts it."""
        if mode not in MODES:
            raise ValueError(f"invalid stand-in mode {mode!r}, expected one of {MODES}")
        if mode == "refuse" and self.mode != "refuse":
            self.stop()
        elif mode != "refuse" and self.mode == "refuse":
            self.start()
        self.mode = mode

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Return the recorded requests with this method and decoded path."""
        return [request for request in self.requests
                if request.method == method and request.path == path]

    # Request handling, called from the server threads.

    def handle(self, method: str, path: str, headers: dict[str, str],
               raw_body: bytes) -> tuple[int, Any]:
        """Record a request and return (status, JSON body) as a node would."""
        body = self._decode_body(method, path, headers, raw_body)
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body))
            if self.mode == "fail":
                return 503, _error(503, "unavailable_shards_exception",
                                   "stand-in switched to fail")
        if self.mode == "slow":
            time.sleep(self.delay)
        with self._lock:
            return self._route(method, path, body)

    def _decode_body(self, method: str, path: str, headers: dict[str, str],
                     raw_body: bytes) -> Any:
        if not raw_body:
            return None
        content_type = headers.get("content-type", "")
        if "json" not in content_type:
            self.problems.append(f"{method} {path}: body sent as {content_type!r}, not JSON")
        try:
            return json.loads(raw_body)
        except ValueError:
            self.problems.append(f"{method} {path}: body is not valid JSON")
            return raw_body.decode("utf-8", "replace")

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = [part for part in path.split("/") if part]
        if not parts:
            if method in ("GET", "HEAD"):
                return 200, INFO
        elif len(parts) == 1:
            return self._index_endpoint(method, parts[0], body)
        elif len(parts) == 3 and parts[1] == "_doc":
            return self._document_endpoint(method, parts[0], parts[2], body)
        self.problems.append(f"{method} {path}: endpoint not served by the stand-in")
        return 400, _error(400, "illegal_argument_exception", f"no handler for {method} {path}")

    def _index_endpoint(self, method: str, name: str, body: Any) -> tuple[int, Any]:
        if method == "HEAD":
            return (200 if name in self.indices else 404), None
        if method != "PUT":
            self.problems.append(f"{method} /{name}: unexpected index request")
            return 405, _error(405, "method_not_allowed", f"{method} /{name}")
        if name in self.indices:
            return 400, _error(400, "resource_already_exists_exception",
                               f"index [{name}] already exists")
        mappings = body.get("mappings") if isinstance(body, dict) else None
        if not isinstance(mappings, dict) or not mappings.get("properties"):
            self.problems.append(f"PUT /{name}: index created without explicit mappings")
            return 400, _error(400, "mapper_parsing_exception", "explicit mappings expected")
        self.indices[name] = StandinIndex(mappings=mappings)
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _document_endpoint(self, method: str, name: str, doc_id: str,
                           body: Any) -> tuple[int, Any]:
        index = self.indices.get(name)
        if index is None:
            if method in ("PUT", "POST"):
                self.problems.append(f"{method} /{name}/_doc/{doc_id}: index not created first")
            return 404, _error(404, "index_not_found_exception", f"no such index [{name}]")

        if method in ("PUT", "POST"):
            if self.mode == "reject":
                return 400, _error(400, "document_parsing_exception",
                                   "stand-in switched to reject documents")
            if not isinstance(body, dict):
                self.problems.append(f"{method} /{name}/_doc/{doc_id}: body is not an object")
                return 400, _error(400, "mapper_parsing_exception", "expected a JSON object")
            result = "updated" if doc_id in index.documents else "created"
            index.documents[doc_id] = body
            index.versions[doc_id] = index.versions.get(doc_id, 0) + 1
            status = 200 if result == "updated" else 201
            return status, _write_result(name, doc_id, index.versions[doc_id], result)

        if method == "GET":
            if doc_id not in index.documents:
                return 404, {"_index": name, "_id": doc_id, "found": False}
            return 200, {"_index": name, "_id": doc_id, "found": True,
                         "_version": index.versions[doc_id], "_source": index.documents[doc_id]}

        if method == "DELETE":
            if doc_id not in index.documents:
                return 404, _write_result(name, doc_id, 1, "not_found")
            del index.documents[doc_id]
            index.versions[doc_id] += 1
            return 200, _write_result(name, doc_id, index.versions[doc_id], "deleted")

        self.problems.append(f"{method} /{name}/_doc/{doc_id}: unexpected document request")
        return 405, _error(405, "method_not_allowed", f"{method} on a document")


def _error(status: int, error_type: str, reason: str) -> dict[str, Any]:
    return {"error": {"root_cause": [{"type": error_type, "reason": reason}],
                      "type": error_type, "reason": reason}, "status": status}


def _write_result(index: str, doc_id: str, version: int, result: str) -> dict[str, Any]:
    return {"_index": index, "_id": doc_id, "_version": version, "result": result,
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "_seq_no": version - 1, "_primary_term": 1}


class _Handler(BaseHTTPRequestHandler):
    owner: ElasticsearchStandin
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet; the stand-in records requests itself."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = unquote(urlsplit(self.path).path)

        status, body = self.owner.handle(self.command, path, headers, raw_body)

        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # In "slow" mode the client has timed out and closed the connection.
            self.close_connection = True
