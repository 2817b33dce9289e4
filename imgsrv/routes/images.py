"""Image and info endpoints for the path form and the ``/img`` query form.

Image URLs are answered by :class:`ImageEndpoint`, a pure-ASGI endpoint that the app
(:class:`imgsrv.app.ImgsrvApp`) calls before its middleware and router for every request
that :class:`ImageRequests` recognises. An image request is the server's hot path, and a
memory-cache hit should cost little more than writing its bytes; through the middleware and
the router it would first be matched against every other route, then wrapped in Request and
Response objects. The few non-image paths (operations, the job API, ``/info``, the
dashboard) go on to the router.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from imgsrv.access import AccessLog
from imgsrv.balance import WorkerLoad, this_worker
from imgsrv.clients import client_address, client_key
from imgsrv.config import Settings
from imgsrv.egress import ANONYMOUS, EgressMeter
from imgsrv.errors import ImgsrvError, Overloaded, Unavailable
from imgsrv.held_refusals import HeldRefusals
from imgsrv.jobs.auth import ApiKeys, authorization_tenant
from imgsrv.negotiation import accepted_formats
from imgsrv.render import Renderer, RenderResult
from imgsrv.routes.problems import PROBLEM_TYPE
from imgsrv.sources.addresses import IPNetwork
from imgsrv.urls import ParsedUrl, UrlParser

log = logging.getLogger("imgsrv.errors")

QUERY_FORM_PATH = "/img"
IMAGE_METHODS = frozenset({"GET", "HEAD"})
# Refusals held back at once per process (see the refusal_delay setting); past it they are
# sent at once, so that a flood of clients cannot pile up held connections without bound.
MAX_HELD_REFUSALS = 1000


@dataclass(slots=True)
class ImageResponse:
    """An image response with its header list built directly (no header objects)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    result: RenderResult | None = None  # the image a 200 sends, for the egress count
    tenant: str | None = None  # the API key's tenant, if the request presented a valid one
    cache: str = ""  # the tier that answered, for the access log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


class ImageEndpoint:
    """The ASGI endpoint of image URLs: problem+json for every error the request can cause.

    The app calls :meth:`serve` for image URLs before any middleware, with its access log;
    through the router (``__call__``) the access-log middleware has already wrapped it.
    """

    def __init__(self) -> None:
        self.refusals = HeldRefusals(MAX_HELD_REFUSALS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(scope, receive, send)

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, access: AccessLog | None = None
    ) -> None:
        """Answer an image request; with ``access``, also log it and count it."""
        started = time.perf_counter()
        load = this_worker()
        if load is not None:
            load.started()
        try:
            response = await self._answer(scope, load)
            await response(scope, receive, send)
        finally:
            if load is not None:
                load.finished()
        if access is not None:
            elapsed = time.perf_counter() - started
            access.record(scope, response.status, len(response.body), response.cache, elapsed)

    async def _answer(self, scope: Scope, load: WorkerLoad | None) -> ImageResponse:
        state: State = scope["app"].state
        settings: Settings = state.settings
        try:
            response = await image_response(scope, state)
        except ImgsrvError as exc:
            if isinstance(exc, Overloaded):
                await self.refusals.hold(settings.refusal_delay)
            return problem(exc, scope["path"], settings.error_cache_control)
        except Exception as exc:
            log.error("unhandled error", exc_info=exc, extra={"path": scope["path"]})
            failed = ImgsrvError("the server failed unexpectedly; the error was logged")
            return problem(failed, scope["path"], settings.error_cache_control)
        if response.result is not None and scope["method"] == "GET":
            _count_egress(state, response.result, response.tenant)
        if load is not None and load.should_close():
            # This worker holds more than its share of the requests: let the client
            # reconnect, most likely to a less busy worker (see imgsrv.balance).
            response.headers.append((b"connection", b"close"))
        return response


image_endpoint = ImageEndpoint()


def problem(exc: ImgsrvError, path: str, cache_control: str) -> ImageResponse:
    """The problem+json answer to ``exc`` for an image request (as :func:`error_response`
    does for other routes, without a Response object: refusals under overload stay cheap)."""
    body = exc.problem()
    body["instance"] = path
    data = orjson.dumps(body)
    headers = [
        (b"content-type", PROBLEM_TYPE.encode()),
        (b"content-length", b"%d" % len(data)),
        (b"cache-control", cache_control.encode()),
    ]
    if isinstance(exc, Unavailable):
        headers.append((b"retry-after", b"%d" % exc.retry_after))
    return ImageResponse(exc.status, headers, data)


def _count_egress(state: State, result: RenderResult, tenant: str | None) -> None:
    """Count the body about to be sent towards the month's egress (HEAD sends none)."""
    tenant = tenant or ANONYMOUS
    entry = result.entry
    egress: EgressMeter = state.egress
    transform_ms = result.timings.get("transform", 0.0)
    egress.served(len(entry.data), entry.format, tenant, result.cache, transform_ms)


class ImageRequests:
    """Which requests are image URLs: ``GET``/``HEAD`` on a path no other route owns.

    ``routed_paths`` are the paths of the router's other routes (``{param}`` parts allowed): a
    request whose path one of them matches, by any method, goes to the router, which answers it
    exactly as if this class were not there (its catch-all route is the same image endpoint).
    """

    def __init__(self, routed_paths: Iterable[str] = ()) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in routed_paths:
            head, brace, _ = path.partition("{")
            if not brace:
                exact.add(path)
            elif head != "/":  # the catch-all is the image route itself
                prefixes.append(head)
        exact.discard(QUERY_FORM_PATH)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def handles(self, scope: Scope) -> bool:
        """Whether this request goes straight to the image endpoint."""
        if scope["type"] != "http" or scope["method"] not in IMAGE_METHODS:
            return False
        path: str = scope["path"]
        return path not in self._exact and not path.startswith(self._prefixes)


