"""Held refusals: each held for its delay, those due in the same tick released together."""

from __future__ import annotations

import asyncio

from imgsrv.held_refusals import HeldRefusals

TICK = 0.2


async def _start_of_a_tick() -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(TICK - loop.time() % TICK + 0.005)


async def _held(refusals: HeldRefusals, delay: float) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await refusals.hold(delay)
    return started, loop.time()


async def test_refusals_due_in_one_tick_are_released_in_one_pass_each_after_its_delay() -> None:
    refusals = HeldRefusals(limit=100, tick=TICK)
    await _start_of_a_tick()
    tasks = []
    for _ in range(10):  # arriving 5 ms apart, all within one tick
        tasks.append(asyncio.create_task(_held(refusals, 0.3)))
        await asyncio.sleep(0.005)
    assert refusals.held == 10
    others_done_with_the_first: list[bool] = []
    tasks[0].add_done_callback(
        lambda _: others_done_with_the_first.append(all(t.done() for t in tasks))
    )
    times = await asyncio.gather(*tasks)
    assert others_done_with_the_first == [True]  # one release, not ten timers
    for started, released in times:
        assert 0.3 <= released - started < 0.3 + TICK + 0.1
    assert refusals.held == 0


async def test_a_cancelled_refusal_leaves_the_others_held() -> None:
    refusals = HeldRefusals(limit=100, tick=TICK)
    await _start_of_a_tick()
    gone = asyncio.create_task(_held(refusals, 0.3))
    kept = asyncio.create_task(_held(refusals, 0.3))
    await asyncio.sleep(0.05)
    gone.cancel()
    await asyncio.sleep(0.05)
    assert gone.cancelled() and not kept.done()
    assert refusals.held == 1
    started, released = await kept
    assert released - started >= 0.3
    assert refusals.held == 0


async def test_past_the_limit_or_without_a_delay_a_refusal_is_sent_at_once() -> None:
    refusals = HeldRefusals(limit=2, tick=TICK)
    held = [asyncio.create_task(refusals.hold(1.0)) for _ in range(2)]
    await asyncio.sleep(0)
    assert refusals.held == 2
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(refusals.hold(1.0), timeout=0.05)  # the limit is reached
    await asyncio.wait_for(HeldRefusals(limit=2).hold(0.0), timeout=0.05)
    assert loop.time() - started < 0.05
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert refusals.held == 0
