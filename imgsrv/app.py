"""The starlette application factory and its lifespan.

Everything that holds threads or sockets (the libvips pool, the HTTP client, Redis) is created
in the lifespan by :func:`imgsrv.runtime.open_runtime`, i.e. inside each worker process after
any fork: libvips deadlocks in a child forked after its threads started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from imgsrv import metrics
from imgsrv.access import AccessLog, AccessLogMiddleware
from imgsrv.config import Settings, load_settings
from imgsrv.drain import Drain, process_drain
from imgsrv.errors import ImgsrvError
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import AdminKeyRequired, ApiKeyRequired
from imgsrv.jobs.worker import serve_jobs
from imgsrv.lifecycle import InstanceLog, on_stop_signal
from imgsrv.logs import configure_logging
from imgsrv.routes import cache, dashboard, images, jobs, ops, problems
from imgsrv.routes.images import image_endpoint
from imgsrv.runtime import open_runtime
from imgsrv.traffic import TrafficSampler
from imgsrv.urls import UrlParser


class ImageCatchAll(Route):
    """The image route, which takes every path but those of the API and the dashboard.

    Under ``/v1/`` and ``/dashboard`` a path that names a route with another method is a 405
    and an unknown one a 404, never an image URL (no signature looks like those segments).
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope.get("path", "")
        if path.startswith(NOT_IMAGES):
            return Match.NONE, {}
        return super().matches(scope)


NOT_IMAGES = ("/v1/", "/dashboard")


class ImgsrvApp(Starlette):
    """The starlette app, with image URLs answered before its middleware and router.

    Starlette wraps every request in its error middleware, the access-log middleware and the
    router before an endpoint runs; for an image URL, the server's hot path, that costs as
    much as answering a memory-cache hit. Image URLs therefore go straight to the image
    endpoint, which logs and counts them itself and answers every error as problem+json.
    """

    def __init__(
        self, image_requests: images.ImageRequests, access: AccessLog, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.image_requests = image_requests
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.image_requests.handles(scope):
            scope["app"] = self
            await image_endpoint.serve(scope, receive, send, self.access)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, drain: Drain | None = None) -> Starlette:
    """Build the ASGI app for ``settings`` (default: from the environment).

    ``drain`` tells readiness and the job worker when the process starts draining (see
    :mod:`imgsrv.drain`); the server passes its process's, tests their own.
    """
    settings = settings or load_settings()
    drain = drain or Drain()
    drain.on_drain(lambda: metrics.DRAINING.set(1))
    configure_logging(settings.log_level)
    job_config = JobConfig.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        instance = InstanceLog()
        async with (
            open_runtime(settings) as runtime,
            serve_jobs(runtime, job_config, drain) as services,
        ):
            app.state.runtime = runtime
            app.state.egress = runtime.egress
            app.state.renderer = runtime.renderer
            app.state.jobs = services
            instance.start(settings)
            restore_signals = on_stop_signal(instance.drain)
            try:
                yield
            finally:
                restore_signals()
                app.state.renderer = None
                app.state.jobs = None
        instance.stop()

    routes = [
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/v1/cache", cache.purge_source, methods=["DELETE"]),
        Route("/v1/openapi.json", jobs.openapi, methods=["GET"]),
        Route("/v1/jobs", jobs.jobs, methods=["GET", "POST"]),
        Route("/v1/jobs/{job_id}", jobs.job, methods=["GET", "DELETE", "PATCH"]),
        Route("/v1/jobs/{job_id}/retry", jobs.retry_job, methods=["POST"]),
        Route("/v1/queues", jobs.queues, methods=["GET"]),
        Route("/v1/queues/{priority}/pause", jobs.pause_queue, methods=["POST"]),
        Route("/v1/queues/{priority}/resume", jobs.pause_queue, methods=["POST"]),
        Route("/v1/workers", jobs.workers, methods=["GET"]),
        Route("/v1/workers/{worker_id}", jobs.worker, methods=["GET"]),
        Route("/v1/schedules", jobs.schedules, methods=["GET", "POST"]),
        Route("/v1/schedules/{schedule_id}", jobs.schedule, methods=["GET", "DELETE"]),
        Route("/v1/stats", jobs.stats, methods=["GET"]),
        *dashboard.ROUTES,
        Route("/img", images.image_endpoint, methods=["GET"]),
        Route("/info", images.info_from_query, methods=["GET"]),
        Route("/info/{rest:path}", images.info_from_path, methods=["GET"]),
        ImageCatchAll("/{rest:path}", images.image_endpoint, methods=["GET"]),
    ]
    access = AccessLog(settings.access_log, settings.trusted_proxy_networks)
    app = ImgsrvApp(
        images.ImageRequests([route.path for route in routes]),
        access,
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(AccessLogMiddleware, access=access)],
        exception_handlers={
            ApiKeyRequired: jobs.api_key_required,
            AdminKeyRequired: jobs.api_key_required,
            ImgsrvError: problems.imgsrv_error,
            HTTPException: problems.http_error,
            Exception: problems.internal_error,
        },
    )
    app.state.settings = settings
    app.state.url_parser = UrlParser(settings)
    app.state.trusted_proxies = settings.trusted_proxy_networks
    app.state.renderer = None
    app.state.job_config = job_config
    app.state.jobs = None
    app.state.traffic = TrafficSampler()
    app.state.drain = drain
    return app


def asgi_app() -> Starlette:
    """Factory for uvicorn (``--factory``) and gunicorn: settings from the environment."""
    return create_app(drain=process_drain())
