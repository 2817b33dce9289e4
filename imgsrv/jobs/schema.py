"""The job API's requests and responses, described once as typed models.

The models are msgspec Structs. Request bodies are decoded straight into them, which checks
types, required and unknown fields, lengths, ranges and enums in one pass (and refuses what
they do not allow: a boolean where a number goes, a null where a list goes); the OpenAPI
document (:mod:`imgsrv.jobs.openapi`) takes its schemas from the same models
(``msgspec.json.schema_components``). What JSON Schema cannot say (the URL grammar of variant
arguments, source and callback addresses, dependencies that must exist) is checked after
decoding, in :mod:`imgsrv.jobs.submission`, with the same 400 naming the field.

msgspec rather than pydantic: it is strict by default (no silent coercion of "5" to 5), its
errors name the JSON path at fault, it generates JSON Schema 2020-12 (which OpenAPI 3.1 uses)
without a plugin, and it is one small compiled module with no dependencies; decoding into a
Struct costs less than ``orjson.loads`` plus checks by hand did.

Response models describe what the routes answer (:meth:`imgsrv.jobs.model.Job.body` and the
like); the schema tests hold every answer to them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from imgsrv.jobs.errors import InvalidJob
from imgsrv.spec import MAX_TTL, MIN_TTL, OPTION_NAMES

MAX_DELAY_S = 30 * 86_400
MAX_CALLBACK_URL = 2048
MAX_IDEMPOTENCY_KEY = 255
MAX_SOURCE = 4096
MAX_DEPENDENCIES = 100
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20

T = TypeVar("T")

Priority = Literal["high", "normal", "low"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# Every option name but ttl, which is set once on the job (an enum in the schema; for the type
# checker, a string).
if TYPE_CHECKING:
    OptionName = str
else:
    OptionName = Literal[tuple(name for name in OPTION_NAMES if name != "ttl")]
Scalar = str | int | float | bool
OptionValue = Annotated[
    Scalar | Annotated[list[Scalar], Meta(min_length=1)],
    Meta(
        description="Arguments of one URL option: a string ('cover:300:200'), a number, a "
        "boolean (1/0) or a list of arguments (['cover', 300, 200])."
    ),
]
Variant = Annotated[
    dict[OptionName, OptionValue],
    Meta(
        description='One rendition: URL options by short or long name, e.g. {"w": 320, '
        '"f": "webp"}. ttl is set on the job; f:auto is refused.'
    ),
]
JobId = Annotated[str, Meta(pattern="^[0-9a-f]{24}$", description="a job id")]
Time = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
Ttl = Annotated[
    Annotated[int, Meta(ge=MIN_TTL, le=MAX_TTL)] | Annotated[str, Meta(pattern="^[0-9]+[smhd]?$")],
    Meta(description="Cache lifetime of the results: seconds, or e.g. '2d' (1d..3d)"),
]


class JobSubmission(Struct, forbid_unknown_fields=True):
    """``POST /v1/jobs``. Optional fields may be left out or sent as null (the same)."""

    source: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_SOURCE,
            description="http(s) URL, local://path, or a path relative to the source base",
        ),
    ]
    variants: Annotated[list[Variant], Meta(min_length=1)]
    priority: Priority | None = None
    callback_url: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=MAX_CALLBACK_URL,
                extra_json_schema={"format": "uri"},
                description="POSTed the finished job, signed (X-Imgsrv-Signature)",
            ),
        ]
        | None
    ) = None
    ttl: Ttl | None = None
    delay_s: Annotated[float, Meta(ge=0, le=MAX_DELAY_S)] | None = None
    run_at: Annotated[datetime, Meta(description="start no earlier than this")] | None = None
    idempotency_key: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=MAX_IDEMPOTENCY_KEY,
                description="the same key from the same tenant answers the same job",
            ),
        ]
        | None
    ) = None
    depends_on: (
        Annotated[
            list[JobId],
            Meta(
                max_length=MAX_DEPENDENCIES,
                description="jobs of this tenant that must succeed before this one starts",
            ),
        ]
        | None
    ) = None


class PriorityChange(Struct, forbid_unknown_fields=True):
    """``PATCH /v1/jobs/{id}``: move a queued job to another priority."""

    priority: Priority


class ScheduleRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/schedules``: submit ``job`` at every time ``cron`` names in ``timezone``."""

    cron: Annotated[
        str, Meta(min_length=1, max_length=200, description="five fields, e.g. '*/15 * * * *'")
    ]
    job: Annotated[
        dict[str, Any],
        Meta(
            description="a job body as for POST /v1/jobs, without run_at, delay_s, "
            "idempotency_key and depends_on"
        ),
    ]
    timezone: Annotated[str, Meta(max_length=64, description="IANA name")] = "UTC"


