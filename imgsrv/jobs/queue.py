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

A submission is acknowledged (202) only once it is durable: when the master holding the queue
has replicas, the SUBMIT script and a ``WAIT`` for ``job_accept_replicas`` of them go out
together (:class:`imgsrv.redis_client.ReplicaWait`), so a failover right after the 202 cannot
lose the job. Replicas that do not confirm within ``job_accept_timeout`` make it a 503.
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
from imgsrv.jobs.errors import QueueUnavailable
from imgsrv.jobs.model import PRIORITIES, STATUSES, Job, JobRequest, JsonObject, Status
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

        def script(body: str) -> AsyncScript:
            return redis.register_script(scripts.PRELUDE + body)

        self._submit = script(scripts.SUBMIT)
        self._claim = script(scripts.CLAIM)
        self._heartbeat = script(scripts.HEARTBEAT)
        self._complete = script(scripts.COMPLETE)
        self._retry = script(scripts.RETRY)
        self._release = script(scripts.RELEASE)
        self._cancel = script(scripts.CANCEL)
        self._maintain = script(scripts.MAINTAIN)
        self._oldest_ready = script(scripts.OLDEST_READY)
        self._take_callbacks = script(scripts.TAKE_CALLBACKS)
        self._callback_result = script(scripts.CALLBACK_RESULT)

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

    async def _run(self, script: AsyncScript, key: str, *args: str | int | bytes) -> Any:
        with queue_errors():
            return await script(keys=[key], args=[self.prefix, self.config.retention_ms, *args])

    # ----------------------------------------------------------------------- API side

    async def submit(self, tenant: str, request: JobRequest) -> tuple[Job, bool]:
        """Queue a job; returns it and whether it is new (False: idempotency key seen)."""
        job_id = new_job_id()
        idem = self.idempotency_key(tenant, request.idempotency_key)
        args: list[str | int | bytes] = [
            self.prefix,
            self.config.retention_ms,
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
        ]
        started = time.perf_counter()
        with queue_errors():
            reply, confirmed = await self._durable.run(self._submit, [self.job_key(job_id)], args)
        if confirmed is not None:
            metrics.JOB_ACCEPT_WAIT.observe(time.perf_counter() - started)
            if confirmed < 1:
                metrics.JOB_ACCEPT_UNCONFIRMED.inc()
                raise QueueUnavailable(
                    "no replica of the job queue's Redis confirmed the job within "
                    f"{self.config.accept_timeout:g} s; it may have been queued: resubmit "
                    "with the same idempotency_key to get the same job"
                )
        found_id, created = reply[0].decode(), bool(reply[1])
        job = await self.get(found_id, tenant)
        if job is None:  # expired between the two calls: only possible for an old key
            raise QueueUnavailable("the job of this idempotency key just expired; retry")
        return job, created

    async def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None if it does not exist (or belongs to another tenant)."""
        with queue_errors():
            raw = await self.redis.hgetall(self.job_key(job_id))
        if not raw:
            return None
        job = Job.from_hash(raw)
        return job if tenant is None or job.tenant == tenant else None

    async def list_jobs(self, tenant: str, status: Status | None, limit: int) -> list[Job]:
        """The tenant's most recent jobs, newest first (by finish time once finished)."""
        statuses = [status] if status else list(STATUSES)
        with queue_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in statuses:
                    pipe.zrevrange(self.index_key(tenant, name), 0, limit - 1, withscores=True)
                pages = await pipe.execute()
            newest = heapq.nlargest(
                limit,
                (
                    (score, member.decode(), name)
                    for name, page in zip(statuses, pages, strict=True)
                    for member, score in page
                ),
            )
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, job_id, _ in newest:
                    pipe.hgetall(self.job_key(job_id))
                records = await pipe.execute()
            jobs: list[Job] = []
            for (_, job_id, name), raw in zip(newest, records, strict=True):
                if raw:
                    jobs.append(Job.from_hash(raw))
                else:  # the record expired: its index entry goes too
                    await self.redis.zrem(self.index_key(tenant, name), job_id)
        return jobs

    async def cancel(self, job_id: str, tenant: str) -> tuple[Job | None, bool]:
        """Cancel a queued job at once, or flag a running one.

        Returns the job (None if the tenant has no such job) and whether this call cancelled it.
        """
        reply = await self._run(self._cancel, self.job_key(job_id), job_id, tenant)
        if reply is None:
            return None, False
        return await self.get(job_id, tenant), bool(reply)

    # ----------------------------------------------------------------------- worker side

    async def claim(self, worker: str) -> tuple[Claim | None, int]:
        """Take the next job by priority and tenant turn; also returns how many leases expired."""
        token = secrets.token_hex(8)
        weights = self.config.weights
        reply = await self._run(
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
        reply = await self._run(
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
        reply = await self._run(
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
        reply = await self._run(
            self._retry,
            self.job_key(claim.job.id),
            claim.job.id,
            claim.token,
            int(backoff * 1000),
            orjson.dumps(claim.job.results).decode(),
            orjson.dumps(error).decode(),
        )
        return str(reply.decode() if isinstance(reply, bytes) else reply)

    async def release(self, claim: Claim) -> bool:
        """Hand the job back (shutdown): queued again at once, this attempt not counted."""
        reply = await self._run(
            self._release,
            self.job_key(claim.job.id),
            claim.job.id,
            claim.token,
            orjson.dumps(claim.job.results).decode(),
        )
        return bool(reply)

    async def maintain(self) -> QueueStats:
        """Reap expired leases, promote due delayed jobs, and read the queue's numbers."""
        reply = await self._run(self._maintain, self.depth_key)
        reaped, high, normal, low, delayed, running, due = (int(v) for v in reply)
        ready = dict(zip(PRIORITIES, (high, normal, low), strict=True))
        return QueueStats(reaped, ready, delayed, running, due)

    async def oldest_waits(self) -> dict[str, float]:
        """Seconds the longest-waiting ready job of each priority has been ready (0 = none)."""
        reply = await self._run(self._oldest_ready, self.depth_key)
        return {p: int(ms) / 1000 for p, ms in zip(PRIORITIES, reply, strict=True)}

    async def take_callbacks(self, lease: float, count: int) -> list[str]:
        """Ids of jobs whose callback is due, held for ``lease`` seconds by the caller."""
        reply = await self._run(
            self._take_callbacks, f"{self.prefix}:callbacks", int(lease * 1000), count
        )
        return [item.decode() for item in reply]

    async def callback_result(self, job_id: str, state: JsonObject, retry_in: float | None) -> None:
        """Store a delivery's outcome; ``retry_in`` seconds until the next try, None = done."""
        await self._run(
            self._callback_result,
            self.job_key(job_id),
            job_id,
            orjson.dumps(state).decode(),
            -1 if retry_in is None else int(retry_in * 1000),
        )
