"""Bad Redis URLs and broken deployments: a clear error at start, the breaker or a 503 later.

* At start (``imgsrv serve``, ``imgsrv worker``): unreachable Redis, wrong password, a Sentinel
  that knows no such master, a cluster with slots nobody serves, the wrong scheme for the
  server: one line naming IMGSRV_REDIS_URL, exit status 2, no traceback.
* At run time, a cluster slot without a master: images keep working through the breaker, a
  job submission whose queue slot is unserved answers 503 with Retry-After and writes nothing.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from redis.crc import key_slot
from starlette.testclient import TestClient

from imgsrv import metrics
from imgsrv.app import create_app
from imgsrv.config import Settings
from imgsrv.redis_client import RedisUnreachable, RedisUrlError, check_redis
from imgsrv.render import cache_key
from imgsrv.urls import parse_path
from tests.job_fixtures import AUTH_A, TINY, job_settings
from tests.origin import Origin
from tests.redis_topologies import (
    SLOTS,
    RedisNode,
    SentinelDeployment,
    free_cluster_port,
    wait_until,
)
from tests.servers import RedisProcess, free_port

CLUSTER_NODE = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]


@pytest.fixture(scope="module")
def lone_cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    """A one-node cluster serving every slot, which keeps serving the slots it has when some
    are taken away (cluster-require-full-coverage no)."""
    directory = tmp_path_factory.mktemp("lone-cluster")
    node = RedisNode(
        directory,
        free_cluster_port(set()),
        [*CLUSTER_NODE, "--cluster-require-full-coverage", "no"],
    ).start()
    with node.client() as client:
        client.execute_command("CLUSTER ADDSLOTS", *range(SLOTS))
    yield node
    node.stop()


def settings_with(url: str, **overrides: object) -> Settings:
    return job_settings(url, redis_timeout=1.0, **overrides)


def check(url: str) -> str:
    with pytest.raises(RedisUrlError) as caught:
        check_redis(job_settings(url), wait=0.6)
    message = str(caught.value)
    assert message.startswith("IMGSRV_REDIS_URL: ") and "\n" not in message
    return message


def test_unreachable_redis_is_tried_for_a_moment_then_refused() -> None:
    port = free_port()
    with pytest.raises(RedisUnreachable) as caught:
        check_redis(job_settings(f"redis://127.0.0.1:{port}/0"), wait=0.6)
    assert f"cannot reach Redis at 127.0.0.1:{port}" in str(caught.value)
    assert "no sentinel answers" in check(f"redis+sentinel://127.0.0.1:{port}/imgsrv")
    assert "cannot reach" in check(f"redis+cluster://127.0.0.1:{port}")


def test_a_sentinel_that_knows_no_such_master(sentinel_deployment: SentinelDeployment) -> None:
    hosts = sentinel_deployment.url.split("://")[1].split("/")[0]
    message = check(f"redis+sentinel://{hosts}/no-such-master")
    assert "knows a master named 'no-such-master'" in message
    found = check_redis(job_settings(sentinel_deployment.url))
    assert found is not None and f":{sentinel_deployment.master().port}" in found


def test_a_cluster_with_a_slot_nobody_serves(tmp_path: Path) -> None:
    node = RedisNode(tmp_path / "partial", free_cluster_port(set()), CLUSTER_NODE).start()
    try:
        with node.client() as client:
            client.execute_command("CLUSTER ADDSLOTS", *range(SLOTS - 100))
        message = check(f"redis+cluster://{node.address}")
        assert f"serves 16284 of {SLOTS} hash slots" in message
    finally:
        node.stop()


def test_the_wrong_scheme_for_the_server(lone_cluster_node: RedisNode, tmp_path: Path) -> None:
    assert "is a Redis cluster node: use redis+cluster://" in check(
        f"redis://{lone_cluster_node.address}/0"
    )
    standalone = RedisNode(tmp_path / "plain", free_cluster_port(set()), []).start()
    try:
        assert "is not a Redis Cluster: use redis://" in check(
            f"redis+cluster://{standalone.address}"
        )
    finally:
        standalone.stop()


def test_a_wrong_password(tmp_path: Path) -> None:
    node = RedisNode(tmp_path / "locked", free_cluster_port(set()), []).start()
    try:
        with node.client() as client:
            client.config_set("requirepass", "right")
        message = check(f"redis://:wrong@{node.address}/0")
        assert "refused the credentials" in message and "wrong" not in message.split(":", 1)[1]
        assert check_redis(job_settings(f"redis://:right@{node.address}/0")) == node.address
    finally:
        node.stop()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_the_commands_exit_2_with_one_line(
    command: str, sentinel_deployment: SentinelDeployment, tmp_path: Path
) -> None:
    hosts = sentinel_deployment.url.split("://")[1].split("/")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSRV_")}
    env |= {"IMGSRV_REDIS_URL": f"redis+sentinel://{hosts}/nope", "IMGSRV_PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "imgsrv.cli", command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    errors = [line for line in done.stderr.decode().splitlines() if "error" in line.lower()]
    assert done.returncode == 2, done.stderr.decode()
    assert len(errors) == 1 and "Traceback" not in done.stderr.decode()
    assert errors[0] == (
        "imgsrv: configuration error: IMGSRV_REDIS_URL: "
        f"no sentinel at {hosts} knows a master named 'nope'"
    )


def _wait_cluster_state(node: redis_sync.Redis, state: str) -> None:
    # A node notices a change of slot coverage on its cluster clock (every 100 ms), and
    # until then answers as before.
    wait_until(
        lambda: node.execute_command("CLUSTER INFO")["cluster_state"] == state or None,
        timeout=5,
        what=f"cluster_state:{state}",
    )


def test_an_unserved_slot_at_run_time_opens_the_breaker_and_refuses_jobs(
    lone_cluster_node: RedisNode, origin: Origin
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    settings = settings_with(
        f"redis+cluster://{lone_cluster_node.address}",
        redis_prefix=prefix,
        redis_breaker_reset=30.0,
    )
    queue_slot = key_slot(f"{prefix}:jobs".encode())
    with TestClient(create_app(settings)) as client, lone_cluster_node.client() as node:
        urls = [f"/_/w:{width}/plain/{origin.url(TINY)}" for width in range(20, 28)]
        spec = parse_path(urls[0].encode(), settings).spec
        l2 = client.app.state.renderer.l2  # type: ignore[attr-defined]
        image_slot = key_slot(l2.image_key(cache_key(spec, frozenset()), spec.source).encode())
        node.execute_command("CLUSTER DELSLOTS", image_slot, queue_slot)
        # The node notices the lost coverage on its cluster clock (every 100 ms) and until
        # then still serves the other slots: compare keys from the moment the cluster is down.
        _wait_cluster_state(node, "fail")
        keys_before = node.dbsize()
        try:
            answers = [client.get(url) for url in urls]
            assert [a.status_code for a in answers] == [200] * len(urls)
            assert l2.breaker.state == "open"  # stopped asking the unserved slot
            ready = client.get("/readyz")
            assert ready.status_code == 200
            body = {"source": origin.url(TINY), "variants": [{"w": 32}]}
            refused = client.post("/v1/jobs", json=body, headers=AUTH_A)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["type"] == "urn:imgsrv:problem:queue-unavailable"
            assert node.dbsize() == keys_before  # nothing half-written
        finally:
            node.execute_command("CLUSTER ADDSLOTS", image_slot, queue_slot)
        _wait_cluster_state(node, "ok")
        accepted = client.post("/v1/jobs", json=body, headers=AUTH_A)
        assert accepted.status_code == 202, accepted.text


def test_a_standalone_redis_has_no_replicas_to_wait_for(
    redis_server: RedisProcess, origin: Origin
) -> None:
    settings = settings_with(redis_server.url)
    waits = metrics.JOB_ACCEPT_WAIT.collect()[0].samples
    before = next(s.value for s in waits if s.name.endswith("_count"))
    with TestClient(create_app(settings)) as client:
        body = {"source": origin.url(TINY), "variants": [{"w": 32}]}
        for _ in range(3):
            answer = client.post("/v1/jobs", json=body, headers=AUTH_A)
            assert answer.status_code == 202
    waits = metrics.JOB_ACCEPT_WAIT.collect()[0].samples
    assert next(s.value for s in waits if s.name.endswith("_count")) == before  # no WAIT