# --------------------------------------------------------------------------- responses


class Problem(Struct):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | msgspec.UnsetType = msgspec.UNSET
    instance: str | msgspec.UnsetType = msgspec.UNSET
    field: Annotated[str, Meta(description="the request field at fault")] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    variant: Annotated[int, Meta(description="index of the failed variant")] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    dependency: (
        Annotated[str, Meta(description="the dependency that failed")] | msgspec.UnsetType
    ) = msgspec.UNSET


class VariantResult(Struct):
    url: Annotated[str, Meta(description="signed image URL (path), a cache hit")]
    bytes: int
    width: int
    height: int
    format: str
    content_type: str
    etag: str


class VariantOut(Struct, forbid_unknown_fields=True):
    options: dict[str, Any]
    result: VariantResult | None


class Progress(Struct, forbid_unknown_fields=True):
    done: int
    total: int


class CallbackState(Struct):
    url: str
    status: Literal["waiting", "pending", "delivered", "failed"]
    attempts: Annotated[int, Meta(ge=0)]
    last_status: int | msgspec.UnsetType | None = msgspec.UNSET
    last_error: str | msgspec.UnsetType | None = msgspec.UNSET
    delivered_at: Time | msgspec.UnsetType | None = msgspec.UNSET


class Dependency(Struct, forbid_unknown_fields=True):
    id: str
    status: Annotated[str, Meta(description="the dependency's status, or expired")]


class TimelineEvent(Struct, forbid_unknown_fields=False):
    """One event of a job's life (submitted, started, retry, priority, ...), with details."""

    at: Time
    event: str


class JobLinks(Struct, forbid_unknown_fields=True):
    self: str


class Job(Struct, forbid_unknown_fields=True):
    id: JobId
    tenant: str
    status: Status
    priority: Priority
    source: str
    ttl: int
    attempts: Annotated[int, Meta(ge=0)]
    max_attempts: Annotated[int, Meta(ge=1)]
    created_at: Time
    run_at: Time
    started_at: Time | None
    finished_at: Time | None
    progress: Progress
    variants: list[VariantOut]
    error: Problem | None
    cancel_requested: bool
    idempotency_key: str | None
    depends_on: list[str]
    dependencies: list[Dependency]
    waiting_for_dependencies: Annotated[int, Meta(ge=0)]
    schedule: Annotated[str, Meta(description="the schedule that fired it")] | None
    timeline: list[TimelineEvent]
    links: JobLinks
    callback: CallbackState | None


class JobList(Struct, forbid_unknown_fields=True):
    jobs: list[Job]


class TenantQueue(Struct, forbid_unknown_fields=True):
    tenant: str
    depth: int
    oldest_age_s: float | None


class PriorityQueue(Struct, forbid_unknown_fields=True):
    priority: Priority
    depth: Annotated[int, Meta(description="jobs ready to start")]
    paused: bool
    oldest_age_s: Annotated[
        float | None, Meta(description="seconds the oldest ready job has waited")
    ]
    tenants: list[TenantQueue]


class Queues(Struct, forbid_unknown_fields=True):
    priorities: list[PriorityQueue]
    delayed: Annotated[int, Meta(description="queued jobs waiting for their start time")]
    blocked: Annotated[int, Meta(description="queued jobs waiting for dependencies")]
    running: int


