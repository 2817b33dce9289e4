"""A real HTTP origin on 127.0.0.1 for tests: stdlib ``ThreadingHTTPServer`` in a thread.

One server per test process, started on first use. The ``origin`` fixture hands it out with
counters and custom routes reset; ``origin_server`` (session scope) hands out the same server
without resetting. Import the fixture functions (``origin_fixture``, ``origin_server_fixture``)
into a conftest or test module to use them; they register under the short names.

Built-in routes (query parameters in brackets):

``/files/{path}``                      a file from the test corpus (``tests/images``)
``/status/{code}``                     an empty-ish response with that status
``/redirect [to, status=302]``         one redirect to ``to`` (any URL, absolute or relative)
``/chain/{n} [to, status=302]``        ``n`` redirects, then ``to`` (a redirect) or ``b"end"``
``/slow-headers [delay=1]``            sleeps before the status line, then ``b"slow"``
``/trickle [chunks=100, interval=0.1, size=1, length=0]``
                                       headers at once, then one chunk per interval
``/huge [size, length=1, chunk=65536, wait=0]``
                                       ``size`` zero bytes, with Content-Length (``length=1``) or
                                       chunked (``length=0``); ``wait`` seconds after the headers;
                                       :meth:`Origin.stats` tells how much was sent
``/flaky/{name} [fail=1, status=503, file]``
                                       answers ``status`` to the first ``fail`` requests for this
                                       path, then 200 with ``file`` (a corpus path) or ``b"ok"``
``/echo``                              200 with the request headers as JSON

Custom routes: :meth:`Origin.route` (a fixed answer) and :meth:`Origin.handler` (a function of
the request handler). Every request is counted and recorded per path (query excluded).
"""

from __future__ import annotations

import atexit
import json
import mimetypes
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.corpus import IMAGES as IMAGES_DIR

Handler = Callable[["OriginRequestHandler"], None]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class TransferStats:
    """What a streaming route managed to write before finishing or being cut off."""

    sent: int = 0
    finished: bool = False  # the route wrote everything it meant to
    aborted: bool = False  # the client went away first


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, int] = field(default_factory=dict)
    requests: dict[str, list[RecordedRequest]] = field(default_factory=dict)
    stats: dict[str, TransferStats] = field(default_factory=dict)
    routes: dict[str, Handler] = field(default_factory=dict)


class Origin:
    """Handle on the running origin server."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve HTTPS with this server context instead of plain HTTP."""
        self._state = _State()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), OriginRequestHandler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._server.daemon_threads = True
        self._server.origin_state = self._state  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-origin", daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this origin (``path`` may carry a query)."""
        return self.base_url + "/" + path.lstrip("/")

    def count(self, path: str) -> int:
        """How many requests reached ``path`` (query excluded) since the last reset."""
        with self._state.lock:
            return self._state.counts.get(_norm(path), 0)

    def total(self) -> int:
        """How many requests reached the origin since the last reset."""
        with self._state.lock:
            return sum(self._state.counts.values())

    def requests(self, path: str) -> list[RecordedRequest]:
        """Requests that reached ``path``, oldest first."""
        with self._state.lock:
            return list(self._state.requests.get(_norm(path), []))

    def stats(self, path: str) -> TransferStats:
        """A copy of the transfer stats of the last streaming response on ``path``."""
        with self._state.lock:
            current = self._state.stats.get(_norm(path), TransferStats())
            return TransferStats(current.sent, current.finished, current.aborted)

    def wait_for_stats(
        self, path: str, done: Callable[[TransferStats], bool], timeout: float = 5.0
    ) -> TransferStats:
        """Poll :meth:`stats` until ``done`` holds (or the timeout passes); return the last."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.stats(path)
            if done(current) or time.monotonic() > deadline:
                return current
            time.sleep(0.01)

    def route(
        self,
        path: str,
        *,
        status: int = 200,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``path`` with a fixed response (until the next reset)."""
        fixed_headers = dict(headers or {})

        def answer(handler: OriginRequestHandler) -> None:
            handler.send_body(status, body, fixed_headers)

        self.handler(path, answer)

    def handler(self, path: str, fn: Handler) -> None:
        """Answer ``path`` by calling ``fn(request_handler)`` (until the next reset)."""
        with self._state.lock:
            self._state.routes[_norm(path)] = fn

    def reset(self) -> None:
        """Forget counts, recorded requests, stats and custom routes."""
        with self._state.lock:
            self._state.counts.clear()
            self._state.requests.clear()
            self._state.stats.clear()
            self._state.routes.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _norm(path: str) -> str:
    return "/" + urlsplit(path).path.lstrip("/")


class OriginRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real origins
    server_version = "test-origin"

    # --- plumbing

    @property
    def state(self) -> _State:
        return self.server.origin_state  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        self.route_path = "/" + parts.path.lstrip("/")
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = RecordedRequest(
            self.command, self.route_path, self.query, dict(self.headers.items()), body
        )
        with self.state.lock:
            self.state.counts[self.route_path] = self.state.counts.get(self.route_path, 0) + 1
            self.request_number = self.state.counts[self.route_path]
            self.state.requests.setdefault(self.route_path, []).append(record)
            custom = self.state.routes.get(self.route_path)
        try:
            if custom is not None:
                custom(self)
            else:
                self._builtin()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    def send_body(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Send a complete response with Content-Length."""
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/octet-stream")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def write_chunk(self, data: bytes) -> None:
        """Write one chunk of a ``Transfer-Encoding: chunked`` body (empty = the last one)."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _record_sent(self, stats: TransferStats, count: int) -> None:
        with self.state.lock:
            stats.sent += count

    # --- built-in routes

    def _builtin(self) -> None:
        path, q = self.route_path, self.query
        if path.startswith("/files/"):
            self._file(path.removeprefix("/files/"))
        elif path.startswith("/status/"):
            code = int(path.removeprefix("/status/"))
            self.send_body(code, f"status {code}".encode(), {"Content-Type": "text/plain"})
        elif path == "/redirect":
            self._redirect(q.get("to", "/files/jpeg/baseline-tiny-nometa.jpg"))
        elif path.startswith("/chain/"):
            left = int(path.removeprefix("/chain/"))
            suffix = "?" + urlsplit(self.path).query if urlsplit(self.path).query else ""
            if left > 0:
                self._redirect(f"/chain/{left - 1}{suffix}")
            elif "to" in q:
                self._redirect(q["to"])
            else:
                self.send_body(200, b"end", {"Content-Type": "text/plain"})
        elif path == "/slow-headers":
            time.sleep(float(q.get("delay", "1")))
            self.send_body(200, b"slow", {"Content-Type": "text/plain"})
        elif path == "/trickle":
            self._trickle()
        elif path == "/huge":
            self._huge()
        elif path.startswith("/flaky/"):
            if self.request_number <= int(q.get("fail", "1")):
                code = int(q.get("status", "503"))
                self.send_body(code, b"try again", {"Content-Type": "text/plain"})
            elif "file" in q:
                self._file(q["file"])
            else:
                self.send_body(200, b"ok", {"Content-Type": "text/plain"})
        elif path == "/echo":
            body = json.dumps(dict(self.headers.items())).encode()
            self.send_body(200, body, {"Content-Type": "application/json"})
        else:
            self.send_body(404, b"no such route", {"Content-Type": "text/plain"})

    def _file(self, relative: str) -> None:
        root = IMAGES_DIR.resolve()
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            self.send_body(404, b"not found", {"Content-Type": "text/plain"})
            return
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self.send_body(200, target.read_bytes(), {"Content-Type": content_type})

    def _redirect(self, location: str) -> None:
        status = int(self.query.get("status", "302"))
        self.send_body(status, b"", {"Location": location})

    def _stream(self, chunks: Iterator[bytes], length: int | None, wait: float = 0.0) -> None:
        stats = TransferStats()
        with self.state.lock:
            self.state.stats[self.route_path] = stats
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()
        try:
            if wait:
                time.sleep(wait)
            for chunk in chunks:
                if length is None:
                    self.write_chunk(chunk)
                else:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                self._record_sent(stats, len(chunk))
            if length is None:
                self.write_chunk(b"")
            with self.state.lock:
                stats.finished = True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            with self.state.lock:
                stats.aborted = True
            self.close_connection = True

    def _trickle(self) -> None:
        q = self.query
        count, interval = int(q.get("chunks", "100")), float(q.get("interval", "0.1"))
        size = int(q.get("size", "1"))

        def chunks() -> Iterator[bytes]:
            for _ in range(count):
                yield b"x" * size
                time.sleep(interval)

        self._stream(chunks(), count * size if q.get("length") == "1" else None)

    def _huge(self) -> None:
        q = self.query
        size, chunk = int(q.get("size", str(64 << 20))), int(q.get("chunk", "65536"))
        block = bytes(chunk)

        def chunks() -> Iterator[bytes]:
            left = size
            while left > 0:
                yield block[: min(left, chunk)]
                left -= chunk

        self._stream(
            chunks(), size if q.get("length", "1") == "1" else None, float(q.get("wait", "0"))
        )


_lock = threading.Lock()
_shared: Origin | None = None


def shared_origin() -> Origin:
    """The process-wide origin, started on first use and stopped at exit."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = Origin()
            atexit.register(_shared.close)
        return _shared


@pytest.fixture(name="origin")
def origin_fixture() -> Origin:
    """The test origin with counters, stats and custom routes reset."""
    server = shared_origin()
    server.reset()
    return server


@pytest.fixture(name="origin_server", scope="session")
def origin_server_fixture() -> Origin:
    """The test origin as is (session scope, for other session fixtures)."""
    return shared_origin()
