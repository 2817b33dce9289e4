"""Cron schedules: a job body submitted again at every time a cron expression names.

A schedule is one Redis hash (``P:schedule:<id>``) and one entry of the ``P:schedules``
sorted set, scored by its next run. Every process with the queue (serving processes and
``imgsrv worker`` alike) looks for due schedules about once a second and fires them with
``FIRE_SCHEDULE``, which creates the job only if the run it was given is still the schedule's
next one, and moves the next run on in the same step: however many processes see a schedule
due, exactly one fires it, and no leader is needed. The run after a firing is computed from
the time of the firing, so a schedule that was due many times while nothing ran (downtime)
fires once, not once per missed period.

Expressions are the five-field cron of crontab(5) (minute, hour, day of month, month, day of
week), evaluated in the schedule's IANA time zone with its daylight-saving changes, by cronsim:
a small, dependency-free evaluator maintained with Healthchecks.io, which parses strictly
(a wrong field is an error, not a guess). croniter, the other common choice, was declared
abandoned by its author in 2025 and has since moved to new maintainers; cronsim has had one
maintainer and steady releases throughout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from cronsim import CronSim, CronSimError

from imgsrv.jobs import scripts
from imgsrv.jobs.errors import InvalidJob, ScheduleNotFound, TooManySchedules
from imgsrv.jobs.model import JobRequest, JsonObject, iso_time
from imgsrv.jobs.queue import JobQueue, is_job_id, new_job_id, queue_errors

log = logging.getLogger("imgsrv.jobs")

MAX_CRON = 200
DUE_BATCH = 50


def parse_cron(expression: str) -> str:
    """The expression if cronsim accepts it; InvalidJob naming ``cron`` otherwise."""
    text = " ".join(expression.split())
    if not text or len(text) > MAX_CRON:
        raise InvalidJob("cron", f"a five-field cron expression of at most {MAX_CRON} characters")
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC")))
    except (CronSimError, ValueError) as exc:
        raise InvalidJob("cron", f"{text!r} is not a cron expression: {exc}") from None
    return text


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA time zone of that name; InvalidJob naming ``timezone`` otherwise."""
    try:
        if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidJob("timezone", f"{name[:64]!r} is not an IANA time zone") from None


def next_run(cron: str, zone: ZoneInfo, after_ms: int) -> int:
    """The first time (Unix ms) strictly after ``after_ms`` that ``cron`` names in ``zone``."""
    start = datetime.fromtimestamp(after_ms / 1000, zone)
    return int(next(CronSim(cron, start)).timestamp() * 1000)


