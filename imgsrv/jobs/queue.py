"""The job queue on Redis: submit, claim, heartbeat, finish, retry, cancel, list.

Every change of a job's state is one Lua script (:mod:`imgsrv.jobs.scripts`), so any number of
server processes and ``imgsrv worker`` processes on any number of machines can share the queue
without a leader: each may claim, reap expired leases and promote delayed jobs.

Execution is at least once: a worker that dies (or loses Redis for longer than its lease) has
its job queued again by whoever reaps next. Rendering is idempotent, so a re-run is harmless,
and a worker whose lease was taken over learns it at its next heartbeat and stops.

``attempts`` counts claims. An attempt whose worker died counts like a failed one, so a job
that kills its worker every time fails after ``job_max_attempts`` instead of going round
forever; a job handed back by a worker that is shutting down gets its attempt back.

A new job is acknowledged (202) only once it is durable: when the master holding the queue
has replicas, the accepting script and a ``WAIT`` for ``job_accept_replicas`` of them go out
together (:class:`imgsrv.redis_client.ReplicaWait`, in :meth:`JobQueue.accept`), so a failover
right after the 202 cannot lose the job. Replicas that do not confirm within
``job_accept_timeout`` make it a 503.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from imgsrv import metrics
from imgsrv.jobs import scripts
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import InvalidJob, JobConflict, JobNotFound, QueueUnavailable
from imgsrv.jobs.model import (
    PRIORITIES,
    STATUSES,
    Job,
    JobRequest,
    JsonObject,
    Priority,
    Status,
)
from imgsrv.redis_client import REDIS_ERRORS, RedisClient, ReplicaWait

KEY_VERSION = "v1"


def new_job_id() -> str:
    """24 hex digits: milliseconds then randomness, so ids sort roughly by submission."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def is_job_id(text: str) -> bool:
    return len(text) == 24 and all(c in "0123456789abcdef" for c in text)


@dataclass(slots=True)
class Claim:
    """A job a worker took, with the lease token that proves it still holds it."""

    job: Job
    token: str
    waited: float = 0.0  # seconds the job was ready before this claim took it


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Queue numbers for the metrics, and how many expired leases this call reaped."""

    reaped: int
    ready: dict[str, int]
    delayed: int
    running: int
    callbacks_due: int


@contextlib.contextmanager
def queue_errors() -> Iterator[None]:
    """Redis failures as QueueUnavailable (503 in the API, a pause in workers)."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise QueueUnavailable(f"the job queue's Redis failed: {type(exc).__name__}") from exc


DEPENDENCY_PROBLEMS = {
    "missing": "no job {0!r} of this tenant",
    "failed": "job {0} has failed or was cancelled; retry it first",
    "cycle": "job {0} depends on this job: dependencies may not form a cycle",
}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _recency(job: Job) -> int:
    return job.finished_at if job.finished_at is not None else job.created_at


