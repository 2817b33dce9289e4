"""``DELETE /v1/cache?source=<url>``: purge every cached variant of a source."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imgsrv.config import Settings
from imgsrv.errors import Forbidden, InvalidSource, Unauthorized, Unavailable
from imgsrv.render import Renderer
from imgsrv.sources import resolve_source


class PurgeUnavailable(Unavailable):
    title = "Purge incomplete"
    slug = "purge-unavailable"


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def purge_source(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    renderer: Renderer = request.app.state.renderer
    if not settings.admin_key:
        raise Forbidden("cache purge is disabled: no admin key is configured (IMGSRV_ADMIN_KEY)")
    if not hmac.compare_digest(bearer_token(request).encode(), settings.admin_key.encode()):
        raise Unauthorized("send the admin key as 'Authorization: Bearer <key>'")
    raw = request.query_params.get("source", "")
    if not raw:
        raise InvalidSource("the source query parameter is required")
    source = resolve_source(raw, settings)
    deleted = await renderer.purge(source)
    if deleted is None and renderer.l2 is not None:
        raise PurgeUnavailable(
            "this process dropped the source from memory, but Redis is unavailable: "
            "retry to purge the shared cache"
        )
    return JSONResponse({"source": source, "deleted": deleted or 0})
