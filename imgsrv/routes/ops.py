"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imgsrv.drain import Drain
from imgsrv.metrics import render_metrics
from imgsrv.render import Renderer


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    """Readiness: 503 only while this process starts or drains.

    A Redis that is down makes the answer 200 ``"degraded"``: images still work (L1 and
    rendering), and Redis is shared by every instance, so failing readiness for it would take
    the whole fleet out of the balancer at once. Readiness fails only for what is wrong with
    this instance.
    """
    headers = {"Cache-Control": "no-store"}
    renderer: Renderer | None = getattr(request.app.state, "renderer", None)
    if renderer is None:
        return JSONResponse({"status": "starting"}, 503, headers=headers)
    drain: Drain | None = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        return JSONResponse({"status": "draining"}, 503, headers=headers)
    body: dict[str, object] = {"status": "ready"}
    if renderer.l2 is None:
        body["redis"] = "not configured"
    else:
        ok = await renderer.l2.ping()
        body["redis"] = "up" if ok else "down"
        body["redis_breaker"] = renderer.l2.breaker.state
        if not ok:
            body["status"] = "degraded"
    return JSONResponse(body, 200, headers=headers)


async def metrics(request: Request) -> Response:
    """Prometheus exposition, merged across worker processes."""
    renderer: Renderer | None = getattr(request.app.state, "renderer", None)
    if renderer is not None:  # this process's values now; the others' from their last sample
        renderer.sample_gauges()
    data, content_type = render_metrics()
    return Response(data, media_type=content_type, headers={"Cache-Control": "no-store"})