def _flat_to_hash(flat: Sequence[bytes]) -> dict[bytes | str, bytes | str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


class JobQueue:
    """The queue of one deployment (one ``redis_prefix``) on one Redis."""

    def __init__(self, redis: RedisClient, config: JobConfig) -> None:
        self.redis = redis
        self.config = config
        self._durable = ReplicaWait(redis, config.accept_replicas, config.accept_timeout)
        # The braces are a Redis Cluster hash tag: every queue key lives in one slot.
        self.prefix = f"{{{config.prefix}:jobs}}:{KEY_VERSION}"

        script = self.script
        self._submit = script(scripts.SUBMIT)
        self._claim = script(scripts.CLAIM)
        self._heartbeat = script(scripts.HEARTBEAT)
        self._complete = script(scripts.COMPLETE)
        self._retry = script(scripts.RETRY)
        self._release = script(scripts.RELEASE)
        self._cancel = script(scripts.CANCEL)
        self._maintain = script(scripts.MAINTAIN)
        self._take_callbacks = script(scripts.TAKE_CALLBACKS)
        self._callback_result = script(scripts.CALLBACK_RESULT)
        self._rerun = script(scripts.RERUN)
        self._set_priority = script(scripts.SET_PRIORITY)
        self._pause = script(scripts.PAUSE)
        self._queue_stats = script(scripts.QUEUE_STATS)

    def script(self, body: str) -> AsyncScript:
        """One of :mod:`imgsrv.jobs.scripts`, with the shared prelude, registered on this Redis."""
        return self.redis.register_script(scripts.PRELUDE + body)

    # ----------------------------------------------------------------------- key names

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def idempotency_key(self, tenant: str, key: str) -> str:
        # Hashed: client keys may be long or contain anything.
        return f"{self.prefix}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    def index_key(self, tenant: str, status: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:{status}"

    @property
    def depth_key(self) -> str:
        return f"{self.prefix}:depth"

    def timeline_key(self, job_id: str) -> str:
        return f"{self.prefix}:timeline:{job_id}"

    async def run(self, script: AsyncScript, key: str, *args: str | int | bytes) -> Any:
        """Run a queue script; ``key`` is any key of the queue (it routes the call)."""
        with queue_errors():
            return await script(keys=[key], args=[self.prefix, self.config.retention_ms, *args])

    # ----------------------------------------------------------------------- API side

    async def submit(
        self, tenant: str, request: JobRequest, job_id: str | None = None
    ) -> tuple[Job, bool]:
        """Queue a job; returns it and whether it is new (False: idempotency key seen).

        Raises InvalidJob (``depends_on``) when a dependency is missing, another tenant's, has
        failed, or would close a cycle; nothing is written then. ``job_id`` is the id to give
        the job (default: a new one).
        """
        job_id = job_id or new_job_id()
        idem = self.idempotency_key(tenant, request.idempotency_key)
        reply = await self.accept(
            self._submit,
            self.job_key(job_id),
            job_id,
            tenant,
            request.priority,
            request.delay_ms,
            request.run_at_ms,
            idem if request.idempotency_key else "",
            request.stored(),
            request.callback_url,
            self.config.max_attempts,
            request.idempotency_key,
            orjson.dumps(list(request.depends_on)).decode() if request.depends_on else "",
        )
        if not reply[0]:
            problem, culprit = _text(reply[1]), _text(reply[2])
            raise InvalidJob("depends_on", DEPENDENCY_PROBLEMS[problem].format(culprit))
        found_id, created = _text(reply[0]), bool(reply[1])
        job = await self.get(found_id, tenant)
        if job is None:  # expired between the two calls: only possible for an old key
            raise QueueUnavailable("the job of this idempotency key just expired; retry")
        return job, created

    async def accept(self, script: AsyncScript, key: str, *args: str | int | bytes) -> Any:
        """Run a script that accepts new jobs (a submission, a schedule firing).

        Every job enters the queue through here, so it is where acceptance waits for the
        replicas (see the module docstring); QueueUnavailable when they did not confirm.
        """
        started = time.perf_counter()
        with queue_errors():
            reply, confirmed = await self._durable.run(
                script, [key], [self.prefix, self.config.retention_ms, *args]
            )
        if confirmed is not None:
            metrics.JOB_ACCEPT_WAIT.observe(time.perf_counter() - started)
            if confirmed < 1:
                metrics.JOB_ACCEPT_UNCONFIRMED.inc()
                raise QueueUnavailable(
                    "no replica of the job queue's Redis confirmed the job within "
                    f"{self.config.accept_timeout:g} s; it may have been queued: resubmit "
                    "with the same idempotency_key to get the same job"
                )
        return reply

    async def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None if it does not exist (or belongs to another tenant than ``tenant``;
        None = any tenant)."""
        with queue_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.job_key(job_id))
                pipe.lrange(self.timeline_key(job_id), 0, -1)
                raw, timeline = await pipe.execute()
        if not raw:
            return None
        job = Job.from_hash(raw)
        if tenant is not None and job.tenant != tenant:
            return None
        job.timeline = [orjson.loads(event) for event in timeline]
        await self._dependency_status([job])
        return job

    async def require(self, job_id: str, tenant: str | None) -> Job:
        """The job, or JobNotFound."""
        found = await self.get(job_id, tenant) if is_job_id(job_id) else None
        if found is None:
            raise JobNotFound(f"no job {job_id[:64]!r}")
        return found

    async def _dependency_status(self, jobs: list[Job]) -> None:
        deps = sorted({dep for job in jobs for dep in job.depends_on})
        if not deps:
            return
        with queue_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for dep in deps:
                    pipe.hget(self.job_key(dep), "status")
                statuses = await pipe.execute()
        found = {dep: _text(status) for dep, status in zip(deps, statuses, strict=True) if status}
        for job in jobs:
            job.dependency_status = {dep: found[dep] for dep in job.depends_on if dep in found}

    async def list_jobs(
        self,
        tenant: str | None,
        status: Status | None,
        limit: int,
        priority: Priority | None = None,
    ) -> list[Job]:
        """The most recent jobs (of ``tenant``, or of all tenants for None), newest first (by
        finish time once finished), optionally of one status and priority."""
        statuses = [status] if status else list(STATUSES)
        indexes = [
            self.index_key(tenant, name) if tenant is not None else f"{self.prefix}:all:{name}"
            for name in statuses
        ]
        jobs: list[Job] = []
        # Pages of the indexes, newest first, until ``limit`` jobs of the priority are found.
        page, start = max(limit, 20), 0
        for _ in range(20):
            batch = await self._index_page(indexes, start, page)
            for raw in batch:
                job = Job.from_hash(raw)
                if priority is None or job.priority == priority:
                    jobs.append(job)
            if len(jobs) >= limit or len(batch) < page:
                break
            start += page
        jobs.sort(key=_recency, reverse=True)
        jobs = jobs[:limit]
        await self._dependency_status(jobs)
        return jobs

    async def _index_page(
        self, indexes: list[str], start: int, count: int
    ) -> list[dict[bytes | str, bytes | str]]:
        """Records of the ``start``.. ``start + count`` newest entries across ``indexes``."""
        with queue_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for index in indexes:
                    pipe.zrevrange(index, 0, start + count - 1, withscores=True)
                pages = await pipe.execute()
            newest = heapq.nlargest(
                start + count,
                (
                    (score, member.decode(), index)
                    for index, entries in zip(indexes, pages, strict=True)
                    for member, score in entries
                ),
            )[start:]
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, job_id, _ in newest:
                    pipe.hgetall(self.job_key(job_id))
                records = await pipe.execute()
            found = []
            for (_, job_id, index), raw in zip(newest, records, strict=True):
                if raw:
                    found.append(raw)
                else:  # the record expired: its index entry goes too
                    await self.redis.zrem(index, job_id)
        return found

    async def cancel(self, job_id: str, tenant: str | None) -> tuple[Job, bool]:
        """Cancel a queued job at once (and the jobs that wait for it), or flag a running one.

        Returns the job and whether this call cancelled it; JobNotFound when ``tenant`` (None =
        any) has no such job.
        """
        if not is_job_id(job_id):
            raise JobNotFound(f"no job {job_id[:64]!r}")
        reply = await self.run(self._cancel, self.job_key(job_id), job_id, tenant or "")
        if reply is None:
            raise JobNotFound(f"no job {job_id!r}")
        return await self.require(job_id, tenant), bool(reply)

    async def rerun(self, job_id: str, tenant: str | None) -> tuple[Job, bool]:
        """Queue a failed or cancelled job again under its id; True when this call queued it.

        A job already queued is answered unchanged (the call is idempotent); a running or
        succeeded one, or one whose dependency failed, is a JobConflict.
        """
        await self.require(job_id, tenant)
        reply = await self.run(
            self._rerun, self.job_key(job_id), job_id, tenant or "", self.config.max_attempts
        )
        outcome = _text(reply[0]) if reply[0] else ""
        if not outcome:
            raise JobNotFound(f"no job {job_id!r}")
        if outcome == "conflict":
            raise JobConflict(
                f"the job is {_text(reply[1])}: only failed or cancelled jobs run again"
            )
        if outcome == "dependency":
            raise JobConflict(f"its dependency {_text(reply[1])} failed: retry that job first")
        return await self.require(job_id, tenant), outcome == "queued"

    async def set_priority(
        self, job_id: str, tenant: str | None, priority: Priority
    ) -> tuple[Job, bool]:
        """Move a queued job to ``priority``; True when it moved. JobConflict unless queued."""
        await self.require(job_id, tenant)
        reply = await self.run(
            self._set_priority, self.job_key(job_id), job_id, tenant or "", priority
        )
        outcome = _text(reply[0]) if reply[0] else ""
        if not outcome:
            raise JobNotFound(f"no job {job_id!r}")
        if outcome == "conflict":
            raise JobConflict(f"the job is {_text(reply[1])}: only queued jobs change priority")
        return await self.require(job_id, tenant), outcome == "moved"

    async def pause(self, priority: Priority, paused: bool) -> bool:
        """Pause (nothing of ``priority`` starts; running jobs finish) or resume; True when
        the state changed."""
        reply = await self.run(self._pause, f"{self.prefix}:paused", priority, int(paused))
        return bool(reply)

    async def queue_stats(self) -> JsonObject:
        """Ready jobs, paused state and oldest waiting job per priority and tenant, and the
        delayed, blocked and running jobs (see ``QUEUE_STATS``)."""
        stats: JsonObject = orjson.loads(await self.run(self._queue_stats, self.depth_key))
        for entry in stats["priorities"]:
            entry["tenants"] = entry["tenants"] or []  # an empty Lua table is encoded as {}
        return stats

    # ----------------------------------------------------------------------- worker side

    async def claim(self, worker: str) -> tuple[Claim | None, int]:
        """Take the next job by priority and tenant turn; also returns how many leases expired."""
        token = secrets.token_hex(8)
        weights = self.config.weights
        reply = await self.run(
            self._claim, self.depth_key, worker, token, self.config.lease_ms, *weights
        )
        flat, reaped = reply[0], int(reply[1])
        if not flat:
            return None, reaped
        record = _flat_to_hash(flat)
        job = Job.from_hash(record)
        ready_at = int(record.get(b"ready_at", job.run_at))
        waited = max(0, (job.started_at or ready_at) - ready_at) / 1000
        return Claim(job, token, waited), reaped

    async def heartbeat(
        self, claim: Claim, results: list[JsonObject | None] | None = None
    ) -> tuple[bool, bool]:
        """Renew the lease (and store progress); returns (lease still ours, cancel requested)."""
        reply = await self.run(
            self._heartbeat,
            self.job_key(claim.job.id),
            claim.job.id,
            claim.token,
            self.config.lease_ms,
            orjson.dumps(results).decode() if results is not None else "",
        )
        return bool(reply[0]), bool(reply[1])

    async def complete(self, claim: Claim, status: Status, error: JsonObject | None = None) -> bool:
        """Finish the job (succeeded, failed or cancelled); False if the lease was lost."""
        reply = await self.run(
            self._complete,
            self.job_key(claim.job.id),
            claim.job.id,
            claim.token,
            status,
            orjson.dumps(claim.job.results).decode(),
            orjson.dumps(error).decode() if error else "",
        )
        return bool(reply)

    async def retry(self, claim: Claim, backoff: float, error: JsonObject) -> str:
        """Queue the job again after ``backoff`` seconds, or fail it when out of attempts.

        Returns ``"queued"``, ``"failed"`` or ``"lost"`` (the lease was no longer ours).
        """
        reply = await self.run(
            self._retry,
            self.job_key(claim.job.id),
            claim.job.id,
            claim.token,
            int(backoff * 1000),
            orjson.dumps(claim.job.results).decode(),
            orjson.dumps(error).decode(),
        )
        return _text(reply)

    async def release(self, claim: Claim) -> bool:
        """Hand the job back (shutdown): queued again at once, this attempt not counted."""
        reply = await self.run(
            self._release,
            self.job_key(claim.job.id),
            claim.job.id,
            claim.token,
            orjson.dumps(claim.job.results).decode(),
        )
        return bool(reply)

    async def maintain(self) -> QueueStats:
        """Reap expired leases, promote due delayed jobs, and read the queue's numbers."""
        reply = await self.run(self._maintain, self.depth_key)
        reaped, high, normal, low, delayed, running, due = (int(v) for v in reply)
        ready = dict(zip(PRIORITIES, (high, normal, low), strict=True))
        return QueueStats(reaped, ready, delayed, running, due)

    async def oldest_waits(self) -> dict[str, float]:
        """Seconds the longest-waiting ready job of each priority has been ready (0 = none)."""
        stats = await self.queue_stats()
        now = int(stats["now"])
        return {
            str(entry["priority"]): (now - int(entry["oldest_at"])) / 1000
            if entry["oldest_at"]
            else 0.0
            for entry in stats["priorities"]
        }

    async def take_callbacks(self, lease: float, count: int) -> list[str]:
        """Ids of jobs whose callback is due, held for ``lease`` seconds by the caller."""
        reply = await self.run(
            self._take_callbacks, f"{self.prefix}:callbacks", int(lease * 1000), count
        )
        return [item.decode() for item in reply]

    async def callback_result(self, job_id: str, state: JsonObject, retry_in: float | None) -> None:
        """Store a delivery's outcome; ``retry_in`` seconds until the next try, None = done."""
        await self.run(
            self._callback_result,
            self.job_key(job_id),
            job_id,
            orjson.dumps(state).decode(),
            -1 if retry_in is None else int(retry_in * 1000),
        )
