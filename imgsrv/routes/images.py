"""Image and info endpoints for the path form and the ``/img`` query form."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from imgsrv.config import Settings
from imgsrv.negotiation import accepted_formats
from imgsrv.render import Renderer, RenderResult
from imgsrv.urls import ParsedUrl, UrlParser


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _renderer(request: Request) -> Renderer:
    renderer: Renderer = request.app.state.renderer
    return renderer


def _parser(request: Request) -> UrlParser:
    parser: UrlParser = request.app.state.url_parser
    return parser


def _raw_path(request: Request, prefix: str = "") -> bytes:
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    return raw[len(prefix) :] if prefix else raw


async def image_from_path(request: Request) -> Response:
    """``GET /{signature}/{options}/{source}``."""
    parsed = _parser(request).path(_raw_path(request))
    return await _image_response(request, parsed)


async def image_from_query(request: Request) -> Response:
    """``GET /img?url=...&options...&sig=...``."""
    parsed = _parser(request).query(request.scope["query_string"])
    return await _image_response(request, parsed)


async def info_from_path(request: Request) -> Response:
    """``GET /info/{signature}/{options}/{source}``: JSON metadata of the source."""
    parsed = _parser(request).path(_raw_path(request, "/info"))
    return await _info_response(request, parsed)


async def info_from_query(request: Request) -> Response:
    """``GET /info?url=...&sig=...``."""
    parsed = _parser(request).query(request.scope["query_string"])
    return await _info_response(request, parsed)


async def _info_response(request: Request, parsed: ParsedUrl) -> Response:
    info = await _renderer(request).info(parsed.spec)
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
        headers={"Cache-Control": _cache_control(parsed, _settings(request))},
    )


async def _image_response(request: Request, parsed: ParsedUrl) -> Response:
    spec = parsed.spec
    accepted = accepted_formats(request.headers.get("accept", ""))
    result = await _renderer(request).render(spec, accepted)
    headers = _image_headers(result, parsed, _settings(request))
    if _etag_matches(request.headers.get("if-none-match"), result.entry.etag):
        return Response(status_code=304, headers=headers)
    return Response(result.entry.data, media_type=result.entry.content_type, headers=headers)


def _image_headers(result: RenderResult, parsed: ParsedUrl, settings: Settings) -> dict[str, str]:
    headers = {
        "ETag": result.entry.etag,
        "Cache-Control": _cache_control(parsed, settings),
        "X-Cache": result.cache,
        "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in result.timings.items()),
    }
    if parsed.spec.format == "auto":
        headers["Vary"] = "Accept"
    return headers


def _cache_control(parsed: ParsedUrl, settings: Settings) -> str:
    return settings.cache_control if parsed.signed else settings.cache_control_unsigned


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    # If-None-Match uses the weak comparison: a W/ prefix does not prevent a match.
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))
