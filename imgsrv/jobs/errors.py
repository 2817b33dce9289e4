"""Errors of the job API, in the server's one error hierarchy (problem+json, status)."""

from __future__ import annotations

from imgsrv.errors import (
    Conflict,
    Forbidden,
    NamedBadRequest,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)


class InvalidJob(NamedBadRequest):
    """A job submission or query that cannot be accepted; ``field`` names the culprit."""

    title = "Invalid job"
    slug = "invalid-job"
    culprit_key = "field"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, f"{field}: {reason}")


class ForbiddenCallback(Forbidden):
    """The callback URL points at an address the SSRF guard refuses."""

    title = "Forbidden callback URL"
    slug = "forbidden-callback"


class ApiKeyRequired(Unauthorized):
    """No API key, or one that matches no configured key."""

    title = "API key required"
    slug = "api-key-required"


class JobNotFound(NotFound):
    """No job of this tenant has that id (another tenant's jobs are not found either)."""

    title = "Job not found"
    slug = "job-not-found"


class JobConflict(Conflict):
    """The job is not in a state the action applies to (retry of a running job, say)."""

    title = "Job conflict"
    slug = "job-conflict"


class ScheduleNotFound(NotFound):
    title = "Schedule not found"
    slug = "schedule-not-found"


class WorkerNotFound(NotFound):
    title = "Worker not found"
    slug = "worker-not-found"


class TooManySchedules(Conflict):
    title = "Too many schedules"
    slug = "too-many-schedules"


class AdminKeyRequired(Unauthorized):
    """The admin API needs ``Authorization: Bearer <admin key>``."""

    title = "Admin key required"
    slug = "admin-key-required"


class AdminDisabled(Forbidden):
    """No admin key is configured, so the admin API is off."""

    title = "Admin API disabled"
    slug = "admin-disabled"


class RequestTooLarge(TooLarge):
    title = "Request too large"
    slug = "request-too-large"


class QueueUnavailable(Unavailable):
    """Redis, which holds the queue, is not configured or does not answer (``Retry-After``)."""

    title = "Job queue unavailable"
    slug = "queue-unavailable"
