"""The job API: jobs, queues, workers, schedules and stats under ``/v1``; its OpenAPI document.

Who may call what: a tenant's API key reaches that tenant's jobs and schedules (others' are
404); the admin key (``IMGSRV_ADMIN_KEY``) reaches every tenant's and the operator's endpoints
(queues, workers, stats). Request bodies are decoded into the models of
:mod:`imgsrv.jobs.schema`; every action is one script of :mod:`imgsrv.jobs.scripts`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, cast, get_args

import orjson
from starlette.requests import Request
from starlette.responses import Response

from imgsrv import metrics
from imgsrv.config import Settings
from imgsrv.errors import Forbidden, NotFound
from imgsrv.jobs.auth import TENANT_RE
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import (
    AdminDisabled,
    AdminKeyRequired,
    ApiKeyRequired,
    InvalidJob,
    QueueUnavailable,
    RequestTooLarge,
    WorkerNotFound,
)
from imgsrv.jobs.model import log_job
from imgsrv.jobs.openapi import openapi_document
from imgsrv.jobs.schedules import parse_cron, parse_timezone
from imgsrv.jobs.schema import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    Priority,
    PriorityChange,
    ScheduleRequest,
    Status,
    decode,
)
from imgsrv.jobs.services import JobServices
from imgsrv.jobs.submission import parse_scheduled_job, parse_submission
from imgsrv.routes.cache import bearer_token
from imgsrv.routes.problems import imgsrv_error
from imgsrv.traffic import traffic_stats

MAX_BODY = 1024 * 1024
PRIORITIES: tuple[str, ...] = get_args(Priority)
STATUSES: tuple[str, ...] = get_args(Status)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a tenant, or the admin (``tenant`` None: every tenant)."""

    tenant: str | None

    @property
    def admin(self) -> bool:
        return self.tenant is None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _config(request: Request) -> JobConfig:
    return cast(JobConfig, request.app.state.job_config)


def is_admin_key(settings: Settings, presented: str) -> bool:
    """Constant-time check of the admin key (False while none is configured)."""
    if not settings.admin_key or not presented:
        return False
    return hmac.compare_digest(presented.encode(), settings.admin_key.encode())


def caller(request: Request) -> Caller:
    """The tenant of the presented API key, or the admin; ApiKeyRequired otherwise."""
    token = bearer_token(request)
    if is_admin_key(request.app.state.settings, token):
        return Caller(None)
    keys = _config(request).keys
    tenant = keys.tenant(token) if token else None
    if tenant is None:
        hint = "" if keys else " (no keys are configured: IMGSRV_API_KEYS)"
        raise ApiKeyRequired("send an API key as 'Authorization: Bearer <key>'" + hint)
    return Caller(tenant)


def tenant_caller(request: Request) -> str:
    """Endpoints that act for one tenant (submitting): its API key only."""
    found = caller(request)
    if found.tenant is None:
        raise Forbidden(
            "jobs and schedules are submitted with a tenant's API key, not the admin key"
        )
    return found.tenant


