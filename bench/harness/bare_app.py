"""The ``bare`` contender: the least a starlette app can do to answer an image request.

It answers every GET with the same bytes and headers an imgsrv cache hit sends (body read
once at start from ``BENCH_BARE_BODY``), so that imgsrv's ``hit`` path can be compared with
the cost of starlette + uvicorn + gunicorn alone. It runs under the same gunicorn settings
and worker class as imgsrv (see :func:`bench.harness.servers.start_bare`), except that it
keeps uvicorn's own HTTP protocol, as a bare starlette app has it: imgsrv's sends a response
in one system call instead of two (:mod:`imgsrv.coalesced_writes`), and that is part of
what imgsrv's hit path is compared on.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imgsrv.serving import ImgsrvUvicornWorker

BODY = Path(os.environ.get("BENCH_BARE_BODY", "/dev/null")).read_bytes()
HEADERS = {
    "ETag": '"' + hashlib.blake2b(BODY, digest_size=16).hexdigest() + '"',
    "Cache-Control": "public, max-age=3600",
    "X-Cache": "l1",
}


async def image(request: Request) -> Response:
    return Response(BODY, media_type="image/jpeg", headers=HEADERS)


async def healthz(request: Request) -> Response:
    return Response(b"ok")


class StockProtocolWorker(ImgsrvUvicornWorker):
    """imgsrv's worker class with uvicorn's own choice of HTTP protocol."""

    CONFIG_KWARGS = ImgsrvUvicornWorker.CONFIG_KWARGS | {"http": "auto"}


app = Starlette(
    routes=[Route("/healthz", healthz), Route("/{rest:path}", image, methods=["GET", "HEAD"])]
)
