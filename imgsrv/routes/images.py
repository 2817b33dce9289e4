"""Image and info endpoints for the path form and the ``/img`` query form.

Image URLs are answered by :class:`ImageEndpoint`, a pure-ASGI endpoint that
:class:`ImageRequests` puts in front of the starlette router. An image request is the server's
hot path, and a memory-cache hit should cost little more than writing its bytes; through the
router it would first be matched against every other route, then wrapped in Request and
Response objects. The few non-image paths (operations, the job API, ``/info``) go on to the
router.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from imgsrv.balance import WorkerLoad, this_worker
from imgsrv.config import Settings
from imgsrv.egress import ANONYMOUS, EgressMeter
from imgsrv.errors import ImgsrvError
from imgsrv.jobs.auth import ApiKeys, bearer_tenant
from imgsrv.negotiation import accepted_formats
from imgsrv.render import Renderer, RenderResult
from imgsrv.routes.problems import error_response
from imgsrv.urls import ParsedUrl, UrlParser

QUERY_FORM_PATH = "/img"
IMAGE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class ImageResponse:
    """An image response with its header list built directly (no header objects)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    result: RenderResult | None = None  # the image a 200 sends, for the egress count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


class ImageEndpoint:
    """The ASGI endpoint of image URLs: problem+json for every error the request can cause."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        load = this_worker()
        if load is None:
            await self._answer(scope, receive, send)
            return
        load.started()
        try:
            await self._answer(scope, receive, send, load)
        finally:
            load.finished()

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, load: WorkerLoad | None = None
    ) -> None:
        state: State = scope["app"].state
        settings: Settings = state.settings
        response: ImageResponse | Response
        try:
            response = await image_response(scope, state.url_parser, state.renderer, settings)
        except ImgsrvError as exc:
            response = error_response(exc, scope["path"], settings.error_cache_control)
        else:
            if response.result is not None and scope["method"] == "GET":
                _count_egress(state, scope, response.result)
            if load is not None and load.should_close():
                # This worker holds more than its share of the requests: let the client
                # reconnect, most likely to a less busy worker (see imgsrv.balance).
                response.headers.append((b"connection", b"close"))
        await response(scope, receive, send)


image_endpoint = ImageEndpoint()


def _count_egress(state: State, scope: Scope, result: RenderResult) -> None:
    """Count the body about to be sent towards the month's egress (HEAD sends none)."""
    keys: ApiKeys = state.job_config.keys
    tenant = bearer_tenant(keys, scope["headers"]) or ANONYMOUS
    entry = result.entry
    egress: EgressMeter = state.egress
    transform_ms = result.timings.get("transform", 0.0)
    egress.served(len(entry.data), entry.format, tenant, result.cache, transform_ms)


class ImageRequests:
    """Sends ``GET``/``HEAD`` image URLs straight to :data:`image_endpoint`, the rest to ``app``.

    ``routed_paths`` are the paths of the router's other routes (``{param}`` parts allowed): a
    request whose path one of them matches, by any method, goes to the router, which answers it
    exactly as if this class were not there (its catch-all route is the same image endpoint).
    """

    def __init__(self, app: ASGIApp, routed_paths: Iterable[str] = ()) -> None:
        self.app = app
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.handles(scope):
            await image_endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def image_response(
    scope: Scope, parser: UrlParser, renderer: Renderer, settings: Settings
) -> ImageResponse:
    """Parse the image URL of ``scope``, get the image, and build the response (200 or 304)."""
    parsed = _parse(scope, parser, renderer)
    accept = b""
    if_none_match = b""
    for name, value in scope["headers"]:
        if name == b"accept":
            accept = value
        elif name == b"if-none-match":
            if_none_match = value
    spec = parsed.spec
    accepted = accepted_formats(accept.decode("latin-1")) if spec.format == "auto" else frozenset()
    result = await renderer.render(spec, accepted)
    headers = _image_headers(result, parsed, settings)
    entry = result.entry
    if if_none_match and _etag_matches(if_none_match.decode("latin-1"), entry.etag):
        return ImageResponse(304, headers)
    headers.append((b"content-type", entry.content_type.encode()))
    headers.append((b"content-length", b"%d" % len(entry.data)))
    return ImageResponse(200, headers, entry.data, result)


def _parse(scope: Scope, parser: UrlParser, renderer: Renderer) -> ParsedUrl:
    query_form = scope["path"] == QUERY_FORM_PATH
    raw: bytes = (
        scope["query_string"] if query_form else scope.get("raw_path") or scope["path"].encode()
    )
    parsed = parser.remembered_query(raw) if query_form else parser.remembered_path(raw)
    if parsed is not None:
        return parsed
    # A URL parsed recently may be in memory; any other one needs the pool, so under overload
    # it is refused before the cost of parsing it and resolving its source.
    renderer.check_capacity()
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
