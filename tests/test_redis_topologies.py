"""Every user of Redis on all three topologies, against real redis-server processes.

Standalone (a unix socket), Sentinel (1 master, 1 replica, 3 sentinels) and Cluster (3 masters,
3 replicas): the L2 cache and its expiry refresh, render locks, purge with pub/sub reaching
subscribers on every node, the whole job queue (every Lua script, pipelines, callbacks),
durable acceptance with WAIT, and the app end to end (images, jobs, purge, /readyz, /metrics).
Any CROSSSLOT error or key outside a script's slot would fail these tests on the cluster.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis as redis_sync
from starlette.testclient import TestClient

from imgsrv import metrics
from imgsrv.app import create_app
from imgsrv.cache.entry import CacheEntry
from imgsrv.cache.purge import listen_for_purges
from imgsrv.config import Settings, load_settings
from imgsrv.jobs.auth import ApiKeys
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.model import JobRequest
from imgsrv.jobs.queue import JobQueue
from imgsrv.redis_client import close_redis, connect_redis, open_blocking_redis, open_pubsub
from imgsrv.report.from_redis import review_from_redis
from imgsrv.report.period import month_period
from imgsrv.runtime import build_l2
from tests.job_fixtures import AUTH_A, TINY, job_settings, submit, wait_status
from tests.origin import Origin
from tests.redis_topologies import ClusterDeployment, SentinelDeployment
from tests.servers import RedisProcess

TOPOLOGIES = ("standalone", "sentinel", "cluster")
DataClient = redis_sync.Redis | redis_sync.RedisCluster


@dataclass
class Topology:
    """A deployment under test, and direct access to the data imgsrv writes there."""

    name: str
    url: str
    data: DataClient
    replica_for: Callable[[str], redis_sync.Redis | None]
    nodes: int  # nodes a subscriber may connect to


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    if request.param == "standalone":
        server = RedisProcess(tmp_path / "redis").start()
        data = redis_sync.Redis.from_url(server.url)
        yield Topology("standalone", server.url, data, lambda key: None, 1)
        data.close()
        server.stop()
    elif request.param == "sentinel":
        sentinel: SentinelDeployment = request.getfixturevalue("sentinel_deployment")
        data = sentinel.master().client()
        yield Topology("sentinel", sentinel.url, data, lambda key: sentinel.replica().client(), 1)
        data.close()
    else:
        cluster: ClusterDeployment = request.getfixturevalue("cluster_deployment")
        cluster_data = cluster.data_client()

        def replica_for(key: str) -> redis_sync.Redis:
            node = cluster.replicas_of(key)[0]
            client = redis_sync.Redis(port=node.port, single_connection_client=True)
            client.execute_command("READONLY")  # a cluster replica answers reads only then
            return client

        yield Topology("cluster", cluster.url, cluster_data, replica_for, len(cluster.nodes))
        cluster_data.close()


def settings_for(topology: Topology, **overrides: object) -> Settings:
    """Settings on the topology with a prefix of this test alone."""
    values: dict[str, object] = {
        "redis_url": topology.url,
        "redis_prefix": f"t{secrets.token_hex(4)}",
        "redis_timeout": 1.0,  # a loaded test machine; the code paths are what is tested
        "access_log": False,
        "log_level": "warning",
    }
    values.update(overrides)
    return load_settings({}, **values)


def entry(data: bytes = b"pixels") -> CacheEntry:
    return CacheEntry(data, "image/webp", "webp", 10, 8, 1, '"etag"')


async def test_l2_entries_expiry_refresh_and_render_locks(topology: Topology) -> None:
    settings = settings_for(topology)
    client = connect_redis(settings)
    assert client is not None
    l2 = build_l2(settings, client)
    source = "https://img.example/cat.jpg"
    try:
        assert await l2.put("w:100", entry(), 86_400, source)
        name = l2.image_key("w:100", source)
        assert topology.data.ttl(name) <= 86_400
        found = await l2.get("w:100", source, 172_800)
        assert found == entry()
        assert topology.data.ttl(name) > 86_400  # the hit pushed the expiry out
        assert topology.data.smembers(l2.source_key(source)) == {name.encode()}
        # A miss takes the render lock in the same script; the next process finds it taken.
        first = await l2.lookup("w:200", source, 86_400, 5_000)
        assert first.entry is None and first.token is not None
        second = await l2.lookup("w:200", source, 86_400, 5_000)
        assert second.entry is None and second.token is None
        await l2.release_lock("w:200", source, first.token)
        third = await l2.lookup("w:200", source, 86_400, 5_000)
        assert third.token is not None
        # Storing the render releases its lock; the next lookup is a hit that refreshes.
        assert await l2.put("w:200", entry(b"other"), 86_400, source, lock_token=third.token)
        assert topology.data.exists(l2.lock_key("w:200", source)) == 0
        hit = await l2.lookup("w:200", source, 172_800, 5_000)
        assert hit.entry == entry(b"other")
        assert topology.data.ttl(l2.image_key("w:200", source)) > 86_400
        assert await l2.ping()
        assert l2.breaker.state == "closed"
    finally:
        await close_redis(client)


async def test_purge_reaches_subscribers_on_every_node(topology: Topology) -> None:
    settings = settings_for(topology)
    clients = [connect_redis(settings) for _ in range(3)]
    publisher, listener_client, extra = clients
    assert publisher is not None and listener_client is not None and extra is not None
    l2 = build_l2(settings, publisher)
    source = "https://img.example/dog.png"
    heard: list[str] = []
    # A subscriber on every node (a cluster's masters and replicas), as processes of several
    # instances would be after their reconnections.
    pubsubs = [await open_pubsub(extra, attempt) for attempt in range(topology.nodes)]
    listener = asyncio.create_task(
        listen_for_purges(listener_client, l2.purge_channel, heard.append)
    )
    try:
        for pubsub in pubsubs:
            await pubsub.subscribe(l2.purge_channel)
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
        if topology.name == "cluster":
            ports = {pubsub.connection.port for pubsub in pubsubs if pubsub.connection}
            assert len(ports) == topology.nodes
        for width in (100, 200, 300):
            assert await l2.put(f"w:{width}", entry(), 86_400, source)
        await asyncio.sleep(0.3)  # the listener task subscribes
        assert await l2.purge_source(source) == 3
        assert topology.data.exists(l2.image_key("w:100", source), l2.source_key(source)) == 0
        for pubsub in pubsubs:
            message = await pubsub.get_message(timeout=3)
            assert message is not None and message["data"] == source.encode()
        deadline = time.monotonic() + 3
        while not heard and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert heard == [source]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        for pubsub in pubsubs:
            await pubsub.aclose()
        for client in clients:
            if client is not None:
                await close_redis(client)


def job_config(settings: Settings, **overrides: object) -> JobConfig:
    config = JobConfig.from_settings(settings)
    return replace(config, keys=ApiKeys([]), backoff=0.0, **overrides)  # type: ignore[arg-type]


def job_request(**fields: object) -> JobRequest:
    base = JobRequest(
        source="local://sample.jpg",
        variants=({"w": 16},),
        options=("w:16/ttl:86400",),
        callback_url="http://127.0.0.1:9/hook",
    )
    return replace(base, **fields)  # type: ignore[arg-type]


async def test_every_job_queue_script_runs_in_one_slot(topology: Topology) -> None:
    settings = settings_for(topology)
    client = connect_redis(settings)
    assert client is not None
    queue = JobQueue(client, job_config(settings, lease_ms=200, max_attempts=2))
    waits = metrics.JOB_ACCEPT_WAIT.collect()[0].samples
    waited_before = next(s.value for s in waits if s.name.endswith("_count"))
    try:
        job, created = await queue.submit("a", job_request(idempotency_key="once"))
        assert created and job.status == "queued"
        waits = metrics.JOB_ACCEPT_WAIT.collect()[0].samples
        waited = next(s.value for s in waits if s.name.endswith("_count")) - waited_before
        replica = topology.replica_for(queue.job_key(job.id))
        if replica is None:  # no replica: nothing to wait for
            assert waited == 0
        else:  # WAIT: the 202 comes after a replica has the job
            assert waited == 1
            assert replica.hget(queue.job_key(job.id), "status") == b"queued"
        again, created_again = await queue.submit("a", job_request(idempotency_key="once"))
        assert again.id == job.id and not created_again
        delayed, _ = await queue.submit("b", job_request(delay_ms=60_000))
        doomed, _ = await queue.submit("b", job_request())
        cancelled, now = await queue.cancel(doomed.id, "b")
        assert now and cancelled is not None and cancelled.status == "cancelled"

        claim, _ = await queue.claim("w1")
        assert claim is not None and claim.job.id == job.id
        assert await queue.heartbeat(claim, [None]) == (True, False)
        assert await queue.retry(claim, 0.0, {"title": "boom"}) == "queued"
        claim, _ = await queue.claim("w1")
        assert claim is not None and claim.job.attempts == 2
        await asyncio.sleep(0.35)  # the lease runs out: the next maintenance reaps it
        stats = await queue.maintain()
        assert stats.reaped == 1 and stats.delayed == 1
        failed = await queue.get(job.id)
        assert failed is not None and failed.status == "failed"  # out of attempts
        assert not await queue.complete(claim, "succeeded")  # the lease is gone

        listed = await queue.list_jobs("b", None, 10)
        assert {item.id for item in listed} == {delayed.id, doomed.id}
        due = await queue.take_callbacks(5.0, 10)
        assert set(due) == {job.id, doomed.id}
        await queue.callback_result(job.id, {"status": "delivered"}, None)
        await queue.callback_result(doomed.id, {"status": "pending"}, 0.0)
        assert await queue.take_callbacks(5.0, 10) == [doomed.id]
        if topology.name == "cluster":
            holders = {
                topology.data.keyslot(key.decode())
                for key in topology.data.scan_iter(match=f"{queue.prefix}*", target_nodes="all")
            }
            assert len(holders) == 1  # the whole queue in the slot of its hash tag
    finally:
        await close_redis(client)


def test_l2_entries_of_different_sources_land_on_different_masters(
    cluster_deployment: ClusterDeployment,
) -> None:
    topology_settings = load_settings(
        {},
        redis_url=cluster_deployment.url,
        redis_prefix=f"t{secrets.token_hex(4)}",
        redis_timeout=1.0,
    )

    async def fill() -> dict[str, list[str]]:
        client = connect_redis(topology_settings)
        assert client is not None
        l2 = build_l2(topology_settings, client)
        names: dict[str, list[str]] = {}
        try:
            for number in range(24):
                source = f"https://img.example/{number}.jpg"
                for width in (100, 200):
                    assert await l2.put(f"w:{width}", entry(), 86_400, source)
                names[source] = [
                    l2.image_key("w:100", source),
                    l2.image_key("w:200", source),
                    l2.source_key(source),
                ]
        finally:
            await close_redis(client)
        return names

    names = asyncio.run(fill())
    holders = {
        source: {cluster_deployment.master_of(key).port for key in keys}
        for source, keys in names.items()
    }
    assert all(len(ports) == 1 for ports in holders.values())  # one source, one master
    used = set().union(*holders.values())
    assert used == {node.port for node in cluster_deployment.masters()}  # spread over all


def test_the_app_on_every_topology(topology: Topology, origin: Origin) -> None:
    settings = job_settings(
        topology.url,
        redis_prefix=f"t{secrets.token_hex(4)}",
        redis_timeout=1.0,
        job_workers=1,
        admin_key="admin-secret",
    )
    url = f"/_/w:64/f:webp/plain/{origin.url(TINY)}"
    with TestClient(create_app(settings)) as first:
        assert first.get(url).headers["x-cache"] == "miss"
        ready = first.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == "up"
        job_id = submit(first, {"source": origin.url(TINY), "variants": [{"w": 32}, {"w": 48}]})
        done = wait_status(first, job_id)
        assert done["status"] == "succeeded", done
        metrics = first.get("/metrics").text
        assert 'imgsrv_jobs_submitted_total{priority="normal"}' in metrics
        # The registry is read in one call on the queue's slot (a Cluster pipeline may not
        # hold TIME): this process's record, online, with its job slot.
        registry = first.get("/v1/workers", headers={"Authorization": "Bearer admin-secret"})
        assert registry.status_code == 200, registry.text
        listed_workers = registry.json()["workers"]
        assert [(w["kind"], w["online"], w["concurrency"]) for w in listed_workers] == [
            ("server", True, 1)
        ]
    with TestClient(create_app(settings)) as second:  # another process: L2, not L1
        assert second.get(url).headers["x-cache"] == "l2"
        job_url = done["variants"][0]["result"]["url"]
        assert second.get(job_url).headers["x-cache"] == "l2"
        purged = second.delete(
            "/v1/cache",
            params={"source": origin.url(TINY)},
            headers={"Authorization": "Bearer admin-secret"},
        )
        assert purged.status_code == 200 and purged.json()["deleted"] == 3
        assert second.get(url).headers["x-cache"] == "miss"
        listed = second.get("/v1/jobs", headers=AUTH_A).json()["jobs"]
        assert [job["id"] for job in listed] == [job_id]
    # The egress counters both processes wrote, read back as `imgsrv report` does.
    month = time.strftime("%Y-%m", time.gmtime())
    counters = open_blocking_redis(topology.url, timeout=5.0)
    try:
        review = review_from_redis(counters, settings.redis_prefix, month_period(month))
    finally:
        counters.close()
    assert review.image_responses.get("miss", 0) >= 2 and review.image_responses.get("l2") == 2
    assert review.egress_bytes > 0


def test_submission_waits_for_a_replica_and_answers_503_when_none_confirms(
    sentinel_deployment: SentinelDeployment, origin: Origin
) -> None:
    settings = job_settings(
        sentinel_deployment.url,
        redis_prefix=f"t{secrets.token_hex(4)}",
        redis_timeout=1.0,
        job_accept_timeout=0.3,
    )
    body = {"source": origin.url(TINY), "variants": [{"w": 32}], "idempotency_key": "k1"}
    replica = sentinel_deployment.replica()
    with TestClient(create_app(settings)) as client:
        submit(client, {"source": origin.url(TINY), "variants": [{"w": 16}]})  # warm
        # A replica that stops answering for a second cannot confirm in time.
        sleeper = threading.Thread(
            target=lambda: replica.client().execute_command("DEBUG", "SLEEP", "1.2")
        )
        sleeper.start()
        time.sleep(0.1)
        started = time.monotonic()
        refused = client.post("/v1/jobs", json=body, headers=AUTH_A)
        waited = time.monotonic() - started
        sleeper.join()
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "idempotency_key" in refused.json()["detail"]
        assert 0.25 < waited < 1.1  # bounded by job_accept_timeout, not by the replica
        # The client does as told: the same idempotency key gets the one job, now confirmed.
        retried = client.post("/v1/jobs", json=body, headers=AUTH_A)
        assert retried.status_code == 202
        assert retried.headers.get("idempotent-replayed") == "true"
        assert "imgsrv_job_accept_unconfirmed_total 1.0" in client.get("/metrics").text
