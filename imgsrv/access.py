"""Per-request access log line and request metrics."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgsrv import metrics
from imgsrv.clients import request_address
from imgsrv.logs import log_fields
from imgsrv.sources.addresses import IPNetwork

log = logging.getLogger("imgsrv.access")

OPS_ROUTES = {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}


def route_name(path: str) -> str:
    """A low-cardinality label for a request path."""
    if path in OPS_ROUTES:
        return OPS_ROUTES[path]
    if path == "/img":
        return "image_query"
    if path == "/info" or path.startswith("/info/"):
        return "info"
    return "image_path"


def _loggable_query(query: bytes) -> str:
    # The signature is a credential for that URL; keep it out of logs.
    text = query.decode("latin-1")
    head, sep, _ = text.rpartition("&sig=")
    return head + "&sig=<redacted>" if sep else text


class AccessLog:
    """Writes the access line and records the request metrics of one finished request."""

    def __init__(self, enabled: bool = True, trusted_proxies: tuple[IPNetwork, ...] = ()) -> None:
        self.enabled = enabled
        self.trusted_proxies = trusted_proxies

    def record(self, scope: Scope, status: int, sent: int, cache: str, elapsed: float) -> None:
        """``status`` answered with ``sent`` body bytes from ``cache`` in ``elapsed`` s."""
        route = route_name(scope["path"])
        metrics.BATCHED.count(metrics.REQUESTS, route, str(status))
        metrics.BATCHED.time(metrics.REQUEST_SECONDS, elapsed, route)
        if not self.enabled:
            return
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "query": _loggable_query(scope.get("query_string", b"")),
            "status": status,
            "bytes": sent,
            "ms": round(elapsed * 1000, 2),
            "cache": cache,
            "client": self._client(scope),
        }
        log_fields(log, "request", fields)

    def _client(self, scope: Scope) -> str | None:
        peer = scope.get("client")
        if peer is None:
            return None
        if not self.trusted_proxies:
            return str(peer[0])
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        address = request_address(peer[0], forwarded, self.trusted_proxies)
        return str(address) if address is not None else str(peer[0])


class AccessLogMiddleware:
    """Logs every HTTP request through ``access`` (image requests log themselves, as they do
    not pass through the middleware stack: see :class:`imgsrv.app.ImgsrvApp`)."""

    def __init__(self, app: ASGIApp, access: AccessLog) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent = 0
        cache = ""

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent, cache
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers", ()):
                    if key == b"x-cache":
                        cache = value.decode()
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.access.record(scope, status, sent, cache, time.perf_counter() - started)
