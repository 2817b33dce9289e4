"""Allocator tuning: arena cap, trimming after bursts."""

from __future__ import annotations

import asyncio
import time

import pytest

from imgsrv import runtime
from imgsrv.memory import limit_malloc_arenas, release_free_memory
from imgsrv.pool import TransformPool


def test_glibc_calls_apply() -> None:
    assert limit_malloc_arenas(2) is True
    assert limit_malloc_arenas(0) is False  # 0 keeps glibc's default
    big = [bytearray(1 << 20) for _ in range(64)]
    del big
    assert isinstance(release_free_memory(), bool)


async def test_trims_once_after_each_burst_when_the_pool_is_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(runtime, "release_free_memory", lambda: trims.append(time.monotonic()))
    pool = TransformPool(threads=1, max_queue=4)
    task = asyncio.create_task(runtime.trim_when_idle(pool, 0.05))
    await asyncio.sleep(0.2)
    assert trims == []  # nothing ran: nothing to give back
    await pool.run(time.sleep, 0.01)
    await asyncio.sleep(0.2)
    assert len(trims) == 1  # one trim after the burst, not one per tick
    await pool.run(time.sleep, 0.01)
    await asyncio.sleep(0.2)
    assert len(trims) == 2
    task.cancel()
    pool.shutdown()


async def test_trims_again_once_expired_downloads_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(runtime, "release_free_memory", lambda: trims.append(time.monotonic()))
    pool = TransformPool(threads=1, max_queue=4)
    expired = [0, 0, 3]  # the third tick drops three downloads, then nothing more

    def expire() -> int:
        return expired.pop(0) if expired else 0

    task = asyncio.create_task(runtime.trim_when_idle(pool, 0.05, expire))
    await asyncio.sleep(0.4)
    assert len(trims) == 1 and expired == []
    task.cancel()
    pool.shutdown()
