"""The Redis queue's scripts against a real redis-server: order, leases, retries, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from imgsrv.jobs.auth import ApiKeys
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import JobNotFound
from imgsrv.jobs.model import JobRequest, Priority
from imgsrv.jobs.queue import Claim, JobQueue
from tests.servers import RedisProcess

CONFIG = JobConfig(keys=ApiKeys([]), lease_ms=60_000, backoff=0.0, max_attempts=3)


def request(priority: Priority = "normal", **fields: object) -> JobRequest:
    base = JobRequest(
        source="local://sample.jpg",
        variants=({"w": 16},),
        options=("w:16/ttl:86400",),
        priority=priority,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def make_queue(redis: Redis, **config: object) -> JobQueue:
    return JobQueue(redis, replace(CONFIG, **config))  # type: ignore[arg-type]


async def claim(queue: JobQueue, worker: str = "w1") -> Claim | None:
    found, _ = await queue.claim(worker)
    return found


async def claim_all(queue: JobQueue) -> list[Claim]:
    claims = []
    while (found := await claim(queue)) is not None:
        claims.append(found)
    return claims


async def test_round_robin_across_tenants_within_a_priority(redis: Redis) -> None:
    queue = make_queue(redis)
    for tenant, count in (("a", 5), ("b", 2), ("c", 1)):
        for _ in range(count):
            await queue.submit(tenant, request())
    order = [c.job.tenant for c in await claim_all(queue)]
    assert order == ["a", "b", "c", "a", "b", "a", "a", "a"]


async def test_a_tenant_with_a_backlog_delays_a_newcomer_by_at_most_one_job(redis: Redis) -> None:
    queue = make_queue(redis)
    for _ in range(50):
        await queue.submit("a", request())
    started = [await claim(queue) for _ in range(3)]  # three slots busy with a's jobs
    assert all(c is not None and c.job.tenant == "a" for c in started)
    await queue.submit("b", request())
    order = [c.job.tenant for c in (await claim_all(queue))[:3]]
    assert order.index("b") <= 1


async def test_weighted_cycles_of_8_4_1_while_every_priority_has_a_backlog(redis: Redis) -> None:
    queue = make_queue(redis)
    for priority in ("low", "normal", "high"):
        for _ in range(20):
            await queue.submit("a", request(priority))
    order = "".join(c.job.priority[0] for c in (await claim_all(queue))[:26])
    assert order == ("h" * 8 + "n" * 4 + "l") * 2


async def test_high_submitted_last_starts_before_an_earlier_normal_and_low_backlog(
    redis: Redis,
) -> None:
    queue = make_queue(redis)
    for priority in ("low", "normal"):
        for _ in range(5):
            await queue.submit("a", request(priority))
    for _ in range(2):
        await queue.submit("b", request("high"))
    order = "".join(c.job.priority[0] for c in await claim_all(queue))
    # Then normal takes its share of a cycle, low its, and so on: neither waits for the other.
    assert order == "hh" + "nnnn" + "l" + "n" + "llll"


async def test_low_keeps_its_share_under_an_endless_stream_of_high(redis: Redis) -> None:
    queue = make_queue(redis)
    for _ in range(2):
        await queue.submit("a", request("low"))
    order = ""
    for _ in range(30):
        await queue.submit("a", request("high"))  # the stream never lets high run dry
        found = await claim(queue)
        assert found is not None
        order += found.job.priority[0]
    assert order.count("l") == 2
    assert order.index("l") == 8 and order.index("l", 9) == 17


async def test_delayed_job_is_not_claimed_before_it_is_due(redis: Redis) -> None:
    queue = make_queue(redis)
    job, _ = await queue.submit("a", request(delay_ms=400))
    assert job.status == "queued" and job.run_at - job.created_at == 400
    assert await claim(queue) is None
    stats = await queue.maintain()
    assert stats.delayed == 1 and sum(stats.ready.values()) == 0
    await asyncio.sleep(0.45)
    found = await claim(queue)
    assert found is not None and found.job.id == job.id
    assert found.job.started_at is not None and found.job.started_at >= job.run_at


async def test_expired_lease_is_reaped_and_its_old_holder_is_told(redis: Redis) -> None:
    queue = make_queue(redis, lease_ms=200)
    job, _ = await queue.submit("a", request())
    first = await claim(queue, "w1")
    assert first is not None and first.job.attempts == 1
    assert await claim(queue, "w2") is None  # leased
    await asyncio.sleep(0.25)
    second, reaped = await queue.claim("w2")
    assert reaped == 1
    assert second is not None and second.job.id == job.id
    assert second.job.attempts == 2 and second.job.worker == "w2"
    assert await queue.heartbeat(first) == (False, False)
    assert await queue.complete(first, "succeeded") is False
    assert await queue.complete(second, "succeeded") is True
    done = await queue.get(job.id)
    assert done is not None and done.status == "succeeded" and done.attempts == 2


async def test_heartbeats_keep_a_lease_alive(redis: Redis) -> None:
    queue = make_queue(redis, lease_ms=200)
    await queue.submit("a", request())
    held = await claim(queue, "w1")
    assert held is not None
    for _ in range(6):
        await asyncio.sleep(0.1)
        assert await queue.heartbeat(held) == (True, False)
        assert await claim(queue, "w2") is None


async def test_a_job_whose_last_attempt_lost_its_worker_fails(redis: Redis) -> None:
    queue = make_queue(redis, lease_ms=100, max_attempts=1)
    job, _ = await queue.submit("a", request())
    assert await claim(queue) is not None
    await asyncio.sleep(0.15)
    stats = await queue.maintain()
    assert stats.reaped == 1 and stats.running == 0
    failed = await queue.get(job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and failed.error["type"].endswith("worker-lost")


async def test_retry_waits_for_the_backoff_and_fails_when_attempts_run_out(
    redis: Redis,
) -> None:
    queue = make_queue(redis, max_attempts=2)
    job, _ = await queue.submit("a", request())
    error = {"type": "urn:imgsrv:problem:source-failed", "status": 502}
    first = await claim(queue)
    assert first is not None
    assert await queue.retry(first, 0.3, error) == "queued"
    assert await claim(queue) is None  # backing off
    await asyncio.sleep(0.35)
    second = await claim(queue)
    assert second is not None and second.job.attempts == 2 and second.job.error == error
    assert await queue.retry(second, 0.0, error) == "failed"
    failed = await queue.get(job.id)
    assert failed is not None and failed.status == "failed" and failed.finished_at is not None


async def test_cancel_of_a_queued_job_takes_it_out_of_the_queue(redis: Redis) -> None:
    queue = make_queue(redis)
    keep, _ = await queue.submit("a", request())
    drop, _ = await queue.submit("a", request())
    later, _ = await queue.submit("a", request(delay_ms=60_000))
    assert (await queue.maintain()).ready["normal"] == 2
    for job in (drop, later):
        cancelled, now = await queue.cancel(job.id, "a")
        assert now and cancelled is not None and cancelled.status == "cancelled"
    with pytest.raises(JobNotFound):
        await queue.cancel(keep.id, "b")  # another tenant's job
    stats = await queue.maintain()
    assert stats.ready["normal"] == 1 and stats.delayed == 0
    assert [c.job.id for c in await claim_all(queue)] == [keep.id]


async def test_cancel_of_a_running_job_is_a_flag_its_heartbeat_reports(redis: Redis) -> None:
    queue = make_queue(redis)
    job, _ = await queue.submit("a", request())
    held = await claim(queue)
    assert held is not None
    flagged, now = await queue.cancel(job.id, "a")
    assert not now and flagged is not None
    assert flagged.status == "running" and flagged.cancel_requested
    assert await queue.heartbeat(held) == (True, True)
    assert await queue.complete(held, "cancelled")
    assert (await queue.cancel(job.id, "a"))[0].status == "cancelled"  # type: ignore[union-attr]


async def test_release_hands_a_job_back_without_spending_an_attempt(redis: Redis) -> None:
    queue = make_queue(redis)
    job, _ = await queue.submit("a", request())
    await queue.submit("a", request())
    held = await claim(queue)
    assert held is not None and held.job.id == job.id
    held.job.results = [{"url": "/_/w:16/plain/local%3A%2F%2Fsample.jpg"}]
    assert await queue.release(held)
    again = await claim(queue)  # at the head of its tenant's list, before the second job
    assert again is not None and again.job.id == job.id
    assert again.job.attempts == 1 and again.job.results == held.job.results


async def test_idempotency_key_gives_the_same_job_per_tenant(redis: Redis) -> None:
    queue = make_queue(redis)
    first, created = await queue.submit("a", request(idempotency_key="upload-1"))
    same, again = await queue.submit("a", request(idempotency_key="upload-1"))
    other, other_created = await queue.submit("b", request(idempotency_key="upload-1"))
    assert created and not again and other_created
    assert same.id == first.id and other.id != first.id
    assert (await queue.maintain()).ready["normal"] == 2


async def test_finished_records_expire_after_the_retention(redis: Redis) -> None:
    queue = make_queue(redis, retention_ms=300)
    job, _ = await queue.submit("a", request(idempotency_key="k"))
    held = await claim(queue)
    assert held is not None and await queue.complete(held, "succeeded")
    assert 0 < await redis.pttl(queue.job_key(job.id)) <= 300
    assert 0 < await redis.pttl(queue.idempotency_key("a", "k")) <= 300
    assert [j.id for j in await queue.list_jobs("a", "succeeded", 10)] == [job.id]
    await asyncio.sleep(0.35)
    assert await queue.get(job.id) is None
    assert await queue.list_jobs("a", None, 10) == []


async def test_every_queue_key_is_in_one_cluster_slot(redis: Redis) -> None:
    queue = make_queue(redis, lease_ms=100)
    await queue.submit("a", request(idempotency_key="k", callback_url="http://x.example/"))
    await queue.submit("b", request(delay_ms=60_000))
    await queue.submit("c", request("high"))
    held = await claim(queue)
    assert held is not None and await queue.complete(held, "succeeded")
    await queue.submit("d", request())
    assert await claim(queue) is not None
    await asyncio.sleep(0.15)
    await queue.maintain()  # reaps: touches the requeue keys too
    keys = [key async for key in redis.scan_iter("*")]
    assert len(keys) >= 10
    assert {key_slot(key) for key in keys} == {key_slot(queue.depth_key.encode())}


async def test_the_oldest_ready_job_and_the_wait_of_a_claim(redis: Redis) -> None:
    queue = make_queue(redis)
    assert await queue.oldest_waits() == {"high": 0.0, "normal": 0.0, "low": 0.0}
    await queue.submit("a", request("low"))
    await asyncio.sleep(0.3)
    await queue.submit("b", request("low"))
    await queue.submit("a", request("high"))
    waits = await queue.oldest_waits()
    assert 0.3 <= waits["low"] < 5 and waits["high"] < 0.3 and waits["normal"] == 0
    claimed = await claim_all(queue)
    assert [c.job.priority for c in claimed] == ["high", "low", "low"]
    assert claimed[0].waited < 0.3 and 0.3 <= claimed[1].waited < 5
    assert await queue.oldest_waits() == {"high": 0.0, "normal": 0.0, "low": 0.0}
    # A job handed back is ready again from then on, not from its submission.
    await asyncio.sleep(0.3)
    assert await queue.release(claimed[1])
    (again,) = await claim_all(queue)
    assert again.waited < 0.3
async def test_a_new_priority_keeps_the_jobs_place_in_its_tenants_order(redis: Redis) -> None:
    queue = make_queue(redis)
    first, _ = await queue.submit("a", request("high"))
    await asyncio.sleep(0.002)
    moved, _ = await queue.submit("a", request("low"))
    await asyncio.sleep(0.002)
    last, _ = await queue.submit("a", request("high"))
    job, changed = await queue.set_priority(moved.id, "a", "high")
    assert changed and job.priority == "high"
    assert (await queue.maintain()).ready == {"high": 3, "normal": 0, "low": 0}
    assert [c.job.id for c in await claim_all(queue)] == [first.id, moved.id, last.id]


async def test_a_paused_priority_is_skipped_and_resumes_where_it_was(redis: Redis) -> None:
    queue = make_queue(redis)
    normal = [(await queue.submit("a", request("normal")))[0].id for _ in range(2)]
    high, _ = await queue.submit("a", request("high"))
    assert await queue.pause("normal", True)
    assert [c.job.id for c in await claim_all(queue)] == [high.id]
    assert await claim(queue) is None
    stats = await queue.queue_stats()
    assert [p["paused"] for p in stats["priorities"]] == [False, True, False]
    assert await queue.pause("normal", False)
    assert [c.job.id for c in await claim_all(queue)] == normal


async def test_leases_of_a_job_that_runs_again_after_retry_count_afresh(redis: Redis) -> None:
    queue = make_queue(redis, max_attempts=1)
    job, _ = await queue.submit("a", request())
    claimed = await claim(queue)
    assert claimed is not None
    assert await queue.retry(claimed, 0, {"type": "x", "title": "x", "status": 502}) == "failed"
    again, queued = await queue.rerun(job.id, "a")
    assert queued and again.status == "queued" and again.attempts == 0 and again.error is None
    assert (await queue.rerun(job.id, None))[1] is False  # already queued: unchanged
    reclaimed = await claim(queue)
    assert reclaimed is not None and reclaimed.job.id == job.id and reclaimed.job.attempts == 1
