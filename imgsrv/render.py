"""Get-or-render: the one path from a TransformSpec to image bytes.

Sync requests and job workers both call :meth:`Renderer.render`:

1. L1 (process memory) hit -> done, no libvips, no Redis;
2. concurrent identical misses in this process share one flight;
3. L2 (Redis) hit -> fill L1, done; on a miss the same round trip takes a short render lock,
   so that one process across all instances renders while the others wait for its L2 entry
   (bounded wait, then they render themselves);
4. fetch the source (downloads of one source are shared and kept for a moment), transform on
   the bounded pool, store in L1 and L2, releasing the lock in the same round trip as the store.

A miss costs two Redis round trips: lookup-or-lock, store-and-unlock.

The event loop only awaits; every libvips call happens on the pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from imgsrv import metrics
from imgsrv.cache.entry import CacheEntry
from imgsrv.cache.flight import SingleFlight
from imgsrv.cache.l1 import L1Cache
from imgsrv.cache.l2 import L2Cache
from imgsrv.cache.recent import RecentSources
from imgsrv.egress import SaverMode
from imgsrv.errors import ImgsrvError
from imgsrv.pool import BACKGROUND, Admission, TransformPool
from imgsrv.sources import SourceBytes, SourceFetcher
from imgsrv.spec import TransformSpec
from imgsrv.transform import (
    ImageInfo,
    Rendered,
    TransformOptions,
    VariantSet,
    probe,
    transform,
)


@dataclass(frozen=True, slots=True)
class RenderResult:
    """An image ready to send: the entry, which tier answered, and timings in ms."""

    entry: CacheEntry
    cache: str = "miss"
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RenderTuning:
    """How long the cross-process render lock lives and how long others wait for it."""

    lock_ttl_ms: int = 30_000
    lock_wait: float = 10.0
    lock_poll: float = 0.02
    # Queue places of the transform pool that background (job) renders leave to requests.
    background_reserve: int = 8


@dataclass(frozen=True, slots=True)
class _Miss:
    """One render past L1: its key, what to render, and its place in the pool.

    A request holds ``admission`` from its arrival; background work (``reserve`` > 0) takes
    its place only once it must transform, and leaves ``reserve`` places to requests.
    """

    key: str
    spec: TransformSpec
    accepted: frozenset[str]
    reserve: int = 0
    admission: Admission | None = None


Produce = Callable[["_Miss", str | None], Awaitable[RenderResult]]
"""Renders and stores a miss, releasing the render lock its token holds (if any)."""


def strong_etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'


def cache_key(spec: TransformSpec, accepted: frozenset[str]) -> str:
    """The spec's canonical string plus, for ``f:auto``, what the client accepts."""
    if spec.format != "auto":
        return spec.canonical()
    return spec.canonical() + "|accept:" + ",".join(sorted(accepted))


def to_entry(image: Rendered) -> CacheEntry:
    return CacheEntry(
        data=image.data,
        content_type=image.content_type,
        format=image.format,
        width=image.width,
        height=image.height,
        pages=image.pages,
        etag=strong_etag(image.data),
    )