class QueueState(Struct, forbid_unknown_fields=True):
    priority: Priority
    paused: bool
    changed: bool


class Worker(Struct, forbid_unknown_fields=True):
    id: str
    host: str
    pid: int
    version: str
    kind: Annotated[str, Meta(description="server (a serving process) or worker")]
    concurrency: int
    state: Literal["online", "offline", "stopped"]
    online: bool
    current_jobs: list[str]
    started_at: Time | None
    last_heartbeat: Time | None
    heartbeat_age_s: float
    heartbeat_interval_s: float


class WorkerList(Struct, forbid_unknown_fields=True):
    workers: list[Worker]
    online: int


class ScheduleLinks(Struct, forbid_unknown_fields=True):
    self: str
    last_job: str | None


class Schedule(Struct, forbid_unknown_fields=True):
    id: str
    tenant: str
    cron: str
    timezone: str
    job: dict[str, Any]
    created_at: Time
    next_run: Time
    last_run: Time | None
    last_job: str | None
    fired: int
    links: ScheduleLinks


class ScheduleList(Struct, forbid_unknown_fields=True):
    schedules: list[Schedule]


class Stats(Struct, forbid_unknown_fields=True):
    """Cache and traffic of this instance (all its processes), from its metrics."""

    window_s: Annotated[float | None, Meta(description="seconds the rates are measured over")]
    l1_hit_ratio: float | None
    l2_hit_ratio: float | None
    l1_bytes: float
    requests_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    shed_per_s: float | None
    shed_ratio: float | None
    egress: dict[str, float]


RESPONSE_MODELS: tuple[type[Struct], ...] = (
    Job,
    JobList,
    Queues,
    QueueState,
    WorkerList,
    Worker,
    Schedule,
    ScheduleList,
    Stats,
    Problem,
)
REQUEST_MODELS: tuple[type[Struct], ...] = (JobSubmission, PriorityChange, ScheduleRequest)


# --------------------------------------------------------------------------- decoding

_AT = re.compile(r" - at `[^`]*`(?: in `[^`]*`)?")
_PATH = re.compile(r"`(\$[^`]*)`")
_NAMED = re.compile(r"(?:unknown|required) field `([^`]*)`")
_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[\.\.\.\]")


def decode(body: bytes, model: type[T], prefix: str = "") -> T:
    """Decode a request body into ``model``; InvalidJob naming the field at fault otherwise."""
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as exc:
        raise InvalidJob(error_field(str(exc), prefix), _reason(str(exc))) from None
    except msgspec.DecodeError:
        raise InvalidJob(prefix.rstrip(".") or "body", "is not valid JSON") from None


def convert(data: Any, model: type[T], prefix: str = "") -> T:
    """:func:`decode` for an already parsed object (a schedule's job body)."""
    try:
        return msgspec.convert(data, type=model)
    except msgspec.ValidationError as exc:
        raise InvalidJob(error_field(str(exc), prefix), _reason(str(exc))) from None


def error_field(message: str, prefix: str = "") -> str:
    """The request field a msgspec error message points at.

    ``$.variants[2][...]`` is ``variants[2]``; other paths name their top-level field
    (``$.depends_on[0]`` is ``depends_on``); an unknown or missing field is named itself; an
    error about the whole document is ``body``. ``prefix`` names an enclosing field.
    """
    paths = _PATH.findall(message)
    path = paths[-1] if paths else "$"
    tokens = [(name, index) for name, index in _TOKEN.findall(path.removeprefix("$"))]
    named = _NAMED.search(message)
    if named and not tokens:
        return prefix + named.group(1)[:64]
    if not tokens:
        return prefix.rstrip(".") or "body"
    first = tokens[0][0] or "body"
    if first == "variants" and len(tokens) > 1 and tokens[1][1]:
        return f"{prefix}variants[{tokens[1][1]}]"
    return prefix + first


def _reason(message: str) -> str:
    return _AT.sub("", message)
