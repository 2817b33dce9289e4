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
from imgsrv.jobs.model import JsonObject, Status, log_job
from imgsrv.jobs.queue import Claim, JobQueue
from imgsrv.render import RenderResult
from imgsrv.runtime import Runtime, open_runtime
from imgsrv.spec import TransformSpec, parse_options, split_options
from imgsrv.urls import sign_path, spec_limits, spec_path

log = logging.getLogger("imgsrv.jobs")

T = TypeVar("T")

SHUTDOWN_GRACE = 20.0  # seconds to finish the variants in hand before leases are abandoned
STATS_INTERVAL = 2.0  # seconds between queue metric updates (and reaping when idle)

INTERNAL_ERROR: JsonObject = {
    "type": "urn:imgsrv:problem:internal",
    "title": "Internal error",
    "status": 500,
    "detail": "the worker failed unexpectedly; the error was logged",
}


@dataclasses.dataclass(slots=True)
class _Run:
    """What the heartbeat learns about a job while its variants render."""

    cancel_requested: bool = False
    lost: bool = False
    variant: int = 0


class JobWorker:
    """Runs queued jobs in ``concurrency`` slots of this process."""

    def __init__(
        self, runtime: Runtime, queue: JobQueue, config: JobConfig, concurrency: int
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.config = config
        self.concurrency = concurrency
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.limits = spec_limits(runtime.settings)
        self.callbacks = CallbackSender(queue, config, runtime.settings)
        self._stopping = asyncio.Event()
        self._queue_down = False

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

    def _reaped(self, count: int) -> None:
        if count:
            metrics.JOB_LEASES_REAPED.inc(count)
            # The jobs were queued again (or failed when out of attempts) by the script.
            log.warning(
                "took back jobs of workers that stopped renewing their lease", extra={"jobs": count}
            )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the worker is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

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
            self._reaped(reaped)
            if claim is None:
                # Jitter spreads the polls of many idle slots over the interval.
                await self._pause(self.config.poll_interval * random.uniform(0.5, 1.0))
                continue
            try:
                await self._process(claim)
            except Exception:
                # Never lose the slot over one job: its lease expires and it is reaped.
                log.exception("job worker slot failed", extra={"job": claim.job.id})

    async def _housekeeping(self) -> None:
        """Callbacks, queue metrics, and reaping while no slot claims."""
        next_stats = 0.0
        while not self._stopping.is_set():
            try:
                await self.callbacks.deliver_due()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + STATS_INTERVAL
                    self._reaped(await record_queue_stats(self.queue))
            except QueueUnavailable as exc:
                self._queue_state(exc)
            except Exception:
                log.exception("job housekeeping failed")
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
        """Render every variant not done yet; returns succeeded, cancelled, released or lost."""
        job = claim.job
        for index, options in enumerate(job.options):
            if job.results[index] is not None:  # rendered by an earlier attempt
                continue
            if run.cancel_requested:
                return "cancelled"
            if self._stopping.is_set():
                return "released"
            run.variant = index
            spec = parse_options(job.source, split_options(options), self.limits)
            rendered = await self._render(spec)
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

    async def _render(self, spec: TransformSpec) -> RenderResult | None:
        """Render on the shared pool; None when the worker stopped while the pool was full."""
        while True:
            try:
                return await self.runtime.renderer.render(spec, background=True)
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


async def record_queue_stats(queue: JobQueue) -> int:
    """Reap and promote, and set the queue gauges; returns how many leases were reaped."""
    stats = await queue.maintain()
    for priority, depth in stats.ready.items():
        metrics.JOBS_QUEUED.labels(priority).set(depth)
    metrics.JOBS_DELAYED.set(stats.delayed)
    metrics.JOBS_RUNNING.set(stats.running)
    metrics.JOB_CALLBACKS_DUE.set(stats.callbacks_due)
    for priority, seconds in (await queue.oldest_waits()).items():
        metrics.JOBS_OLDEST_WAIT.labels(priority).set(seconds)
    return stats.reaped


async def watch_queue(queue: JobQueue) -> None:
    """Keep the queue gauges current in a server that runs no job worker itself (the gauges
    the autoscalers read come from the servers' /metrics)."""
    while True:
        with contextlib.suppress(QueueUnavailable):
            await record_queue_stats(queue)
        await asyncio.sleep(STATS_INTERVAL)


async def stop_worker(worker: JobWorker, task: asyncio.Task[None]) -> None:
    """Stop gracefully; after SHUTDOWN_GRACE the rest is cancelled (its leases then expire)."""
    worker.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def serve_jobs(
    runtime: Runtime, config: JobConfig, drain: Drain | None = None
) -> AsyncIterator[JobQueue | None]:
    """The server's job queue (None without Redis) and, with ``job_workers`` > 0, its worker.

    The worker stops claiming as soon as the process starts draining.
    """
    if runtime.redis is None:
        yield None
        return
    queue = JobQueue(runtime.redis, config)
    if runtime.settings.job_workers < 1:
        watcher = asyncio.create_task(watch_queue(queue))
        try:
            yield queue
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        return
    worker = JobWorker(runtime, queue, config, runtime.settings.job_workers)
    task = asyncio.create_task(worker.run())
    unsubscribe = drain.on_drain(worker.stop) if drain is not None else None
    try:
        yield queue
    finally:
        if unsubscribe is not None:
            unsubscribe()
        await stop_worker(worker, task)


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
    async with open_runtime(settings) as runtime:
        assert runtime.redis is not None
        worker = JobWorker(runtime, JobQueue(runtime.redis, config), config, concurrency)
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
        log.info("job worker stopped", extra={"worker": worker.name})