@dataclass(slots=True)
class Schedule:
    """One schedule as read from Redis."""

    id: str
    tenant: str
    cron: str
    timezone: str
    job: JsonObject
    created_at: int
    next_run: int
    last_run: int | None
    last_job: str | None
    fired: int

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> Schedule:
        text = {_text(k): _text(v) for k, v in raw.items()}
        return cls(
            id=text["id"],
            tenant=text["tenant"],
            cron=text["cron"],
            timezone=text["timezone"],
            job=orjson.loads(text["job"]),
            created_at=int(text["created_at"]),
            next_run=int(text["next_run"]),
            last_run=int(text["last_run"]) if text.get("last_run") else None,
            last_job=text.get("last_job") or None,
            fired=int(text.get("fired", "0")),
        )

    def body(self) -> JsonObject:
        """The public JSON shape (``GET /v1/schedules``)."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "cron": self.cron,
            "timezone": self.timezone,
            "job": self.job,
            "created_at": iso_time(self.created_at),
            "next_run": iso_time(self.next_run),
            "last_run": iso_time(self.last_run),
            "last_job": self.last_job,
            "fired": self.fired,
            "links": {
                "self": f"/v1/schedules/{self.id}",
                "last_job": f"/v1/jobs/{self.last_job}" if self.last_job else None,
            },
        }


class ScheduleStore:
    """Creating, listing, deleting and firing the schedules of one queue."""

    def __init__(self, queue: JobQueue, max_per_tenant: int) -> None:
        self.queue = queue
        self.max_per_tenant = max_per_tenant
        self._create = queue.script(scripts.CREATE_SCHEDULE)
        self._delete = queue.script(scripts.DELETE_SCHEDULE)
        self._due = queue.script(scripts.DUE_SCHEDULES)
        self._fire = queue.script(scripts.FIRE_SCHEDULE)

    def key(self, schedule_id: str) -> str:
        return f"{self.queue.prefix}:schedule:{schedule_id}"

    async def create(
        self, tenant: str, cron: str, zone: ZoneInfo, request: JobRequest, job: JsonObject
    ) -> Schedule:
        """Store a schedule whose first run is the next time ``cron`` names."""
        schedule_id = new_job_id()
        first = next_run(cron, zone, await self._redis_now())
        fields = {
            "cron": cron,
            "timezone": zone.key,
            "job": orjson.dumps(job).decode(),
            "priority": request.priority,
            "request": request.stored().decode(),
            "callback_url": request.callback_url,
        }
        created = await self.queue.run(
            self._create,
            self.key(schedule_id),
            schedule_id,
            tenant,
            orjson.dumps(fields).decode(),
            first,
            self.max_per_tenant,
        )
        if not created:
            raise TooManySchedules(f"a tenant may have at most {self.max_per_tenant} schedules")
        return await self.require(schedule_id, tenant)

    async def get(self, schedule_id: str, tenant: str | None) -> Schedule | None:
        """The schedule, or None (also for another tenant's; ``tenant`` None = any)."""
        if not is_job_id(schedule_id):
            return None
        with queue_errors():
            raw = await self.queue.redis.hgetall(self.key(schedule_id))
        if not raw:
            return None
        found = Schedule.from_hash(raw)
        return found if tenant is None or found.tenant == tenant else None

    async def require(self, schedule_id: str, tenant: str | None) -> Schedule:
        found = await self.get(schedule_id, tenant)
        if found is None:
            raise ScheduleNotFound(f"no schedule {schedule_id[:64]!r}")
        return found

    async def list_schedules(self, tenant: str | None) -> list[Schedule]:
        """The schedules of ``tenant`` (None = all), by next run."""
        redis = self.queue.redis
        with queue_errors():
            if tenant is None:
                ids = await redis.zrange(f"{self.queue.prefix}:schedules", 0, -1)
            else:
                index = f"{self.queue.prefix}:tenant:{tenant}:schedules"
                ids = await redis.zrange(index, 0, -1)
            async with redis.pipeline(transaction=False) as pipe:
                for schedule_id in cast(list[bytes], ids):
                    pipe.hgetall(self.key(_text(schedule_id)))
                records = await pipe.execute()
        found = [Schedule.from_hash(raw) for raw in records if raw]
        found.sort(key=lambda schedule: schedule.next_run)
        return found

    async def delete(self, schedule_id: str, tenant: str | None) -> Schedule:
        """Delete the schedule (jobs it fired stay); ScheduleNotFound when there is none."""
        found = await self.require(schedule_id, tenant)
        deleted = await self.queue.run(
            self._delete, self.key(schedule_id), schedule_id, tenant or ""
        )
        if not deleted:
            raise ScheduleNotFound(f"no schedule {schedule_id!r}")
        return found

    async def fire_due(self) -> list[str]:
        """Fire every schedule that is due; returns the ids of the jobs this call created."""
        reply = await self.queue.run(self._due, f"{self.queue.prefix}:schedules", DUE_BATCH)
        now = int(reply[0])
        created: list[str] = []
        for entry in reply[1:]:
            schedule_id, due, cron, zone_name = (_text(item) for item in entry)
            try:
                following = next_run(cron, ZoneInfo(zone_name), max(now, int(due)))
            except (CronSimError, ZoneInfoNotFoundError, ValueError, StopIteration):
                log.exception("schedule cannot be evaluated", extra={"schedule": schedule_id})
                continue
            job_id = new_job_id()
            fired = await self.queue.accept(
                self._fire,
                self.key(schedule_id),
                schedule_id,
                due,
                following,
                job_id,
                self.queue.config.max_attempts,
            )
            if fired:
                created.append(job_id)
                log.info(
                    "schedule fired",
                    extra={"schedule": schedule_id, "job": job_id, "next_run": iso_time(following)},
                )
        return created

    async def _redis_now(self) -> int:
        with queue_errors():
            seconds, micros = await self.queue.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
