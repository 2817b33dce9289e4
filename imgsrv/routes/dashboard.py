"""``/dashboard``: the operator's pages and their actions (admin key).

Views read through the same queue, registry, schedule and traffic code as ``/v1``; actions
call the same queue scripts. A view asked with ``X-Dashboard-Fragment: 1`` answers only its
``<main>`` (the page's script swaps it in). Actions are POSTs that need a session (or Basic)
and a CSRF token; without either they are 403 and change nothing.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from imgsrv.config import Settings
from imgsrv.dashboard import pages
from imgsrv.dashboard.session import (
    COOKIE,
    LIFETIME,
    csrf_token,
    new_session,
    session_binding,
    valid_csrf,
    valid_key,
)
from imgsrv.errors import Forbidden, NotFound
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import InvalidJob
from imgsrv.jobs.schema import Priority, Status
from imgsrv.routes.jobs import json_response, queues_body, services
from imgsrv.traffic import traffic_stats

STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
BASIC_CHALLENGE = 'Basic realm="imgsrv dashboard", charset="UTF-8"'


class CsrfRefused(Forbidden):
    title = "Action refused"
    slug = "csrf"


def _settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status, headers={**SECURITY_HEADERS, **(headers or {})})


def _binding(request: Request) -> str | None:
    return session_binding(request, _settings(request).admin_key)


def _unauthenticated(request: Request) -> Response:
    if not _settings(request).admin_key:
        return _html(pages.login_page("The dashboard is off: no admin key is configured."), 403)
    return _html(pages.login_page(), 401, {"WWW-Authenticate": BASIC_CHALLENGE})


async def _view(request: Request, title: str, render: Any) -> Response:
    binding = _binding(request)
    if binding is None:
        return _unauthenticated(request)
    csrf = csrf_token(_settings(request).admin_key, binding)
    main = await render(csrf)
    if request.headers.get("x-dashboard-fragment") == "1":
        return _html(main)
    refresh = _settings(request).dashboard_refresh
    return _html(pages.frame(title, request.url.path, main, refresh, csrf))


# --------------------------------------------------------------------------- views


async def queues_page(request: Request) -> Response:
    async def render(csrf: str) -> str:
        return pages.queues_view(queues_body(await services(request).queue.queue_stats()), csrf)

    return await _view(request, "Queues", render)


async def jobs_page(request: Request) -> Response:
    query = request.query_params
    filters = {name: query.get(name, "") for name in ("status", "tenant", "priority")}
    config: JobConfig = request.app.state.job_config
    tenants = config.keys.tenants()

    async def render(csrf: str) -> str:
        status = filters["status"] if filters["status"] in pages.STATUSES else None
        priority = filters["priority"] if filters["priority"] in pages.PRIORITIES else None
        tenant = filters["tenant"] if filters["tenant"] in tenants else None
        found = await services(request).queue.list_jobs(
            tenant, cast(Status | None, status), 50, cast(Priority | None, priority)
        )
        return pages.jobs_view([job.body() for job in found], filters, tenants)

    return await _view(request, "Jobs", render)


async def job_page(request: Request) -> Response:
    job_id = request.path_params["job_id"]

    async def render(csrf: str) -> str:
        found = await services(request).queue.require(job_id, None)
        return pages.job_view(found.body(), csrf)

    return await _view(request, f"Job {job_id[:24]}", render)


async def workers_page(request: Request) -> Response:
    async def render(csrf: str) -> str:
        found = await services(request).registry.workers()
        return pages.workers_view({"workers": found, "online": sum(w["online"] for w in found)})

    return await _view(request, "Workers", render)


async def schedules_page(request: Request) -> Response:
    async def render(csrf: str) -> str:
        found = await services(request).schedules.list_schedules(None)
        return pages.schedules_view([schedule.body() for schedule in found])

    return await _view(request, "Schedules", render)


async def traffic_page(request: Request) -> Response:
    async def render(csrf: str) -> str:
        return pages.traffic_view(traffic_stats(request.app.state.traffic))

    return await _view(request, "Cache & traffic", render)


# --------------------------------------------------------------------------- sessions


async def login(request: Request) -> Response:
    """``GET`` shows the form; ``POST`` with the admin key sets the session cookie."""
    settings = _settings(request)
    if request.method == "GET":
        return _html(pages.login_page())
    form = await request.form()
    key = str(form.get("key", ""))
    if not valid_key(settings.admin_key, key):
        return _html(pages.login_page("That is not the admin key."), 403)
    response = RedirectResponse("/dashboard", 303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        new_session(settings.admin_key),
        max_age=LIFETIME,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    await _action_binding(request)
    response = RedirectResponse("/dashboard/login", 303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


# --------------------------------------------------------------------------- actions


async def _action_binding(request: Request) -> dict[str, str]:
    """The form of an action whose session and CSRF token are valid; CsrfRefused otherwise."""
    settings = _settings(request)
    binding = _binding(request)
    if binding is None:
        raise CsrfRefused("sign in to the dashboard first")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise CsrfRefused("actions are only accepted from the dashboard's own pages")
    form = {name: str(value) for name, value in (await request.form()).items()}
    token = request.headers.get("x-csrf-token") or form.get("csrf", "")
    if not valid_csrf(settings.admin_key, binding, token):
        raise CsrfRefused("the action's CSRF token is missing, stale or not this session's")
    return form


def _done(request: Request, body: dict[str, Any], back: str) -> Response:
    """JSON for the script, a redirect back for a plain form."""
    if request.headers.get("x-csrf-token"):
        return json_response(body)
    return RedirectResponse(back, 303, headers=SECURITY_HEADERS)


async def job_action(request: Request) -> Response:
    """``POST /dashboard/jobs/{id}/{cancel|retry|priority}``."""
    form = await _action_binding(request)
    job_id, action = request.path_params["job_id"], request.path_params["action"]
    queue = services(request).queue
    if action == "cancel":
        found, _ = await queue.cancel(job_id, None)
    elif action == "retry":
        found, _ = await queue.rerun(job_id, None)
    elif action == "priority":
        priority = form.get("priority", "")
        if priority not in pages.PRIORITIES:
            raise InvalidJob("priority", "one of high, normal, low")
        found, _ = await queue.set_priority(job_id, None, cast(Priority, priority))
    else:
        raise NotFound(f"no action {action[:32]!r}")
    return _done(request, found.body(), f"/dashboard/jobs/{job_id}")


async def queue_action(request: Request) -> Response:
    """``POST /dashboard/queues/{priority}/{pause|resume}``."""
    await _action_binding(request)
    priority, action = request.path_params["priority"], request.path_params["action"]
    if priority not in pages.PRIORITIES or action not in ("pause", "resume"):
        raise NotFound("no such queue action")
    changed = await services(request).queue.pause(cast(Priority, priority), action == "pause")
    body = {"priority": priority, "paused": action == "pause", "changed": changed}
    return _done(request, body, "/dashboard")


# --------------------------------------------------------------------------- static files


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = STATIC.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard file {name[:64]!r}")
    data = resources.files("imgsrv.dashboard").joinpath("static", name).read_bytes()
    return Response(data, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})


ROUTES = [
    Route("/dashboard", queues_page, methods=["GET"]),
    Route("/dashboard/jobs", jobs_page, methods=["GET"]),
    Route("/dashboard/jobs/{job_id}", job_page, methods=["GET"]),
    Route("/dashboard/jobs/{job_id}/{action}", job_action, methods=["POST"]),
    Route("/dashboard/queues/{priority}/{action}", queue_action, methods=["POST"]),
    Route("/dashboard/workers", workers_page, methods=["GET"]),
    Route("/dashboard/schedules", schedules_page, methods=["GET"]),
    Route("/dashboard/traffic", traffic_page, methods=["GET"]),
    Route("/dashboard/login", login, methods=["GET", "POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/static/{name}", static, methods=["GET"]),
]
