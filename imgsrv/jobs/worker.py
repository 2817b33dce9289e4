"""The worker loop: claim a job, render its variants, keep the lease, settle the outcome.

A :class:`JobWorker` runs ``concurrency`` slots in one process. Each slot claims a job, renders
its variants one after the other through :meth:`imgsrv.render.Renderer.render` with
``background=True`` (L2 only, and queue places of the transform pool left to requests: the
worker never calls libvips itself), and meanwhile renews the job's lease with heartbeats.
Between variants it stores progress and stops if the job was cancelled or the worker is
shutting down. Errors decide the outcome through their ``retryable`` flag: source timeouts and
5xx answers go back to the queue with backoff, everything the client got wrong fails at once.
A full transform pool is not the job's fault: the slot waits and tries the variant again
without spending an attempt.

Every server process runs a worker with ``job_workers`` slots (see :func:`serve_jobs`);
``imgsrv worker`` runs one without HTTP (see :func:`run_worker`). On shutdown slots stop
claiming, finish the variant in hand and hand their jobs back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from imgsrv import metrics
from imgsrv.config import ConfigError, Settings
from imgsrv.drain import Drain
from imgsrv.embedded_redis import running_embedded_url
from imgsrv.errors import ImgsrvError, Overloaded
from imgsrv.jobs.callbacks import CallbackSender
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import QueueUnavailable
from imgsrv.jobs.merge import MergeWindow
from imgsrv.jobs.model import JsonObject, Status, log_job
from imgsrv.jobs.queue import Claim, JobQueue
from imgsrv.jobs.registry import WorkerInfo
from imgsrv.jobs.services import JobServices
from imgsrv.redis_client import RedisClient, close_redis, connect_redis
from imgsrv.render import RenderResult, VariantSetRender
from imgsrv.runtime import Runtime, open_runtime
from imgsrv.spec import TransformSpec, parse_options, split_options
from imgsrv.urls import sign_path, spec_limits, spec_path

log = logging.getLogger("imgsrv.jobs")

T = TypeVar("T")

SHUTDOWN_GRACE = 20.0  # seconds to finish the variants in hand before leases are abandoned
STATS_INTERVAL = 2.0  # seconds between queue metric updates (and reaping when idle)
SCHEDULE_INTERVAL = 1.0  # seconds between looks for due cron schedules

INTERNAL_ERROR: JsonObject = {
    "type": "urn:imgsrv:problem:internal",
    "title": "Internal error",
    "status": 500,
    "detail": "the worker failed unexpectedly; the error was logged",
}


def count_reaped(count: int) -> None:
    if count:
        metrics.JOB_LEASES_REAPED.inc(count)
        # The jobs were queued again (or failed when out of attempts) by the script.
        log.warning(
            "took back jobs of workers that stopped renewing their lease", extra={"jobs": count}
        )


@dataclasses.dataclass(slots=True)
class _Run:
    """What the heartbeat learns about a job while its variants render."""

    cancel_requested: bool = False
    lost: bool = False
    variant: int = 0


class JobWorker:
    """Runs queued jobs in ``concurrency`` slots of this process."""

    def __init__(
        self,
        runtime: Runtime,
        queue: JobQueue,
        config: JobConfig,
        concurrency: int,
        name: str = "",
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.config = config
        self.concurrency = concurrency
        # The registry id of the process; a job's ``worker`` is this name and the slot number.
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.limits = spec_limits(runtime.settings)
        self.callbacks = CallbackSender(queue, config, runtime.settings)
        self._stopping = asyncio.Event()
        self._queue_down = False
        # Set when a slot opens a merge window: idle slots claim at once instead of sleeping.
        self._wake = asyncio.Event()
        self.merger = MergeWindow(runtime.renderer, config.merge_window, self._wake.set)
        self.current: dict[int, str] = {}

    def current_jobs(self) -> list[str]:
        """Ids of the jobs the slots run now (for the registry)."""
        return sorted(self.current.values())

    def stop(self) -> None:
        """Stop claiming; jobs in hand finish their current variant and go back to the queue."""
        self._stopping.set()

    async def run(self) -> None:
        """Work until :meth:`stop`."""
        tasks = [asyncio.create_task(self._slot(n)) for n in range(self.concurrency)]
        tasks.append(asyncio.create_task(self._housekeeping()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.callbacks.aclose()

    def _queue_state(self, trouble: QueueUnavailable | None) -> None:
        """Log when the queue's Redis goes away and when it is back: once, not every poll."""
        if trouble is not None and not self._queue_down:
            log.warning("job queue unavailable", extra={"error": trouble.detail})
        elif trouble is None and self._queue_down:
            log.info("job queue available again")
        self._queue_down = trouble is not None

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the worker is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _idle(self, seconds: float) -> None:
        """Sleep between polls; a slot that opens a merge window wakes the idle ones."""
        self._wake.clear()
        waits = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._wake.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    # ----------------------------------------------------------------------- loops

    async def _slot(self, number: int) -> None:
        worker = f"{self.name}:{number}"
        while not self._stopping.is_set():
            try:
                claim, reaped = await self.queue.claim(worker)
            except QueueUnavailable as exc:
                self._queue_state(exc)
                await self._pause(self.config.poll_interval)
                continue
            self._queue_state(None)
            count_reaped(reaped)
            if claim is None:
                # Jitter spreads the polls of many idle slots over the interval.
                await self._idle(self.config.poll_interval * random.uniform(0.5, 1.0))
                continue
            self.current[number] = claim.job.id
            try:
                await self._process(claim)
            except Exception:
                # Never lose the slot over one job: its lease expires and it is reaped.
                log.exception("job worker slot failed", extra={"job": claim.job.id})
            finally:
                self.current.pop(number, None)

    async def _housekeeping(self) -> None:
        """Deliver due callbacks (queue upkeep and metrics are the ProcessDuties')."""
        while not self._stopping.is_set():
            try:
                await self.callbacks.deliver_due()
            except QueueUnavailable as exc:
                self._queue_state(exc)
            except Exception:
                log.exception("job callback delivery failed")
            await self._pause(self.config.poll_interval)

    # ----------------------------------------------------------------------- one job

    async def _process(self, claim: Claim) -> None:
        job = claim.job
        metrics.JOB_QUEUE_WAIT.observe(claim.waited)
        log_job(job, "running", worker=job.worker)
        run = _Run()
        work = asyncio.create_task(self._render_variants(claim, run))
        beat = asyncio.create_task(self._keep_lease(claim, run, work))
        try:
            try:
                outcome = await work
            except asyncio.CancelledError:
                if not run.lost:
                    raise
                outcome = "lost"
            except ImgsrvError as exc:
                await self._failed(claim, exc.problem() | {"variant": run.variant}, exc)
                return
            except Exception:
                log.exception("job failed unexpectedly", extra={"job": job.id})
                await self._failed(claim, INTERNAL_ERROR | {"variant": run.variant}, None)
                return
            if outcome == "lost":
                log_job(job, "lost", detail="another worker took the job over")
            elif outcome == "released":
                if await self._settle(lambda: self.queue.release(claim)):
                    log_job(job, "queued", reason="worker shutting down")
            else:
                await self._complete(claim, "cancelled" if outcome == "cancelled" else "succeeded")
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _render_variants(self, claim: Claim, run: _Run) -> str:
        """Render every variant not done yet; returns succeeded, cancelled, released or lost.

        The variants share one download and one decode of the source, and so do those of other
        jobs of the same tenant and source claimed in the same merge window.
        """
        job = claim.job
        specs = {
            index: parse_options(job.source, split_options(options), self.limits)
            for index, options in enumerate(job.options)
            if job.results[index] is None  # rendered by an earlier attempt otherwise
        }
        if not specs:
            return "succeeded"
        shared = await self.merger.share(job.tenant, job.source, list(specs.values()))
        for index, spec in specs.items():
            if run.cancel_requested:
                return "cancelled"
            if self._stopping.is_set():
                return "released"
            run.variant = index
            rendered = await self._render(shared, spec)
            if rendered is None:
                return "released"
            job.results[index] = self._result(spec, rendered)
            metrics.JOB_VARIANTS.labels(rendered.cache).inc()
            try:
                alive, cancel = await self.queue.heartbeat(claim, job.results)
            except QueueUnavailable:
                continue  # progress is kept here and stored when the job settles
            if not alive:
                run.lost = True
                return "lost"
            run.cancel_requested = run.cancel_requested or cancel
        return "succeeded"

    async def _render(self, shared: VariantSetRender, spec: TransformSpec) -> RenderResult | None:
        """Render on the shared pool; None when the worker stopped while the pool was full."""
        while True:
            try:
                return await shared.render(spec)
            except Overloaded as exc:
                # Requests fill the pool: wait for room without spending an attempt.
                await self._pause(exc.retry_after * random.uniform(0.5, 1.0))
                if self._stopping.is_set():
                    return None

    def _result(self, spec: TransformSpec, rendered: RenderResult) -> JsonObject:
        entry = rendered.entry
        return {
            "url": sign_path(spec_path(spec), self.runtime.settings),
            "bytes": len(entry.data),
            "width": entry.width,
            "height": entry.height,
            "format": entry.format,
            "content_type": entry.content_type,
            "etag": entry.etag,
        }

    async def _keep_lease(self, claim: Claim, run: _Run, work: asyncio.Task[str]) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat)
            try:
                alive, cancel = await self.queue.heartbeat(claim)
            except QueueUnavailable as exc:
                extra = {"job": claim.job.id, "error": exc.detail}
                log.warning("job heartbeat failed", extra=extra)
                continue
            if not alive:
                # The lease expired and the job was given to another worker: stop at once,
                # so that it never runs twice at the same time for longer than a heartbeat.
                run.lost = True
                work.cancel()
                return
            run.cancel_requested = run.cancel_requested or cancel

    # ----------------------------------------------------------------------- outcomes

    async def _settle(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run a queue call, retrying through a short Redis outage until the lease would end.

        If Redis stays away longer, the lease expires and the job is reaped and run again:
        at-least-once, never lost.
        """
        deadline = time.monotonic() + self.config.lease_ms / 1000
        delay = 0.1
        while True:
            try:
                return await call()
            except QueueUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("could not settle a job", extra={"error": exc.detail})
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _complete(
        self, claim: Claim, status: Status, error: JsonObject | None = None
    ) -> None:
        job = claim.job
        if not await self._settle(lambda: self.queue.complete(claim, status, error)):
            log_job(job, "lost", detail="the lease ended before the job could be finished")
            return
        metrics.JOBS_FINISHED.labels(status).inc()
        metrics.JOB_SECONDS.labels(status).observe(max(0.0, time.time() - job.created_at / 1000))
        metrics.JOB_ATTEMPTS.observe(job.attempts)
        log_job(job, status, done=job.done, total=len(job.options), error=error)

    async def _failed(self, claim: Claim, error: JsonObject, exc: ImgsrvError | None) -> None:
        """A failed attempt: retried with backoff when the error may pass, else final."""
        error.pop("instance", None)
        if exc is not None and not exc.retryable:
            await self._complete(claim, "failed", error)
            return
        job = claim.job
        backoff = self.config.retry_delay(job.attempts)
        outcome = await self._settle(lambda: self.queue.retry(claim, backoff, error))
        if outcome == "queued":
            metrics.JOB_RETRIES.labels(exc.slug if exc is not None else "internal").inc()
            log_job(job, "queued", retry_in=round(backoff, 3), error=error)
        elif outcome == "failed":
            metrics.JOBS_FINISHED.labels("failed").inc()
            metrics.JOB_SECONDS.labels("failed").observe(time.time() - job.created_at / 1000)
            metrics.JOB_ATTEMPTS.observe(job.attempts)
            log_job(job, "failed", error=error)
        else:
            log_job(job, "lost", detail="the lease ended before the retry could be queued")


# --------------------------------------------------------------------------- running


async def stop_worker(worker: JobWorker, task: asyncio.Task[None]) -> None:
    """Stop gracefully; after SHUTDOWN_GRACE the rest is cancelled (its leases then expire)."""
    await _stop_task(worker.stop, task)


class ProcessDuties:
    """What every process with the job queue does, workers or not: keep its registry record
    (and the ``imgsrv_workers_online`` gauge) current, and fire due cron schedules."""

    def __init__(
        self,
        services: JobServices,
        info: WorkerInfo,
        current: Callable[[], list[str]] = list,
    ) -> None:
        self.services = services
        self.info = info
        self.current = current
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Until :meth:`stop`; then the record says the process stopped."""
        next_beat = next_stats = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.info.interval
                    await self.services.registry.beat(self.info, self.current())
                    metrics.WORKERS_ONLINE.set(await self.services.registry.online())
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + STATS_INTERVAL
                    await self._maintain()
                await self.services.schedules.fire_due()
            except QueueUnavailable:
                pass  # the worker loops log the outage; the next round tries again
            except Exception:
                log.exception("registry, schedule or queue duty failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SCHEDULE_INTERVAL)
        with contextlib.suppress(QueueUnavailable):
            await self.services.registry.stop(self.info)

    async def _maintain(self) -> None:
        """Reap expired leases (of workers that died), promote due jobs, update the gauges:
        every process does it, so jobs of a dead worker come back even where none claims."""
        stats = await self.services.queue.maintain()
        count_reaped(stats.reaped)
        for priority, depth in stats.ready.items():
            metrics.JOBS_QUEUED.labels(priority).set(depth)
        metrics.JOBS_DELAYED.set(stats.delayed)
        metrics.JOBS_RUNNING.set(stats.running)
        metrics.JOB_CALLBACKS_DUE.set(stats.callbacks_due)
        for priority, seconds in (await self.services.queue.oldest_waits()).items():
            metrics.JOBS_OLDEST_WAIT.labels(priority).set(seconds)


async def _stop_task(stop: Callable[[], None], task: asyncio.Task[None]) -> None:
    stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def serve_jobs(
    runtime: Runtime, config: JobConfig, drain: Drain | None = None
) -> AsyncIterator[JobServices | None]:
    """The server's job services (None without Redis), its registry record and schedule
    firing, and with ``job_workers`` > 0 its worker, which stops claiming as soon as the
    process starts draining."""
    if runtime.redis is None:
        yield None
        return
    async with (
        queue_client(runtime.settings) as redis,
        _serve_jobs(runtime, JobQueue(redis, config), config, drain) as services,
    ):
        yield services


@contextlib.asynccontextmanager
async def queue_client(settings: Settings) -> AsyncIterator[RedisClient]:
    """A Redis client of the job queue's own, apart from the cache's.

    On a Redis Cluster, a client that sees a shard fail refreshes its slot map and may close
    every connection it holds, commands in flight on the healthy shards included. With a
    client of its own, the queue is not disturbed by the cache's traffic to a failing shard.
    """
    redis = connect_redis(settings)
    assert redis is not None, "the job queue needs IMGSRV_REDIS_URL"
    try:
        yield redis
    finally:
        await close_redis(redis)


@contextlib.asynccontextmanager
async def _serve_jobs(
    runtime: Runtime, queue: JobQueue, config: JobConfig, drain: Drain | None
) -> AsyncIterator[JobServices]:
    services = JobServices.on(queue, config.max_schedules)
    slots = runtime.settings.job_workers
    info = WorkerInfo.of_this_process("server", max(slots, 0), config.registry_heartbeat)
    worker = JobWorker(runtime, services.queue, config, slots, info.id) if slots > 0 else None
    duties = ProcessDuties(services, info, worker.current_jobs if worker else list)
    tasks = [asyncio.create_task(duties.run())]
    if worker is not None:
        tasks.append(asyncio.create_task(worker.run()))
    unsubscribe = drain.on_drain(worker.stop) if drain is not None and worker else None
    try:
        yield services
    finally:
        if unsubscribe is not None:
            unsubscribe()
        if worker is not None:
            await stop_worker(worker, tasks[1])
        await _stop_task(duties.stop, tasks[0])


def worker_settings(settings: Settings) -> Settings:
    """Settings for ``imgsrv worker``: Redis is required.

    Without ``redis_url``, a worker started in the folder of an ``imgsrv serve`` that runs the
    embedded redis-server uses that server's socket.
    """
    if settings.redis_url:
        return settings
    embedded = running_embedded_url(settings.data_dir) if settings.embedded_redis else None
    if embedded is not None:
        return dataclasses.replace(settings, redis_url=embedded)
    raise ConfigError(
        "imgsrv worker needs the job queue's Redis: set IMGSRV_REDIS_URL (or start it in the "
        "folder of an `imgsrv serve` running the embedded Redis)"
    )


async def run_worker(settings: Settings, concurrency: int) -> None:
    """Run a dedicated worker until SIGTERM or SIGINT, then stop gracefully."""
    config = JobConfig.from_settings(settings)
    async with open_runtime(settings) as runtime, queue_client(settings) as redis:
        services = JobServices.on(JobQueue(redis, config), config.max_schedules)
        info = WorkerInfo.of_this_process("worker", concurrency, config.registry_heartbeat)
        worker = JobWorker(runtime, services.queue, config, concurrency, info.id)
        duties = ProcessDuties(services, info, worker.current_jobs)
        duties_task = asyncio.create_task(duties.run())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop_signal, stop.set)
        log.info("job worker started", extra={"worker": worker.name, "slots": concurrency})
        task = asyncio.create_task(worker.run())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        await stop_worker(worker, task)
        await _stop_task(duties.stop, duties_task)
        log.info("job worker stopped", extra={"worker": worker.name})
