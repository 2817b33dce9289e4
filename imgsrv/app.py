"""The starlette application factory and its lifespan.

Everything that holds threads or sockets (the libvips pool, the HTTP client, Redis) is created
in the lifespan by :func:`imgsrv.runtime.open_runtime`, i.e. inside each worker process after
any fork: libvips deadlocks in a child forked after its threads started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from imgsrv.access import AccessLogMiddleware
from imgsrv.config import Settings, load_settings
from imgsrv.errors import ImgsrvError
from imgsrv.logs import configure_logging
from imgsrv.routes import cache, images, ops, problems
from imgsrv.runtime import open_runtime
from imgsrv.urls import UrlParser


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ASGI app for ``settings`` (default: from the environment)."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_runtime(settings) as runtime:
            app.state.runtime = runtime
            app.state.renderer = runtime.renderer
            try:
                yield
            finally:
                app.state.renderer = None

    routes = [
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/v1/cache", cache.purge_source, methods=["DELETE"]),
        Route("/img", images.image_from_query, methods=["GET"]),
        Route("/info", images.info_from_query, methods=["GET"]),
        Route("/info/{rest:path}", images.info_from_path, methods=["GET"]),
        Route("/{rest:path}", images.image_from_path, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(AccessLogMiddleware, enabled=settings.access_log)],
        exception_handlers={
            ImgsrvError: problems.imgsrv_error,
            HTTPException: problems.http_error,
            Exception: problems.internal_error,
        },
    )
    app.state.settings = settings
    app.state.url_parser = UrlParser(settings)
    app.state.renderer = None
    return app


def asgi_app() -> Starlette:
    """Factory for uvicorn (``--factory``) and gunicorn: settings from the environment."""
    return create_app()