@dataclass(slots=True)
class RequestHeaders:
    """The request headers an image request looks at, read in one pass."""

    accept: bytes = b""
    if_none_match: bytes = b""
    authorization: bytes = b""
    forwarded_for: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, scope: Scope) -> RequestHeaders:
        found = cls()
        for name, value in scope["headers"]:
            if name == b"accept":
                found.accept = value
            elif name == b"if-none-match":
                found.if_none_match = value
            elif name == b"authorization":
                found.authorization = value
            elif name == b"x-forwarded-for":
                found.forwarded_for.append(value.decode("latin-1"))
        return found


def request_client(
    scope: Scope, headers: RequestHeaders, tenant: str | None, trusted: tuple[IPNetwork, ...]
) -> str:
    """Whose turn a transform of this request waits for (see :mod:`imgsrv.clients`)."""
    peer = scope.get("client")
    address = client_address(peer[0] if peer else None, headers.forwarded_for, trusted)
    return client_key(tenant, address)


async def image_response(scope: Scope, state: State) -> ImageResponse:
    """Parse the image URL of ``scope``, get the image, and build the response (200 or 304)."""
    settings: Settings = state.settings
    renderer: Renderer = state.renderer
    headers = RequestHeaders.of(scope)
    keys: ApiKeys = state.job_config.keys
    tenant = authorization_tenant(keys, headers.authorization)

    def client() -> str:  # only asked for when the request needs a place in the pool
        return request_client(scope, headers, tenant, state.trusted_proxies)

    parsed = _remembered(scope, state.url_parser)
    if parsed is None:
        # Any URL not in memory needs the pool, so under overload it is refused before the
        # cost of parsing it and resolving its source.
        renderer.check_capacity(client())
        parsed = _parsed(scope, state.url_parser)
    spec = parsed.spec
    accepted = (
        accepted_formats(headers.accept.decode("latin-1")) if spec.format == "auto" else frozenset()
    )
    result = renderer.cached(spec, accepted) or await renderer.render(
        spec, accepted, client=client, memory_checked=True
    )
    response_headers = _image_headers(result, parsed, settings)
    entry = result.entry
    if headers.if_none_match and _etag_matches(headers.if_none_match.decode("latin-1"), entry.etag):
        return ImageResponse(304, response_headers, tenant=tenant, cache=result.cache)
    response_headers.append((b"content-type", entry.content_type.encode()))
    response_headers.append((b"content-length", b"%d" % len(entry.data)))
    return ImageResponse(200, response_headers, entry.data, result, tenant, result.cache)


def _raw_target(scope: Scope) -> tuple[bool, bytes]:
    query_form = scope["path"] == QUERY_FORM_PATH
    raw: bytes = (
        scope["query_string"] if query_form else scope.get("raw_path") or scope["path"].encode()
    )
    return query_form, raw


def _remembered(scope: Scope, parser: UrlParser) -> ParsedUrl | None:
    query_form, raw = _raw_target(scope)
    return parser.remembered_query(raw) if query_form else parser.remembered_path(raw)


def _parsed(scope: Scope, parser: UrlParser) -> ParsedUrl:
    query_form, raw = _raw_target(scope)
    return parser.query(raw) if query_form else parser.path(raw)


def _image_headers(
    result: RenderResult, parsed: ParsedUrl, settings: Settings
) -> list[tuple[bytes, bytes]]:
    timing = ", ".join(f"{k};dur={v:.1f}" for k, v in result.timings.items())
    headers = [
        (b"etag", result.entry.etag.encode()),
        (b"cache-control", _cache_control(parsed, settings).encode()),
        (b"x-cache", result.cache.encode()),
        (b"server-timing", timing.encode()),
    ]
    if parsed.spec.format == "auto":
        headers.append((b"vary", b"Accept"))
    return headers


def _cache_control(parsed: ParsedUrl, settings: Settings) -> str:
    return settings.cache_control if parsed.signed else settings.cache_control_unsigned


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    # If-None-Match uses the weak comparison: a W/ prefix does not prevent a match.
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


# --------------------------------------------------------------------------- /info


def _parser(request: Request) -> UrlParser:
    parser: UrlParser = request.app.state.url_parser
    return parser


async def info_from_path(request: Request) -> Response:
    """``GET /info/{signature}/{options}/{source}``: JSON metadata of the source."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    parsed = _parser(request).path(raw[len("/info") :])
    return await _info_response(request, parsed)


async def info_from_query(request: Request) -> Response:
    """``GET /info?url=...&sig=...``."""
    parsed = _parser(request).query(request.scope["query_string"])
    return await _info_response(request, parsed)


async def _info_response(request: Request, parsed: ParsedUrl) -> Response:
    renderer: Renderer = request.app.state.renderer
    settings: Settings = request.app.state.settings
    info = await renderer.info(parsed.spec)
    body = {
        "width": info.width,
        "height": info.height,
        "format": info.format,
        "orientation": info.orientation,
        "alpha": info.alpha,
        "pages": info.pages,
    }
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"Cache-Control": _cache_control(parsed, settings)},
    )
