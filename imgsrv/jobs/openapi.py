"""The OpenAPI 3.1 document of the job API, served at ``GET /v1/openapi.json``.

Schemas come from the typed models of :mod:`imgsrv.jobs.schema` (the same ones the routes
decode requests into); this module adds only what a schema is not: the operations, their
parameters, security and status codes. The tests hold the server to it (schemathesis checks
every answer against these schemas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.schema import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    REQUEST_MODELS,
    RESPONSE_MODELS,
)

JSON = "application/json"
PROBLEM = "application/problem+json"
TENANT = "tenantKey"
ADMIN = "adminKey"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass(frozen=True)
class Operation:
    """One method of one path: what it takes, what it answers, who may call it."""

    method: str
    path: str
    operation_id: str
    summary: str
    responses: dict[str, tuple[str, str | None]]  # status -> (description, schema or None)
    security: tuple[str, ...] = (TENANT, ADMIN)
    request: str | None = None
    query: tuple[Schema, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)


_STATUS_QUERY: Schema = {
    "name": "status",
    "in": "query",
    "schema": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
}
_PRIORITY_QUERY: Schema = {
    "name": "priority",
    "in": "query",
    "schema": {"enum": ["high", "normal", "low"]},
}
_TENANT_QUERY: Schema = {
    "name": "tenant",
    "in": "query",
    "description": "admin key only: the jobs of one tenant",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
}
_LIMIT_QUERY: Schema = {
    "name": "limit",
    "in": "query",
    "schema": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_LIST_LIMIT,
        "default": DEFAULT_LIST_LIMIT,
    },
}
_JOB_404 = {"404": "no such job for this key"}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v1/jobs", "submitJob", "Submit a job",
        {"202": ("accepted (or the job of a repeated idempotency key)", "Job")},
        security=(TENANT,), request="JobSubmission",
        errors={
            "400": "invalid job: variant, source, ttl, schedule, callback, depends_on",
            "403": "the source or callback address is not allowed",
            "413": "request body too large",
        },
    ),
    Operation(
        "get", "/v1/jobs", "listJobs",
        "The most recent jobs (the tenant's; all with the admin key)",
        {"200": ("newest first", "JobList")},
        query=(_STATUS_QUERY, _PRIORITY_QUERY, _TENANT_QUERY, _LIMIT_QUERY),
        errors={"400": "invalid status, priority, tenant or limit"},
    ),
    Operation(
        "get", "/v1/jobs/{job_id}", "getJob", "One job: status, progress, results, timeline",
        {"200": ("the job", "Job")}, errors=_JOB_404,
    ),
    Operation(
        "delete", "/v1/jobs/{job_id}", "cancelJob",
        "Cancel a job (and the jobs that depend on it)",
        {
            "200": ("cancelled now, or already finished (unchanged)", "Job"),
            "202": ("running: it stops before its next variant", "Job"),
        },
        errors=_JOB_404,
    ),
    Operation(
        "patch", "/v1/jobs/{job_id}", "changePriority",
        "Move a queued job to another priority, keeping its place in its tenant's order",
        {"200": ("the job, moved (or already of that priority)", "Job")},
        request="PriorityChange",
        errors={**_JOB_404, "400": "invalid priority", "409": "the job is not queued"},
    ),
    Operation(
        "post", "/v1/jobs/{job_id}/retry", "retryJob",
        "Queue a failed or cancelled job again (same id, attempts reset)",
        {"200": ("queued again, or already queued (unchanged)", "Job")},
        errors={
            **_JOB_404,
            "409": "the job is running or succeeded, or a dependency of it failed",
        },
    ),
    Operation(
        "get", "/v1/queues", "listQueues",
        "Depth, oldest job's age and paused state per priority and tenant",
        {"200": ("the queues", "Queues")}, security=(ADMIN,),
    ),
    Operation(
        "post", "/v1/queues/{priority}/pause", "pauseQueue",
        "Start no more jobs of this priority (running ones finish)",
        {"200": ("paused", "QueueState")}, security=(ADMIN,),
        errors={"404": "no such priority"},
    ),
    Operation(
        "post", "/v1/queues/{priority}/resume", "resumeQueue", "Start jobs of this priority again",
        {"200": ("resumed", "QueueState")}, security=(ADMIN,),
        errors={"404": "no such priority"},
    ),
    Operation(
        "get", "/v1/workers", "listWorkers",
        "The worker registry: every serving process and worker",
        {"200": ("online first", "WorkerList")}, security=(ADMIN,),
    ),
    Operation(
        "get", "/v1/workers/{worker_id}", "getWorker", "One registered worker",
        {"200": ("the worker", "Worker")}, security=(ADMIN,),
        errors={"404": "no such worker"},
    ),
    Operation(
        "post", "/v1/schedules", "createSchedule",
        "Submit a job at every time a cron expression names",
        {"201": ("created", "Schedule")}, security=(TENANT,), request="ScheduleRequest",
        errors={
            "400": "invalid cron, timezone or job",
            "403": "the job's source or callback address is not allowed",
            "409": "the tenant has the most schedules allowed",
            "413": "request body too large",
        },
    ),
    Operation(
        "get", "/v1/schedules", "listSchedules",
        "The schedules (the tenant's; all with the admin key), by next run",
        {"200": ("the schedules", "ScheduleList")},
    ),
    Operation(
        "get", "/v1/schedules/{schedule_id}", "getSchedule", "One schedule",
        {"200": ("the schedule", "Schedule")}, errors={"404": "no such schedule for this key"},
    ),
    Operation(
        "delete", "/v1/schedules/{schedule_id}", "deleteSchedule",
        "Delete a schedule (the jobs it fired stay)",
        {"200": ("deleted", "Schedule")}, errors={"404": "no such schedule for this key"},
    ),
    Operation(
        "get", "/v1/stats", "getStats",
        "Cache and traffic of this instance: hit ratios, request rate, latency, shed rate",
        {"200": ("the numbers of the dashboard's cache and traffic view", "Stats")},
        security=(ADMIN,),
    ),
)  # fmt: skip

_PATH_PARAMETERS: dict[str, Schema] = {
    "job_id": {"type": "string"},
    "schedule_id": {"type": "string"},
    "worker_id": {"type": "string"},
    "priority": {"type": "string"},
}


def _problem(description: str) -> Schema:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


def _operation(op: Operation) -> Schema:
    responses: Schema = {}
    for status, (description, model) in op.responses.items():
        responses[status] = {"description": description}
        if model is not None:
            responses[status]["content"] = {JSON: {"schema": _ref(model)}}
    for status, description in op.errors.items():
        responses[status] = _problem(description)
    if ADMIN in op.security and len(op.security) == 1:
        responses["403"] = _problem("the admin API is off (no admin key configured)")
    responses["401"] = _problem("missing or unknown key")
    responses["503"] = _problem("the job queue (Redis) is unavailable")
    body: Schema = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "security": [{name: []} for name in op.security],
        "responses": responses,
    }
    parameters = list(op.query)
    for name, schema in _PATH_PARAMETERS.items():
        if "{" + name + "}" in op.path:
            parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    if parameters:
        body["parameters"] = parameters
    if op.request is not None:
        body["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(op.request)}}}
    return body


def openapi_document(config: JobConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the job API under ``config``'s limits."""
    _, schemas = msgspec.json.schema_components(
        (*REQUEST_MODELS, *RESPONSE_MODELS), ref_template="#/components/schemas/{name}"
    )
    # The configured variant limit, checked by the submission; in the document too.
    submission = schemas["JobSubmission"]["properties"]["variants"]
    submission["maxItems"] = config.max_variants
    paths: dict[str, Schema] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    paths["/v1/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {}}}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imgsrv job API",
            "version": "2",
            "description": (
                "Render variants of a source ahead of time. Jobs run at least once, by "
                "priority (weighted, so low never starves) and round robin across tenants; "
                "they may depend on other jobs and be fired by cron schedules. Tenants use "
                "their API key; operators use the admin key, which sees every tenant."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                TENANT: {"type": "http", "scheme": "bearer", "description": "a tenant's API key"},
                ADMIN: {"type": "http", "scheme": "bearer", "description": "the admin key"},
            },
        },
    }
