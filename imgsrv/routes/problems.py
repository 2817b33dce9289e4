"""Errors as ``application/problem+json`` responses (RFC 9457)."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from imgsrv.errors import ImgsrvError, Unavailable

log = logging.getLogger("imgsrv.errors")

PROBLEM_TYPE = "application/problem+json"


def problem_response(
    body: dict[str, object], status: int, cache_control: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type=PROBLEM_TYPE,
        headers={"Cache-Control": cache_control, **(headers or {})},
    )


def _cache_control(request: Request) -> str:
    settings = getattr(request.app.state, "settings", None)
    return settings.error_cache_control if settings is not None else "no-store"


def error_response(exc: ImgsrvError, path: str, cache_control: str) -> Response:
    """The problem+json answer to ``exc`` for a request of ``path``."""
    headers = {}
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    body = exc.problem()
    body["instance"] = path
    return problem_response(body, exc.status, cache_control, headers)


async def imgsrv_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ImgsrvError)
    return error_response(exc, request.url.path, _cache_control(request))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = {
        "type": "about:blank",
        "title": exc.detail,
        "status": exc.status_code,
        "instance": request.url.path,
    }
    headers = dict(exc.headers or {})
    return problem_response(body, exc.status_code, _cache_control(request), headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    body = {
        "type": "urn:imgsrv:problem:internal",
        "title": "Internal error",
        "status": 500,
        "detail": "the server failed unexpectedly; the error was logged",
    }
    return problem_response(body, 500, _cache_control(request))
