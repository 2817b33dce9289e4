"""The OpenAPI 3.1 description of the job API, served at ``GET /v1/openapi.json``.

Written out by hand rather than derived from the code: it is the contract clients build on, and
the tests hold the server to it (schemathesis checks every answer against these schemas).
"""

from __future__ import annotations

from typing import Any

from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.model import PRIORITIES, STATUSES
from imgsrv.jobs.submission import MAX_CALLBACK_URL, MAX_DELAY_S, MAX_IDEMPOTENCY_KEY
from imgsrv.spec import MAX_TTL, MIN_TTL, OPTION_NAMES

MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20
JSON = "application/json"
PROBLEM = "application/problem+json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _problem(description: str) -> Schema:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


def _job_response(description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": _ref("Job")}}}


JOB_FIELDS = [
    "id", "status", "priority", "source", "ttl", "attempts", "max_attempts", "created_at",
    "run_at", "started_at", "finished_at", "progress", "variants", "error", "cancel_requested",
    "idempotency_key", "links", "callback",
]  # fmt: skip

_SCALAR: Schema = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
_TIME: Schema = {"type": "string", "format": "date-time"}

_SCHEMAS: dict[str, Schema] = {
    "OptionValue": {
        "description": (
            "Arguments of one URL option: a string ('cover:300:200'), a number, a boolean "
            "(1/0) or a list of arguments (['cover', 300, 200])."
        ),
        "anyOf": [*_SCALAR["anyOf"], {"type": "array", "items": _SCALAR, "minItems": 1}],
    },
    "Variant": {
        "description": (
            'One rendition: URL options by short or long name, e.g. {"w": 320, "f": "webp"}. '
            "ttl is set on the job; f:auto is refused."
        ),
        "type": "object",
        "properties": {name: _ref("OptionValue") for name in OPTION_NAMES if name != "ttl"},
        "additionalProperties": False,
    },
    "JobRequest": {
        "type": "object",
        "required": ["source", "variants"],
        "properties": {
            "source": {
                "type": "string",
                "minLength": 1,
                "description": "http(s) URL, local://path, or a path relative to the source base",
            },
            "variants": {"type": "array", "minItems": 1, "items": _ref("Variant")},
            # Optional fields may be left out or sent as null, which means the same.
            "priority": _nullable({"enum": list(PRIORITIES), "default": "normal"}),
            "callback_url": _nullable(
                {
                    "type": "string",
                    "format": "uri",
                    "maxLength": MAX_CALLBACK_URL,
                    "description": "POSTed the finished job, signed (X-Imgsrv-Signature)",
                }
            ),
            "ttl": _nullable(
                {
                    "description": "Cache lifetime of the results: seconds, or e.g. '2d' (1d..3d)",
                    "anyOf": [
                        {"type": "integer", "minimum": MIN_TTL, "maximum": MAX_TTL},
                        {"type": "string", "pattern": "^[0-9]+[smhd]?$"},
                    ],
                    "default": MIN_TTL,
                }
            ),
            "delay_s": _nullable({"type": "number", "minimum": 0, "maximum": MAX_DELAY_S}),
            "run_at": _nullable(
                {**_TIME, "description": "start no earlier than this (not with delay_s)"}
            ),
            "idempotency_key": _nullable(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_IDEMPOTENCY_KEY,
                    "description": "the same key from the same tenant answers the same job",
                }
            ),
        },
        "additionalProperties": False,
    },
    "VariantResult": {
        "type": "object",
        "required": ["url", "bytes", "width", "height", "format"],
        "properties": {
            "url": {"type": "string", "description": "signed image URL (path), a cache hit"},
            "bytes": {"type": "integer"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "format": {"type": "string"},
            "content_type": {"type": "string"},
            "etag": {"type": "string"},
        },
    },
    "CallbackState": {
        "type": "object",
        "required": ["url", "status", "attempts"],
        "properties": {
            "url": {"type": "string"},
            "status": {"enum": ["waiting", "pending", "delivered", "failed"]},
            "attempts": {"type": "integer", "minimum": 0},
            "last_status": _nullable({"type": "integer"}),
            "last_error": _nullable({"type": "string"}),
            "delivered_at": _nullable(_TIME),
        },
    },
    "Job": {
        "type": "object",
        "required": JOB_FIELDS,
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
            "status": {"enum": list(STATUSES)},
            "priority": {"enum": list(PRIORITIES)},
            "source": {"type": "string"},
            "ttl": {"type": "integer"},
            "attempts": {"type": "integer", "minimum": 0},
            "max_attempts": {"type": "integer", "minimum": 1},
            "created_at": _TIME,
            "run_at": _TIME,
            "started_at": _nullable(_TIME),
            "finished_at": _nullable(_TIME),
            "progress": {
                "type": "object",
                "required": ["done", "total"],
                "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}},
            },
            "variants": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["options", "result"],
                    "properties": {
                        "options": {"type": "object"},
                        "result": _nullable(_ref("VariantResult")),
                    },
                },
            },
            "error": _nullable(_ref("Problem")),
            "cancel_requested": {"type": "boolean"},
            "idempotency_key": _nullable({"type": "string"}),
            "links": {
                "type": "object",
                "required": ["self"],
                "properties": {"self": {"type": "string"}},
            },
            "callback": _nullable(_ref("CallbackState")),
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": _ref("Job")}},
    },
    "Problem": {
        "description": "RFC 9457 problem details",
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "field": {"type": "string", "description": "the request field at fault"},
            "variant": {"type": "integer", "description": "index of the failed variant"},
        },
    },
}

_JOB_ID: Schema = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_AUTH_ERRORS = {
    "401": _problem("missing or unknown API key"),
    "503": _problem("the job queue (Redis) is unavailable"),
}


def openapi_document(config: JobConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the job API under ``config``'s limits."""
    schemas = dict(_SCHEMAS)
    request = dict(schemas["JobRequest"])
    properties = dict(request["properties"])
    properties["variants"] = {**properties["variants"], "maxItems": config.max_variants}
    request["properties"] = properties
    schemas["JobRequest"] = request
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imgsrv job API",
            "version": "1",
            "description": (
                "Render variants of a source ahead of time. Jobs run at least once, by "
                "priority (weighted, so low never starves) and round robin across tenants."
            ),
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Submit a job",
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": _ref("JobRequest")}},
                    },
                    "responses": {
                        "202": _job_response("accepted (or the job of a repeated idempotency key)"),
                        "400": _problem("invalid job: variant, source, ttl, schedule, callback"),
                        "403": _problem("the source or callback address is not allowed"),
                        "413": _problem("request body too large"),
                        **_AUTH_ERRORS,
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "The tenant's most recent jobs",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"enum": list(STATUSES)},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIST_LIMIT,
                                "default": DEFAULT_LIST_LIMIT,
                            },
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "newest first",
                            "content": {JSON: {"schema": _ref("JobList")}},
                        },
                        "400": _problem("invalid status or limit"),
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/v1/jobs/{job_id}": {
                "parameters": [_JOB_ID],
                "get": {
                    "operationId": "getJob",
                    "summary": "One job: status, progress, results",
                    "responses": {
                        "200": _job_response("the job"),
                        "404": _problem("no such job for this tenant"),
                        **_AUTH_ERRORS,
                    },
                },
                "delete": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job",
                    "responses": {
                        "200": _job_response("cancelled now, or already finished (unchanged)"),
                        "202": _job_response("running: it stops before its next variant"),
                        "404": _problem("no such job for this tenant"),
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {}}}},
                },
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
