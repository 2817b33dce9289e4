"""The ``bare`` contender: the least a starlette app can do to answer an image request.

It answers every GET with the same bytes and headers an imgsrv cache hit sends (body read
once at start from ``BENCH_BARE_BODY``), so that imgsrv's ``hit`` path can be compared with
the cost of starlette + uvicorn + gunicorn alone. It runs under the same gunicorn settings
and worker class as imgsrv (see :func:`bench.harness.servers.start_bare`), except that it
keeps uvicorn's own HTTP protocol, as a bare starlette app has it: imgsrv's sends a response
in one system call instead of two (:mod:`imgsrv.coalesced_writes`), and that is part of
what imgsrv's hit path is compared on.

Under ``/held-503/`` it answers what imgsrv answers a refused request: a small problem+json
503 with ``Retry-After``, held back for a second first (imgsrv's ``refusal_delay``), the
reference of :mod:`bench.harness.refusals`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imgsrv.config import Settings
from imgsrv.serving import ImgsrvUvicornWorker

BODY = Path(os.environ.get("BENCH_BARE_BODY", "/dev/null")).read_bytes()
HEADERS = {
    "ETag": '"' + hashlib.blake2b(BODY, digest_size=16).hexdigest() + '"',
    "Cache-Control": "public, max-age=3600",
    "X-Cache": "l1",
}
REFUSAL_DELAY = Settings().refusal_delay  # imgsrv's default
REFUSAL = (
    b'{"type":"about:blank","title":"Service Unavailable","status":503,'
    b'"detail":"the server is busy; try again shortly","instance":"/"}'
)


async def image(request: Request) -> Response:
    return Response(BODY, media_type="image/jpeg", headers=HEADERS)


async def held_refusal(request: Request) -> Response:
    await asyncio.sleep(REFUSAL_DELAY)
    return Response(REFUSAL, 503, {"Retry-After": "1"}, "application/problem+json")


async def healthz(request: Request) -> Response:
    return Response(b"ok")


class StockProtocolWorker(ImgsrvUvicornWorker):
    """imgsrv's worker class with uvicorn's own choice of HTTP protocol."""

    CONFIG_KWARGS = ImgsrvUvicornWorker.CONFIG_KWARGS | {"http": "auto"}


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/held-503/{rest:path}", held_refusal),
        Route("/{rest:path}", image, methods=["GET", "HEAD"]),
    ]
)