def require_admin(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if not settings.admin_key:
        raise AdminDisabled("the admin API is off: no admin key is configured (IMGSRV_ADMIN_KEY)")
    if not is_admin_key(settings, bearer_token(request)):
        raise AdminKeyRequired("send the admin key as 'Authorization: Bearer <key>'")


def services(request: Request) -> JobServices:
    found: JobServices | None = getattr(request.app.state, "jobs", None)
    if found is None:
        raise QueueUnavailable("jobs need Redis: set IMGSRV_REDIS_URL or use the embedded Redis")
    return found


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise RequestTooLarge(f"a request may have at most {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestTooLarge(f"a request may have at most {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- jobs


async def jobs(request: Request) -> Response:
    """``POST /v1/jobs`` submits, ``GET /v1/jobs?status=&priority=&tenant=&limit=`` lists."""
    if request.method == "POST":
        return await _submit(request, tenant_caller(request))
    who = caller(request)
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidJob("status", f"one of {', '.join(STATUSES)}")
    priority = query.get("priority")
    if priority is not None and priority not in PRIORITIES:
        raise InvalidJob("priority", f"one of {', '.join(PRIORITIES)}")
    tenant = query.get("tenant")
    if tenant is not None and not TENANT_RE.match(tenant):
        raise InvalidJob("tenant", "a tenant name (letters, digits, '.', '_', '-')")
    text = query.get("limit", str(DEFAULT_LIST_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise InvalidJob("limit", f"a whole number within 1..{MAX_LIST_LIMIT}")
    if not who.admin:
        if tenant is not None and tenant != who.tenant:
            return json_response({"jobs": []})  # a tenant sees its own jobs only
        tenant = who.tenant
    found = await services(request).queue.list_jobs(
        tenant, cast(Status | None, status), int(text), cast(Priority | None, priority)
    )
    return json_response({"jobs": [item.body() for item in found]})


async def job(request: Request) -> Response:
    """``GET /v1/jobs/{id}`` answers the job, ``DELETE`` cancels it, ``PATCH`` re-prioritises."""
    who = caller(request)
    job_id = request.path_params["job_id"]
    queue = services(request).queue
    if request.method == "DELETE":
        found, cancelled_now = await queue.cancel(job_id, who.tenant)
        if cancelled_now:
            metrics.JOBS_FINISHED.labels("cancelled").inc()
            log_job(found, "cancelled", detail="cancelled while queued")
        return json_response(found.body(), 200 if found.finished else 202)
    if request.method == "PATCH":
        await queue.require(job_id, who.tenant)  # 404 before looking at the body
        change = decode(await read_body(request), PriorityChange)
        found, moved = await queue.set_priority(job_id, who.tenant, change.priority)
        if moved:
            log_job(found, "queued", detail="priority changed")
        return json_response(found.body())
    return json_response((await queue.require(job_id, who.tenant)).body())


async def retry_job(request: Request) -> Response:
    """``POST /v1/jobs/{id}/retry``: queue a failed (dead) or cancelled job again."""
    who = caller(request)
    found, queued = await services(request).queue.rerun(request.path_params["job_id"], who.tenant)
    if queued:
        metrics.JOBS_SUBMITTED.labels(found.priority).inc()
        log_job(found, "queued", detail="retried")
    return json_response(found.body())


async def _submit(request: Request, tenant: str) -> Response:
    settings: Settings = request.app.state.settings
    submission = parse_submission(await read_body(request), settings, _config(request))
    found, created = await services(request).queue.submit(tenant, submission)
    headers = {"Location": f"/v1/jobs/{found.id}"}
    if created:
        metrics.JOBS_SUBMITTED.labels(found.priority).inc()
        log_job(found, "queued", variants=len(found.options), run_at=found.run_at)
    else:
        headers["Idempotent-Replayed"] = "true"
    return json_response(found.body(), 202, headers)


# --------------------------------------------------------------------------- queues


def queues_body(stats: dict[str, Any]) -> dict[str, Any]:
    """``GET /v1/queues`` from the queue's raw numbers (times become ages in seconds)."""
    now = stats["now"]

    def age(at: int | bool | None) -> float | None:
        return round(max(0, now - at) / 1000, 3) if isinstance(at, int | float) and at else None

    return {
        "priorities": [
            {
                "priority": entry["priority"],
                "depth": entry["depth"],
                "paused": bool(entry["paused"]),
                "oldest_age_s": age(entry["oldest_at"]),
                "tenants": [
                    {
                        "tenant": row["tenant"],
                        "depth": row["depth"],
                        "oldest_age_s": age(row["oldest_at"]),
                    }
                    for row in entry["tenants"]
                ],
            }
            for entry in stats["priorities"]
        ],
        "delayed": stats["delayed"],
        "blocked": stats["blocked"],
        "running": stats["running"],
    }


async def queues(request: Request) -> Response:
    """``GET /v1/queues``."""
    require_admin(request)
    return json_response(queues_body(await services(request).queue.queue_stats()))


async def pause_queue(request: Request) -> Response:
    """``POST /v1/queues/{priority}/pause`` and ``/resume``."""
    require_admin(request)
    priority = request.path_params["priority"]
    if priority not in PRIORITIES:
        raise NotFound(f"no priority {priority[:32]!r}: one of {', '.join(PRIORITIES)}")
    pause = request.url.path.endswith("/pause")
    changed = await services(request).queue.pause(cast(Priority, priority), pause)
    return json_response({"priority": priority, "paused": pause, "changed": changed})


# --------------------------------------------------------------------------- workers


async def workers(request: Request) -> Response:
    """``GET /v1/workers``: the registry."""
    require_admin(request)
    found = await services(request).registry.workers()
    return json_response({"workers": found, "online": sum(w["online"] for w in found)})


async def worker(request: Request) -> Response:
    """``GET /v1/workers/{id}``."""
    require_admin(request)
    worker_id = request.path_params["worker_id"]
    found = await services(request).registry.get(worker_id)
    if found is None:
        raise WorkerNotFound(f"no worker {worker_id[:100]!r}")
    return json_response(found)


# --------------------------------------------------------------------------- schedules


async def schedules(request: Request) -> Response:
    """``POST /v1/schedules`` creates, ``GET`` lists."""
    store = services(request).schedules
    if request.method == "GET":
        who = caller(request)
        found = await store.list_schedules(who.tenant)
        return json_response({"schedules": [schedule.body() for schedule in found]})
    tenant = tenant_caller(request)
    body = decode(await read_body(request), ScheduleRequest)
    cron = parse_cron(body.cron)
    zone = parse_timezone(body.timezone)
    settings: Settings = request.app.state.settings
    job_request = parse_scheduled_job(body.job, settings, _config(request))
    created = await store.create(tenant, cron, zone, job_request, body.job)
    headers = {"Location": f"/v1/schedules/{created.id}"}
    return json_response(created.body(), 201, headers)


async def schedule(request: Request) -> Response:
    """``GET /v1/schedules/{id}``, ``DELETE`` deletes."""
    who = caller(request)
    store = services(request).schedules
    schedule_id = request.path_params["schedule_id"]
    if request.method == "DELETE":
        return json_response((await store.delete(schedule_id, who.tenant)).body())
    return json_response((await store.require(schedule_id, who.tenant)).body())


# --------------------------------------------------------------------------- stats, document


async def stats(request: Request) -> Response:
    """``GET /v1/stats``: this instance's cache and traffic numbers."""
    require_admin(request)
    return json_response(traffic_stats(request.app.state.traffic))


async def openapi(request: Request) -> Response:
    """``GET /v1/openapi.json``."""
    return json_response(openapi_document(_config(request)))


async def api_key_required(request: Request, exc: Exception) -> Response:
    """401 answers name the scheme to use (RFC 9110 asks for WWW-Authenticate)."""
    response = await imgsrv_error(request, exc)
    response.headers["WWW-Authenticate"] = 'Bearer realm="imgsrv jobs"'
    return response
