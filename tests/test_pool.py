"""TransformPool admission: bounded concurrency, turns by client, instant 503 past the budget."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest

from imgsrv.errors import Overloaded
from imgsrv.pool import BACKGROUND, TransformPool


async def test_runs_on_threads_off_the_event_loop() -> None:
    pool = TransformPool(threads=2, max_queue=4)
    loop_thread = threading.get_ident()
    ident = await pool.run(threading.get_ident)
    assert ident != loop_thread
    pool.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_transform_threads_run_nicer_than_the_event_loop() -> None:
    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    loop_nice = nice_of_this_thread()
    pool = TransformPool(threads=2, max_queue=4, nice=5)
    assert await pool.run(nice_of_this_thread) == min(19, loop_nice + 5)
    assert nice_of_this_thread() == loop_nice  # the loop's own thread is untouched
    plain = TransformPool(threads=1, max_queue=4)
    assert await plain.run(nice_of_this_thread) == loop_nice
    pool.shutdown()
    plain.shutdown()


async def test_refuses_instantly_past_threads_plus_queue_and_recovers() -> None:
    pool = TransformPool(threads=1, max_queue=2, retry_after=3)
    gate = threading.Event()
    tasks = [asyncio.create_task(pool.run(gate.wait, 5)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert pool.admitted == 3 and pool.waiting == 2
    started = time.perf_counter()
    with pytest.raises(Overloaded) as info:
        await pool.run(time.sleep, 0)
    assert time.perf_counter() - started < 0.05
    # At least the configured value, spread at random (see test_retry_after_is_spread_out).
    assert 3 <= info.value.retry_after <= 5 and info.value.status == 503
    with pytest.raises(Overloaded):
        pool.check_capacity()
    gate.set()
    assert await asyncio.gather(*tasks) == [True, True, True]
    assert pool.admitted == 0
    assert await pool.run(sum, [1, 2]) == 3
    pool.shutdown()


async def test_work_runs_in_arrival_order() -> None:
    pool = TransformPool(threads=1, max_queue=50)
    order: list[int] = []
    gate = threading.Event()
    first = asyncio.create_task(pool.run(gate.wait, 5))
    await asyncio.sleep(0.01)
    tasks = [asyncio.create_task(pool.run(order.append, i)) for i in range(20)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, *tasks)
    assert order == list(range(20))
    pool.shutdown()


async def test_cancelled_caller_keeps_the_slot_until_the_thread_is_done() -> None:
    pool = TransformPool(threads=1, max_queue=0)
    gate = threading.Event()
    task = asyncio.create_task(pool.run(gate.wait, 5))
    await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.sleep(0.02)
    # libvips would still be busy on that thread: the place is not free yet
    assert pool.admitted == 1
    with pytest.raises(Overloaded):
        await pool.run(time.sleep, 0)
    gate.set()
    await asyncio.sleep(0.05)
    assert pool.admitted == 0
    pool.shutdown()


async def test_reserve_keeps_places_for_other_callers() -> None:
    pool = TransformPool(threads=1, max_queue=2)
    gate = threading.Event()
    blocker = asyncio.create_task(pool.run(gate.wait, 5))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await pool.run(time.sleep, 0, reserve=2)
    queued = asyncio.create_task(pool.run(time.sleep, 0))
    gate.set()
    await asyncio.gather(blocker, queued)
    pool.shutdown()


async def test_sheds_when_the_expected_wait_passes_max_wait() -> None:
    pool = TransformPool(threads=1, max_queue=100, retry_after=1, max_wait=0.25, warmup=1)
    await pool.run(time.sleep, 0.1)  # teaches the pool that a transform takes ~0.1 s
    assert 0.09 < pool.mean_seconds < 0.2
    gate = threading.Event()
    tasks = [asyncio.create_task(pool.run(gate.wait, 5)) for _ in range(3)]
    await asyncio.sleep(0.02)
    # 1 running + 2 waiting: a 4th would wait ~0.3 s > 0.25 s, far below max_queue
    assert pool.expected_wait() > 0.25
    started = time.perf_counter()
    with pytest.raises(Overloaded) as info:
        await pool.run(time.sleep, 0)
    assert time.perf_counter() - started < 0.05
    assert info.value.retry_after >= 1
    gate.set()
    await asyncio.gather(*tasks)
    pool.shutdown()


async def test_slow_first_transforms_do_not_shed_an_ordinary_queue() -> None:
    pool = TransformPool(threads=1, max_queue=100, max_wait=0.05, warmup=3)
    await pool.run(time.sleep, 0.1)  # a cold start: the mean says 0.1 s
    gate = threading.Event()
    tasks = [asyncio.create_task(pool.run(gate.wait, 5)) for _ in range(3)]
    await asyncio.sleep(0.02)
    assert pool.expected_wait() > 0.05
    pool.check_capacity()  # one sample: not trusted yet, only max_queue applies
    gate.set()
    await asyncio.gather(*tasks)  # three more samples: trusted from now on
    later = threading.Event()
    running = asyncio.create_task(pool.run(later.wait, 5))
    await asyncio.sleep(0.02)
    assert pool.expected_wait() > 0.05  # the next one would wait for the running one
    with pytest.raises(Overloaded):
        pool.check_capacity()
    later.set()
    await running
    pool.shutdown()


async def test_an_admission_holds_its_place_until_its_work_ends() -> None:
    pool = TransformPool(threads=1, max_queue=1)
    first = pool.admit()  # e.g. still downloading its source
    second = pool.admit()
    assert pool.admitted == 2
    with pytest.raises(Overloaded):
        pool.admit()  # refused now, not after a download
    second.release()
    second.release()  # idempotent
    assert pool.admitted == 1
    assert await pool.run_admitted(first, sum, [2, 3]) == 5
    assert pool.admitted == 0 and pool.completed == 2
    pool.shutdown()


async def _hold_the_thread(pool: TransformPool) -> tuple[threading.Event, asyncio.Task[bool]]:
    gate = threading.Event()
    task = asyncio.create_task(pool.run(gate.wait, 5, client="holder"))
    await asyncio.sleep(0.02)
    return gate, task


async def _queue(
    pool: TransformPool, order: list[str], client: str, count: int
) -> list[asyncio.Task[None]]:
    """``count`` transforms of ``client``, queued now, that note in ``order`` when they run."""
    tasks = [
        asyncio.create_task(pool.run(order.append, f"{client}{i}", client=client))
        for i in range(count)
    ]
    await asyncio.sleep(0.01)
    return tasks


async def test_waiting_transforms_of_two_clients_start_alternately() -> None:
    pool = TransformPool(threads=1, max_queue=50)
    gate, holder = await _hold_the_thread(pool)
    order: list[str] = []
    flood = await _queue(pool, order, "a", 6)
    late = await _queue(pool, order, "b", 3)
    assert pool.waiting_by_client() == {"a": 6, "b": 3}
    gate.set()
    await asyncio.gather(holder, *flood, *late)
    # b's first request waited one turn of a, not a's whole backlog
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4", "a5"]
    assert pool.waiting_by_client() == {}
    pool.shutdown()


async def test_a_client_with_nothing_waiting_is_next_not_behind_a_backlog() -> None:
    pool = TransformPool(threads=1, max_queue=50)
    steps = [threading.Event() for _ in range(4)]
    order: list[str] = []

    def step(i: int) -> None:
        order.append(f"a{i}")
        steps[i].wait(5)

    flood = [asyncio.create_task(pool.run(step, i, client="a")) for i in range(4)]
    await asyncio.sleep(0.02)
    steps[0].set()  # a1 starts; a2 and a3 wait
    await asyncio.sleep(0.02)
    late = asyncio.create_task(pool.run(order.append, "b0", client="b"))
    await asyncio.sleep(0.01)
    for event in steps[1:]:
        event.set()
    await asyncio.gather(*flood, late)
    # b waited for the running transform only, not for one more of a's turns
    assert order == ["a0", "a1", "b0", "a2", "a3"]
    pool.shutdown()


async def test_a_client_whose_oldest_job_went_away_keeps_its_turns() -> None:
    pool = TransformPool(threads=1, max_queue=50)
    gate, holder = await _hold_the_thread(pool)
    order: list[str] = []
    a = await _queue(pool, order, "a", 3)
    b = await _queue(pool, order, "b", 2)
    a[0].cancel()
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(holder, *a[1:], *b)
    assert order == ["b0", "a1", "b1", "a2"]
    assert pool.waiting_by_client() == {} and pool.admitted == 0
    pool.shutdown()


async def test_background_work_takes_turns_as_one_client() -> None:
    pool = TransformPool(threads=1, max_queue=50)
    gate, holder = await _hold_the_thread(pool)
    order: list[str] = []
    jobs = [asyncio.create_task(pool.run(order.append, f"job{i}", client=BACKGROUND))
            for i in range(3)]  # fmt: skip
    await asyncio.sleep(0.01)
    requests = [asyncio.create_task(pool.run(order.append, f"{c}{i}", client=c))
                for c in ("x", "y") for i in range(2)]  # fmt: skip
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(holder, *jobs, *requests)
    assert order == ["job0", "x0", "y0", "job1", "x1", "y1", "job2"]
    pool.shutdown()


async def test_expected_wait_counts_others_only_up_to_this_clients_turns() -> None:
    pool = TransformPool(threads=1, max_queue=100, max_wait=10, warmup=1)
    await pool.run(time.sleep, 0.1)
    mean = pool.mean_seconds
    places = [pool.admit("a") for _ in range(5)] + [pool.admit("b")]
    # a new one of c starts after one of a, b's one, and itself: 3 places, 1 thread
    assert pool.expected_wait("c") == pytest.approx(2 * mean)
    # a new one of b: after two of a, two of b (its earlier one and itself)
    assert pool.expected_wait("b") == pytest.approx(3 * mean)
    # a new one of a: after all five of a, b's one, and itself
    assert pool.expected_wait("a") == pytest.approx(6 * mean)
    for place in places:
        place.release()
    assert pool.expected_wait("a") == 0
    pool.shutdown()


async def test_a_flooding_client_is_refused_while_others_are_admitted() -> None:
    pool = TransformPool(threads=1, max_queue=100, retry_after=1, max_wait=0.35, warmup=1)
    await pool.run(time.sleep, 0.1)  # a transform takes ~0.1 s
    gate, holder = await _hold_the_thread(pool)
    flood = [asyncio.create_task(pool.run(gate.wait, 5, client="a")) for _ in range(3)]
    await asyncio.sleep(0.02)
    assert pool.waiting_by_client() == {"a": 3}
    with pytest.raises(Overloaded):
        pool.check_capacity("a")  # after the running one and its own 3: ~0.4 s
    pool.check_capacity("b")  # after the running one and one turn of a: ~0.2 s
    other = asyncio.create_task(pool.run(sum, [1, 1], client="b"))
    gate.set()
    await asyncio.gather(holder, *flood)
    assert await other == 2
    pool.shutdown()


async def test_retry_after_is_spread_out() -> None:
    pool = TransformPool(threads=1, max_queue=0, retry_after=2, max_wait=10)
    gate, holder = await _hold_the_thread(pool)
    seen = set()
    for _ in range(200):
        with pytest.raises(Overloaded) as info:
            pool.check_capacity("holder")  # the one place is its own
        seen.add(info.value.retry_after)
    assert min(seen) == 2 and 3 in seen and max(seen) <= 3
    gate.set()
    await holder
    pool.shutdown()


async def test_a_queued_transform_whose_caller_went_away_never_runs() -> None:
    pool = TransformPool(threads=1, max_queue=5)
    gate, holder = await _hold_the_thread(pool)
    ran: list[int] = []
    queued = asyncio.create_task(pool.run(ran.append, 1, client="a"))
    await asyncio.sleep(0.01)
    assert pool.admitted == 2
    queued.cancel()
    await asyncio.sleep(0.01)
    assert pool.admitted == 1 and pool.waiting_by_client() == {}
    gate.set()
    await holder
    await asyncio.sleep(0.02)
    assert ran == [] and pool.admitted == 0
    pool.shutdown()


async def test_a_client_that_filled_the_queue_does_not_lock_out_the_others() -> None:
    pool = TransformPool(threads=1, max_queue=3)  # 4 places
    flood = [pool.admit("a") for _ in range(4)]
    with pytest.raises(Overloaded):
        pool.admit("a")  # full, and a holds all of it
    b = pool.admit("b")  # below its share (4 places / 2 clients)
    c = pool.admit("c")  # below its share (4 / 3)
    with pytest.raises(Overloaded):
        pool.admit("a")
    more_b = pool.admit("b")  # 1 of 4 / 3
    with pytest.raises(Overloaded):
        pool.admit("b")  # 2 of 4 / 3: its share is used
    assert pool.admitted == 7
    others = [pool.admit(f"x{i}") for i in range(1)]  # 8 = twice the places: no more at all
    with pytest.raises(Overloaded):
        pool.admit("y")
    for place in [*flood, b, c, more_b, *others]:
        place.release()
    assert pool.admitted == 0
    pool.admit("a").release()
    pool.shutdown()