class Renderer:
    """Cache lookups, single-flight, source fetching and transforms on the pool."""

    def __init__(
        self,
        fetcher: SourceFetcher,
        pool: TransformPool,
        options: TransformOptions,
        l1: L1Cache | None = None,
        l2: L2Cache | None = None,
        recent: RecentSources[SourceBytes] | None = None,
        tuning: RenderTuning | None = None,
        saver: SaverMode | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.pool = pool
        self.options = options
        self.l1 = l1
        self.l2 = l2
        self.recent: RecentSources[SourceBytes] = recent or RecentSources(0, 0)
        self.tuning = tuning or RenderTuning()
        # Saver mode (imgsrv.egress) swaps the options of new renders; cache keys stay.
        self.saver = saver
        self._flight: SingleFlight[str, RenderResult] = SingleFlight()
        # Looked up once: a memory-cache hit is a few microseconds, the label lookup a third.
        self._l1_hits = metrics.CACHE_EVENTS.labels("l1", "hit")
        self._l1_misses = metrics.CACHE_EVENTS.labels("l1", "miss")

    def cached(
        self, spec: TransformSpec, accepted: frozenset[str] = frozenset()
    ) -> RenderResult | None:
        """The image for ``spec`` from this process's memory (L1), or None (a miss, counted).

        Synchronous, so that a memory hit costs no await: a request tries this first and
        calls :meth:`render` (with ``memory_checked``) only when it misses.
        """
        if self.l1 is None:
            return None
        started = time.perf_counter()
        entry = self.l1.get(cache_key(spec, accepted if spec.format == "auto" else frozenset()))
        if entry is None:
            metrics.BATCHED.add(self._l1_misses)
            return None
        metrics.BATCHED.add(self._l1_hits)
        return RenderResult(entry, "l1", {"cache": _ms_since(started)})

    async def render(
        self,
        spec: TransformSpec,
        accepted: frozenset[str] = frozenset(),
        *,
        background: bool = False,
        client: Callable[[], str] | None = None,
        memory_checked: bool = False,
    ) -> RenderResult:
        """The image for ``spec``; ``accepted`` (from Accept) only matters for ``f:auto``.

        ``client()`` (see :mod:`imgsrv.clients`) names whose turn a transform waits for in
        the pool; it is only called when the request needs a place there. ``background``
        renders (jobs pre-rendering variants for later) bypass L1, so they do not push hot
        images out of memory, leave part of the pool's queue to requests and take their
        turns as one client of their own. ``memory_checked``: :meth:`cached` already missed.
        """
        if spec.format != "auto":
            accepted = frozenset()
        key = cache_key(spec, accepted)
        if not background and not memory_checked:
            hit = self.cached(spec, accepted)
            if hit is not None:
                return hit
        flight_key = key + "|background" if background else key
        if background or flight_key in self._flight:
            # Background work takes its place only once it must transform; a request that
            # joins a render under way needs no place of its own.
            reserve = self.tuning.background_reserve if background else 0
            result, shared = await self._flight.run(
                flight_key, lambda: self._miss(_Miss(key, spec, accepted, reserve))
            )
        else:
            # A request that may need the pool takes its place now, before any await: past
            # the limit it is refused at once (a refusal that first waited for Redis would
            # queue behind the work the server cannot keep up with), and places cannot be
            # promised twice to requests that are still asking Redis.
            admission = self.pool.admit(client() if client is not None else "")
            leads = False

            def lead() -> Awaitable[RenderResult]:
                nonlocal leads
                leads = True  # called at once by the flight when this request leads it
                return self._miss_holding(_Miss(key, spec, accepted, 0, admission))

            try:
                result, shared = await self._flight.run(flight_key, lead)
            finally:
                if not leads:  # another request's render answered this one
                    admission.release()
        if shared:
            metrics.BATCHED.count(metrics.COALESCED, "render")
        return result

    async def _miss_holding(self, miss: _Miss) -> RenderResult:
        """:meth:`_miss` in the place the request holds; freed here unless work runs in it."""
        assert miss.admission is not None
        try:
            return await self._miss(miss)
        finally:
            if not miss.admission.running:  # answered without a transform: L2 hit, error
                miss.admission.release()

    async def _miss(self, miss: _Miss, produce: Produce | None = None) -> RenderResult:
        """Past L1: the L2 entry, another process's render, or ``produce``'s (default: fetch,
        transform and store), holding the render lock meanwhile."""
        produce = produce or self._render_and_store
        key, spec = miss.key, miss.spec
        use_l1 = miss.reserve == 0
        if self.l2 is None:
            return await produce(miss, None)
        started = time.perf_counter()
        if miss.admission is None:
            # Background work needs no place for an L2 hit: look first, then shed before
            # taking the lock that others would wait on.
            entry = await self._l2_get(key, spec, use_l1)
            if entry is not None:
                return RenderResult(entry, "l2", {"cache": _ms_since(started)})
            self.pool.check_capacity(BACKGROUND, miss.reserve)
        # One round trip: the entry, else the render lock.
        found = await self.l2.lookup(key, spec.source, spec.ttl, self.tuning.lock_ttl_ms)
        if miss.admission is not None or found.entry is not None:
            self._count_l2(found.entry, key, spec.source, use_l1)
        if found.entry is not None:
            return RenderResult(found.entry, "l2", {"cache": _ms_since(started)})
        if found.token is None:
            entry = await self._wait_for_other_render(key, spec, use_l1)
            if entry is not None:
                metrics.BATCHED.count(metrics.COALESCED, "lock")
                return RenderResult(entry, "l2", {"cache": _ms_since(started)})
            return await produce(miss, None)
        try:
            # The store releases the lock in the same round trip.
            return await produce(miss, found.token)
        except BaseException:
            await self.l2.release_lock(key, spec.source, found.token)
            raise

    async def _l2_get(self, key: str, spec: TransformSpec, use_l1: bool) -> CacheEntry | None:
        assert self.l2 is not None
        entry = await self.l2.get(key, spec.source, spec.ttl)
        self._count_l2(entry, key, spec.source, use_l1)
        return entry

    def _count_l2(self, entry: CacheEntry | None, key: str, source: str, use_l1: bool) -> None:
        """Count an L2 lookup's outcome; a hit also fills L1 (unless background work)."""
        metrics.BATCHED.count(metrics.CACHE_EVENTS, "l2", "miss" if entry is None else "hit")
        if entry is not None and self.l1 is not None and use_l1:
            self._l1_put(key, entry, source)

    async def _wait_for_other_render(
        self, key: str, spec: TransformSpec, use_l1: bool
    ) -> CacheEntry | None:
        """Poll L2 while another process holds the render lock (bounded)."""
        assert self.l2 is not None
        deadline = time.monotonic() + self.tuning.lock_wait
        while time.monotonic() < deadline:
            await asyncio.sleep(self.tuning.lock_poll)
            entry = await self._l2_get(key, spec, use_l1)
            if entry is not None:
                return entry
            if not self.l2.available:
                return None
        return None

    async def _render_and_store(self, miss: _Miss, lock_token: str | None = None) -> RenderResult:
        """Fetch, transform and store in L1 and L2 (releasing ``lock_token``'s render lock)."""
        spec, accepted = miss.spec, miss.accepted
        admission, source, fetch_ms = await self._admit_and_fetch(
            spec.source, miss.reserve, miss.admission
        )
        options = self.options if self.saver is None else self.saver.options()
        return await self.run_and_store(
            miss, admission, lock_token, fetch_ms, transform, source.data, spec, accepted, options
        )

    async def run_and_store(
        self,
        miss: _Miss,
        admission: Admission,
        lock_token: str | None,
        fetch_ms: float,
        fn: Callable[..., Rendered],
        *args: object,
    ) -> RenderResult:
        """Render with ``fn(*args)`` in ``admission``'s pool place and store the image under
        ``miss``'s key: in L1 for requests (not background work), in L2 releasing
        ``lock_token``'s render lock."""
        started = time.perf_counter()
        try:
            image = await self.pool.run_admitted(admission, fn, *args)
        except ImgsrvError as exc:
            metrics.TRANSFORM_ERRORS.labels(exc.slug).inc()
            raise
        # The wait for a thread is the pool's (its own metric and timing), not the transform's.
        queued_s = admission.queued_seconds
        transform_s = time.perf_counter() - started - queued_s
        metrics.BATCHED.time(metrics.TRANSFORM_SECONDS, transform_s, image.format)
        entry = to_entry(image)
        spec = miss.spec
        if self.l1 is not None and miss.reserve == 0:
            self._l1_put(miss.key, entry, spec.source)
        if self.l2 is not None and await self.l2.put(
            miss.key, entry, spec.ttl, spec.source, lock_token
        ):
            metrics.BATCHED.count(metrics.CACHE_EVENTS, "l2", "store")
        timings = {"fetch": fetch_ms, "queue": queued_s * 1000, "transform": transform_s * 1000}
        return RenderResult(entry, "miss", timings)

    def _l1_put(self, key: str, entry: CacheEntry, source: str) -> None:
        assert self.l1 is not None
        evictions = self.l1.evictions
        if self.l1.put(key, entry, source):
            metrics.BATCHED.count(metrics.CACHE_EVENTS, "l1", "store")
        if self.l1.evictions > evictions:
            metrics.BATCHED.count(
                metrics.CACHE_EVENTS, "l1", "eviction", amount=self.l1.evictions - evictions
            )

    def variant_set(self, source: str, specs: Sequence[TransformSpec]) -> VariantSetRender:
        """Background renders of variants of ``source`` that share one download and one decode
        (see :class:`VariantSetRender`)."""
        return VariantSetRender(self, source, specs)

    async def info(self, spec: TransformSpec) -> ImageInfo:
        """Header metadata of the source of ``spec`` (its options are ignored)."""
        admission, source, _ = await self._admit_and_fetch(spec.source, 0)
        return await self.pool.run_admitted(admission, probe, source.data, self.options)

    async def purge(self, source: str) -> int | None:
        """Forget every cached variant of ``source`` here, in L2 and (via pub/sub) elsewhere."""
        self.drop_local(source)
        return None if self.l2 is None else await self.l2.purge_source(source)

    def drop_local(self, source: str) -> None:
        """Drop ``source`` from this process's memory (L1 and recent downloads)."""
        if self.l1 is not None:
            self.l1.drop_source(source)
        self.recent.drop(source)

    def sample_gauges(self) -> None:
        """Set this process's pool and L1 gauges to what they are now (the timer and every
        scrape call it: setting them on every request would cost a file write each)."""
        metrics.POOL_ADMITTED.set(self.pool.admitted)
        if self.l1 is not None:
            metrics.L1_BYTES.set(self.l1.bytes_in_use)

    def check_capacity(self, client: str = "") -> None:
        """Raise Overloaded now if a request of ``client`` that is not in memory would be
        refused."""
        self.pool.check_capacity(client)

    def expire_memory(self) -> int:
        """Drop recent downloads and L1 entries past their time; returns how many."""
        dropped = self.recent.expire()
        if self.l1 is not None:
            expired = self.l1.expire()
            if expired:
                metrics.BATCHED.count(metrics.CACHE_EVENTS, "l1", "expiry", amount=expired)
            dropped += expired
        return dropped

    async def _admit_and_fetch(
        self, source: str, reserve: int, admission: Admission | None = None
    ) -> tuple[Admission, SourceBytes, float]:
        """A pool place (``admission``, else a new one or Overloaded at once), then the source;
        the place is kept for it."""
        if admission is None:
            admission = self.pool.admit(BACKGROUND if reserve else "", reserve)
        try:
            fetched, fetch_ms = await self._fetch(source)
        except BaseException:
            admission.release()
            raise
        return admission, fetched, fetch_ms

    async def _fetch(self, source: str) -> tuple[SourceBytes, float]:
        started = time.perf_counter()
        try:
            fetched, how = await self.recent.get(source, self._download)
        except ImgsrvError as exc:
            metrics.SOURCE_ERRORS.labels(exc.slug).inc()
            raise
        if how == "hit":
            metrics.BATCHED.count(metrics.CACHE_EVENTS, "source", "hit")
        elif how == "shared":
            metrics.BATCHED.count(metrics.COALESCED, "source")
        return fetched, _ms_since(started)

    async def _download(self, source: str) -> SourceBytes:
        started = time.perf_counter()
        fetched = await self.fetcher.fetch(source)
        metrics.BATCHED.time(metrics.FETCH_SECONDS, time.perf_counter() - started)
        metrics.BATCHED.count(metrics.SOURCE_BYTES, amount=len(fetched.data))
        metrics.BATCHED.count(metrics.CACHE_EVENTS, "source", "miss")
        return fetched


class VariantSetRender:
    """Variants of one source rendered for background work (jobs) from one decode.

    Each :meth:`render` goes the way of a background :meth:`Renderer.render` (L2, the
    cross-process lock, L2 store; L1 left alone), but a miss transforms with a
    :class:`~imgsrv.transform.VariantSet` shared by every variant of the set: the source is
    fetched once, decoded once at the largest size the set needs, and each variant is derived
    from that image in memory. Each variant takes its own pool place, so work for requests is
    never held behind a whole set, and a caller may stop between variants.
    """

    def __init__(self, renderer: Renderer, source: str, specs: Sequence[TransformSpec]) -> None:
        self.renderer = renderer
        self.source = source
        self.specs = tuple(specs)
        self._variants: VariantSet | None = None
        self._fetching = asyncio.Lock()
        self._decodes_counted = 0

    async def render(self, spec: TransformSpec) -> RenderResult:
        """The entry for ``spec`` (a spec of this source), from L2 or rendered from the set."""
        renderer = self.renderer
        key = cache_key(spec, frozenset())
        miss = _Miss(key, spec, frozenset(), renderer.tuning.background_reserve)
        result, shared = await renderer._flight.run(
            key + "|background", lambda: renderer._miss(miss, self._render_and_store)
        )
        if shared:
            metrics.BATCHED.count(metrics.COALESCED, "render")
        return result

    async def _variant_set(self) -> tuple[VariantSet, float]:
        """The shared VariantSet, its source fetched on first use (ms spent fetching)."""
        async with self._fetching:
            if self._variants is not None:
                return self._variants, 0.0
            fetched, fetch_ms = await self.renderer._fetch(self.source)
            self._variants = VariantSet(
                fetched.data, self.specs, frozenset(), self.renderer.options
            )
            return self._variants, fetch_ms

    async def _render_and_store(self, miss: _Miss, lock_token: str | None) -> RenderResult:
        renderer = self.renderer
        variants, fetch_ms = await self._variant_set()
        admission = renderer.pool.admit(BACKGROUND, renderer.tuning.background_reserve)
        result = await renderer.run_and_store(
            miss, admission, lock_token, fetch_ms, variants.render, miss.spec
        )
        if variants.decodes > self._decodes_counted:
            metrics.SHARED_DECODES.inc(variants.decodes - self._decodes_counted)
            self._decodes_counted = variants.decodes
        return result


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
