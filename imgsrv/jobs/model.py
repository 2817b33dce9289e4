"""A job: what a client asked to render, where it stands, and what came out.

The queue keeps each job as one Redis hash whose scalar fields (status, attempts, timestamps,
lease) the Lua scripts read and change, and whose structured fields (the request, the results,
the last error, the callback state) are JSON written by Python. :meth:`Job.from_hash` reads
that hash; :meth:`Job.body` is the public JSON shape answered by the API and sent to callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

import orjson

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Priority = Literal["high", "normal", "low"]

STATUSES: tuple[str, ...] = get_args(Status)
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
PRIORITIES: tuple[str, ...] = get_args(Priority)

JsonObject = dict[str, Any]

log = logging.getLogger("imgsrv.jobs")


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A validated submission, ready to be queued.

    ``variants`` are the objects the client sent (echoed back in the job); ``options`` are the
    same variants as canonical option strings (``"w:320/f:webp/ttl:172800"``), from which a
    worker rebuilds each TransformSpec.
    """

    source: str
    variants: tuple[JsonObject, ...]
    options: tuple[str, ...]
    priority: Priority = "normal"
    ttl: int = 86_400
    delay_ms: int = 0
    run_at_ms: int = 0  # absolute (Unix ms); 0 = use delay_ms
    callback_url: str = ""
    idempotency_key: str = ""
    depends_on: tuple[str, ...] = ()

    def stored(self) -> bytes:
        """The request as kept in the job record."""
        return orjson.dumps(
            {
                "source": self.source,
                "variants": list(self.variants),
                "options": list(self.options),
                "ttl": self.ttl,
            }
        )


@dataclass(slots=True)
class Job:
    """One job as read from Redis. Times are Unix milliseconds from the Redis clock."""

    id: str
    tenant: str
    priority: Priority
    status: Status
    created_at: int
    run_at: int
    source: str
    variants: list[JsonObject]
    options: list[str]
    ttl: int
    attempts: int = 0
    max_attempts: int = 1
    started_at: int | None = None
    finished_at: int | None = None
    results: list[JsonObject | None] = field(default_factory=list)
    error: JsonObject | None = None
    cancel_requested: bool = False
    callback_url: str = ""
    callback: JsonObject | None = None
    idempotency_key: str = ""
    worker: str = ""
    depends_on: list[str] = field(default_factory=list)
    pending: int = 0
    schedule: str = ""
    # Filled in by the queue when it reads the job: its events, its dependencies' statuses.
    timeline: list[JsonObject] = field(default_factory=list)
    dependency_status: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> Job:
        """Build a Job from the HGETALL reply of its record."""
        text = {_text(k): _text(v) for k, v in raw.items()}
        request = orjson.loads(text["request"])
        # No results field until the first variant is rendered.
        results = orjson.loads(text["results"]) if "results" in text else None
        if results is None:
            results = [None] * len(request["options"])
        return cls(
            id=text["id"],
            tenant=text["tenant"],
            priority=cast(Priority, text["priority"]),
            status=cast(Status, text["status"]),
            created_at=int(text["created_at"]),
            run_at=int(text["run_at"]),
            source=request["source"],
            variants=request["variants"],
            options=request["options"],
            ttl=int(request["ttl"]),
            attempts=int(text.get("attempts", 0)),
            max_attempts=int(text.get("max_attempts", 1)),
            started_at=_optional_int(text.get("started_at")),
            finished_at=_optional_int(text.get("finished_at")),
            results=results,
            error=orjson.loads(text["error"]) if text.get("error") else None,
            cancel_requested=text.get("cancel") == "1",
            callback_url=text.get("callback_url", ""),
            callback=orjson.loads(text["callback"]) if text.get("callback") else None,
            idempotency_key=text.get("idempotency_key", ""),
            worker=text.get("worker", ""),
            depends_on=orjson.loads(text["deps"]) if text.get("deps") else [],
            pending=int(text.get("pending") or 0),
            schedule=text.get("schedule", ""),
        )

    @property
    def done(self) -> int:
        """Variants rendered so far."""
        return sum(result is not None for result in self.results)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def body(self, *, with_callback: bool = True) -> JsonObject:
        """The public JSON shape of the job (``GET /v1/jobs/{id}``, callbacks)."""
        body: JsonObject = {
            "id": self.id,
            "tenant": self.tenant,
            "status": self.status,
            "priority": self.priority,
            "source": self.source,
            "ttl": self.ttl,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": iso_time(self.created_at),
            "run_at": iso_time(self.run_at),
            "started_at": iso_time(self.started_at),
            "finished_at": iso_time(self.finished_at),
            "progress": {"done": self.done, "total": len(self.options)},
            "variants": [
                {"options": options, "result": result}
                for options, result in zip(self.variants, self.results, strict=True)
            ],
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "idempotency_key": self.idempotency_key or None,
            "depends_on": list(self.depends_on),
            "dependencies": [
                {"id": dep, "status": self.dependency_status.get(dep, "expired")}
                for dep in self.depends_on
            ],
            "waiting_for_dependencies": self.pending if self.status == "queued" else 0,
            "schedule": self.schedule or None,
            "timeline": [timeline_event(event) for event in self.timeline],
            "links": {"self": f"/v1/jobs/{self.id}"},
        }
        if with_callback:
            body["callback"] = self.callback_state()
        return body

    def callback_state(self) -> JsonObject | None:
        """Delivery state of the callback, or None when the job has no callback URL."""
        if not self.callback_url:
            return None
        state: JsonObject = {"status": "waiting", "attempts": 0}
        state.update(self.callback or {})
        return {"url": self.callback_url, **state}


def timeline_event(event: JsonObject) -> JsonObject:
    """A stored timeline event (``at`` in Unix ms) with its time as RFC 3339 text."""
    shown = {name: value for name, value in event.items() if name not in ("at", "event")}
    return {"at": iso_time(int(event["at"])), "event": str(event["event"]), **shown}


def iso_time(ms: int | None) -> str | None:
    """RFC 3339 UTC text of a Unix millisecond time (None stays None)."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional_int(text: str | None) -> int | None:
    return int(text) if text else None


def log_job(job: Job, status: str, **fields: object) -> None:
    """One JSON log line per job state change."""
    log.info(
        "job",
        extra={
            "job": job.id,
            "tenant": job.tenant,
            "status": status,
            "priority": job.priority,
            "attempt": job.attempts,
            **fields,
        },
    )
