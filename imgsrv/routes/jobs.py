"""The job API: ``/v1/jobs`` (submit, list), ``/v1/jobs/{id}`` (get, cancel), OpenAPI."""

from __future__ import annotations

from typing import Any, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response

from imgsrv import metrics
from imgsrv.config import Settings
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import (
    ApiKeyRequired,
    InvalidJob,
    JobNotFound,
    QueueUnavailable,
    RequestTooLarge,
)
from imgsrv.jobs.model import STATUSES, Status, log_job
from imgsrv.jobs.openapi import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, openapi_document
from imgsrv.jobs.queue import JobQueue, is_job_id
from imgsrv.jobs.submission import parse_submission
from imgsrv.routes.cache import bearer_token
from imgsrv.routes.problems import imgsrv_error

MAX_BODY = 1024 * 1024


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _config(request: Request) -> JobConfig:
    return cast(JobConfig, request.app.state.job_config)


def _tenant(request: Request) -> str:
    keys = _config(request).keys
    token = bearer_token(request)
    tenant = keys.tenant(token) if token else None
    if tenant is None:
        hint = "" if keys else " (no keys are configured: IMGSRV_API_KEYS)"
        raise ApiKeyRequired("send a job API key as 'Authorization: Bearer <key>'" + hint)
    return tenant


def _queue(request: Request) -> JobQueue:
    queue: JobQueue | None = getattr(request.app.state, "job_queue", None)
    if queue is None:
        raise QueueUnavailable("jobs need Redis: set IMGSRV_REDIS_URL or use the embedded Redis")
    return queue


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise RequestTooLarge(f"a job request may have at most {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestTooLarge(f"a job request may have at most {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def jobs(request: Request) -> Response:
    """``POST /v1/jobs`` submits, ``GET /v1/jobs?status=&limit=`` lists."""
    tenant = _tenant(request)
    if request.method == "POST":
        return await _submit(request, tenant)
    return await _list(request, tenant)


async def job(request: Request) -> Response:
    """``GET /v1/jobs/{id}`` answers the job, ``DELETE`` cancels it."""
    tenant = _tenant(request)
    job_id = request.path_params["job_id"]
    if not is_job_id(job_id):
        raise JobNotFound(f"no job {job_id[:64]!r}")
    queue = _queue(request)
    if request.method == "DELETE":
        found, cancelled_now = await queue.cancel(job_id, tenant)
        if found is None:
            raise JobNotFound(f"no job {job_id!r}")
        if cancelled_now:
            metrics.JOBS_FINISHED.labels("cancelled").inc()
            log_job(found, "cancelled", detail="cancelled while queued")
        return _json(found.body(), 200 if found.finished else 202)
    found = await queue.get(job_id, tenant)
    if found is None:
        raise JobNotFound(f"no job {job_id!r}")
    return _json(found.body())


async def _submit(request: Request, tenant: str) -> Response:
    settings: Settings = request.app.state.settings
    submission = parse_submission(await _read_body(request), settings, _config(request))
    found, created = await _queue(request).submit(tenant, submission)
    headers = {"Location": f"/v1/jobs/{found.id}"}
    if created:
        metrics.JOBS_SUBMITTED.labels(found.priority).inc()
        log_job(found, "queued", variants=len(found.options), run_at=found.run_at)
    else:
        headers["Idempotent-Replayed"] = "true"
    return _json(found.body(), 202, headers)


async def _list(request: Request, tenant: str) -> Response:
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidJob("status", f"one of {', '.join(STATUSES)}")
    text = request.query_params.get("limit", str(DEFAULT_LIST_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise InvalidJob("limit", f"a whole number within 1..{MAX_LIST_LIMIT}")
    found = await _queue(request).list_jobs(tenant, cast(Status | None, status), int(text))
    return _json({"jobs": [item.body() for item in found]})


async def openapi(request: Request) -> Response:
    """``GET /v1/openapi.json``."""
    return _json(openapi_document(_config(request)))


async def api_key_required(request: Request, exc: Exception) -> Response:
    """401 answers name the scheme to use (RFC 9110 asks for WWW-Authenticate)."""
    response = await imgsrv_error(request, exc)
    response.headers["WWW-Authenticate"] = 'Bearer realm="imgsrv jobs"'
    return response
