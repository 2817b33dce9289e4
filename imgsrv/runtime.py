"""Runtime: everything one process needs to render, built once per process.

The app's lifespan and ``imgsrv worker`` both open a Runtime. It is created inside the process
that uses it, after any fork: libvips deadlocks in a child forked after its threads started,
and sockets must not be shared between processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields

from imgsrv import metrics
from imgsrv.cache.breaker import CircuitBreaker
from imgsrv.cache.l1 import L1Cache
from imgsrv.cache.l2 import L2Cache
from imgsrv.cache.purge import listen_for_purges
from imgsrv.cache.recent import RecentSources
from imgsrv.config import Settings
from imgsrv.egress import EgressMeter, saver_mode
from imgsrv.logs import flush_logs
from imgsrv.memory import limit_malloc_arenas, release_free_memory
from imgsrv.pool import TransformPool
from imgsrv.redis_client import RedisClient, close_redis, connect_redis, warm_up
from imgsrv.render import Renderer, RenderTuning
from imgsrv.sources import SourceFetcher
from imgsrv.transform import TransformOptions, configure_vips


@dataclass
class Runtime:
    """The per-process objects: pool, HTTP client, Redis client, renderer, egress meter."""

    settings: Settings
    pool: TransformPool
    fetcher: SourceFetcher
    redis: RedisClient | None
    renderer: Renderer
    egress: EgressMeter
    background: list[asyncio.Task[None]] = field(default_factory=list)


def transform_options(settings: Settings) -> TransformOptions:
    """The transform's limits and defaults: the settings of the same names."""
    names = (f.name for f in fields(TransformOptions))
    return TransformOptions(**{name: getattr(settings, name) for name in names})


def build_l2(settings: Settings, redis: RedisClient) -> L2Cache:
    breaker = CircuitBreaker(settings.redis_breaker_failures, settings.redis_breaker_reset)
    return L2Cache(
        redis, prefix=settings.redis_prefix, timeout=settings.redis_timeout, breaker=breaker
    )


async def flush_periodically(renderer: Renderer, interval: float = 0.5) -> None:
    """Write batched log lines and counter increments out, even when no new ones arrive, and
    sample the pool's occupancy, L1's bytes and the process's CPU time for the metrics."""
    cpu = time.process_time()
    while True:
        await asyncio.sleep(interval)
        flush_logs()
        renderer.sample_gauges()
        metrics.BATCHED.flush()
        now = time.process_time()
        metrics.CPU_SECONDS.inc(now - cpu)
        cpu = now


async def trim_when_idle(
    pool: TransformPool, interval: float, expire: Callable[[], int] = lambda: 0
) -> None:
    """Return freed memory to the system whenever the pool has gone idle after some work.

    ``expire`` runs first on every tick and says how many cached objects it dropped; dropping
    any also earns a trim, so memory held by a burst comes back once its caches expire.
    """
    trimmed_at = pool.completed
    while True:
        await asyncio.sleep(interval)
        dropped = expire()
        if pool.admitted == 0 and (pool.completed != trimmed_at or dropped):
            trimmed_at = pool.completed
            await asyncio.to_thread(release_free_memory)


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Create the process's runtime; close everything on exit."""
    limit_malloc_arenas(settings.malloc_arena_max)
    configure_vips(settings.vips_concurrency)
    pool = TransformPool(
        settings.thread_count,
        settings.queue_limit,
        retry_after=settings.retry_after,
        max_wait=settings.max_queue_wait,
        nice=settings.transform_nice,
    )
    metrics.POOL_THREADS.set(pool.threads)
    metrics.CPU_CORES.set(settings.cpu_count)
    fetcher = SourceFetcher(settings)
    redis = connect_redis(settings)
    if redis is not None:
        await warm_up(redis, timeout=max(1.0, 4 * settings.redis_timeout))
    l2 = build_l2(settings, redis) if redis is not None else None
    options = transform_options(settings)
    saver = saver_mode(options, settings)
    renderer = Renderer(
        fetcher,
        pool,
        options,
        l1=L1Cache(settings.l1_bytes, settings.l1_ttl),
        l2=l2,
        recent=RecentSources(settings.source_cache_bytes, settings.source_cache_ttl),
        tuning=RenderTuning(
            lock_ttl_ms=int(settings.render_lock_ttl * 1000),
            lock_wait=settings.render_lock_wait,
        ),
        saver=saver,
    )
    egress = EgressMeter(settings, redis, saver)
    runtime = Runtime(settings, pool, fetcher, redis, renderer, egress)
    runtime.background.append(asyncio.create_task(flush_periodically(renderer)))
    runtime.background.append(asyncio.create_task(egress.run()))
    if settings.trim_interval > 0:
        runtime.background.append(
            asyncio.create_task(
                trim_when_idle(pool, settings.trim_interval, renderer.expire_memory)
            )
        )
    if redis is not None and l2 is not None:
        runtime.background.append(
            asyncio.create_task(listen_for_purges(redis, l2.purge_channel, renderer.drop_local))
        )
    try:
        yield runtime
    finally:
        for task in runtime.background:
            task.cancel()
        await asyncio.gather(*runtime.background, return_exceptions=True)
        await egress.flush()  # what was served since the last flush still counts
        flush_logs()
        metrics.BATCHED.flush()
        if redis is not None:
            await close_redis(redis)
        await fetcher.aclose()
        pool.shutdown()
