"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imgsrv.metrics import POOL_ADMITTED, render_metrics
from imgsrv.render import Renderer


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    """Readiness: started, and Redis reachable when one is configured.

    Redis trouble never fails image requests (L1 + render keep working), but a load balancer
    should prefer instances whose shared cache works.
    """
    renderer: Renderer | None = getattr(request.app.state, "renderer", None)
    if renderer is None:
        return JSONResponse({"status": "starting"}, 503, headers={"Cache-Control": "no-store"})
    body: dict[str, object] = {"status": "ready"}
    ok = True
    if renderer.l2 is None:
        body["redis"] = "not configured"
    else:
        ok = await renderer.l2.ping()
        body["redis"] = "up" if ok else "down"
        body["redis_breaker"] = renderer.l2.breaker.state
        if not ok:
            body["status"] = "degraded"
    return JSONResponse(body, 200 if ok else 503, headers={"Cache-Control": "no-store"})


async def metrics(request: Request) -> Response:
    """Prometheus exposition, merged across worker processes."""
    renderer: Renderer | None = getattr(request.app.state, "renderer", None)
    if renderer is not None:  # this process's value now; the others' from their last sample
        POOL_ADMITTED.set(renderer.pool.admitted)
    data, content_type = render_metrics()
    return Response(data, media_type=content_type, headers={"Cache-Control": "no-store"})
