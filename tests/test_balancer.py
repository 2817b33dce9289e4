"""Three instances (2 workers each) and 2 job workers on one Redis, behind HAProxy.

Run on Sentinel and on Cluster, with ``deploy/haproxy.cfg`` (bind and server lines rewritten
for 127.0.0.1) and load sent through the balancer:

* one identical miss sent to all three instances at once costs the origin one download;
* SIGTERM to an instance under load: it turns not-ready first and still serves, HAProxy takes
  it out, it finishes its requests and its current job variant, hands its jobs back, exits 0;
  no request fails at the balancer;
* SIGKILL to a whole instance under load: failures only among requests in flight on it, none
  2 s later; its jobs are taken over once their leases expire; no job is lost.

The tests of one topology share one fleet and run in this order. Each prints its numbers
(``BALANCER ...``).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.demo import HAPROXY_CFG, haproxy_config
from tests.corpus import IMAGES
from tests.fleet import (
    Fleet,
    haproxy_binary,
    image_requests,
    instance_env,
    job_body,
    job_requests,
    wait_all_finished,
    wait_exit,
)
from tests.job_fixtures import AUTH_A, PHOTO, wait_for
from tests.load import Load, summary
from tests.origin import Origin, OriginRequestHandler
from tests.redis_topologies import ClusterDeployment, SentinelDeployment

HAPROXY = haproxy_binary()
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (Debian package haproxy)")

DRAIN_DELAY = 3.0
OK = frozenset({200, 202})


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    deployment: SentinelDeployment | ClusterDeployment = request.getfixturevalue(
        f"{request.param}_deployment"
    )
    env = instance_env(
        deployment.url,
        f"b{secrets.token_hex(4)}",
        IMGSRV_DRAIN_DELAY=str(DRAIN_DELAY),
        IMGSRV_JOB_WORKERS="1",
        IMGSRV_LOG_LEVEL="info",
        IMGSRV_SOURCE_CACHE_TTL="0",
    )
    fleet = Fleet(tmp_path_factory.mktemp(f"fleet-{request.param}"), env).start()
    yield fleet
    fleet.stop()


def slow_photo(origin: Origin, delay: float) -> str:
    """An origin URL of the photo that answers after ``delay`` seconds, each time."""
    photo = (IMAGES / PHOTO.removeprefix("files/")).read_bytes()

    def slow(handler: OriginRequestHandler) -> None:
        time.sleep(delay)
        handler.send_body(200, photo, {"Content-Type": "image/jpeg"})

    name = f"slow/{secrets.token_hex(4)}.jpg"
    origin.handler(name, slow)
    return name


def queue_backlog(fleet: Fleet, origin: Origin, jobs: int, variants: int) -> list[str]:
    """Queue slow jobs (each variant downloads for 0.3 s) and wait until every worker slot of
    the fleet holds one."""
    source = origin.url(slow_photo(origin, 0.3))
    with httpx.Client(base_url=fleet.url, headers=AUTH_A, timeout=10) as http:
        answers = [
            http.post("/v1/jobs", json=job_body(n, variants) | {"source": source})
            for n in range(jobs)
        ]
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers[:2]]
    live = [i for i in fleet.instances if i.process is not None and i.process.poll() is None]
    slots = 2 * len(live) + fleet.job_workers
    wait_for(lambda: fleet.running_jobs() >= slots, 30, interval=0.1, what="busy workers")
    return [a.json()["id"] for a in answers]


def balancer_load(fleet: Fleet) -> tuple[Load, Load]:
    """Image requests from four threads and job submissions from one, through HAProxy."""
    images = Load(fleet.url, image_requests(), threads=4, max_requests=20_000)
    jobs = Load(fleet.url, job_requests, threads=1, pause=0.1, headers=AUTH_A, max_requests=300)
    return images, jobs


def settle_jobs(fleet: Fleet, backlog: list[str], jobs: Load) -> dict[str, dict[str, Any]]:
    """Wait for the backlog and every job the load got accepted; returns them by id."""
    ids = backlog + [o.body["id"] for o in jobs.outcomes if o.status == 202]
    return wait_all_finished(fleet.url, ids, timeout=120)


def test_one_miss_sent_to_every_instance_costs_one_download(fleet: Fleet, origin: Origin) -> None:
    name = slow_photo(origin, 0.5)  # long enough for the requests to meet
    path = f"/_/w:300/plain/{origin.url(name)}"
    bases = [instance.url for instance in fleet.instances] * 2
    with ThreadPoolExecutor(len(bases)) as pool:
        answers = list(pool.map(lambda base: httpx.get(base + path, timeout=30), bases))
    print(f"\nBALANCER one miss x{len(bases)}: origin downloads {origin.count(name)}")
    assert [a.status_code for a in answers] == [200] * len(bases)
    assert len({a.content for a in answers}) == 1
    assert origin.count(name) == 1


def test_sigterm_drains_an_instance_without_a_failed_request(fleet: Fleet, origin: Origin) -> None:
    victim = fleet.instances[0]
    assert victim.process is not None
    backlog = queue_backlog(fleet, origin, jobs=8, variants=10)
    images, jobs = balancer_load(fleet)
    with images, jobs:
        time.sleep(0.3)
        stopped_at = time.monotonic()
        victim.process.terminate()
        # Not ready at once, still serving: the balancer takes it out before it closes.
        wait_for(lambda: _readiness(victim.url) == 503, 2, interval=0.05, what="readiness to fail")
        assert httpx.get(victim.url + image_requests()(0, 1)[1], timeout=10).status_code == 200
        wait_for(
            lambda: fleet.server_states().get(str(victim.port), "").startswith("DOWN"),
            DRAIN_DELAY,
            interval=0.05,
            what="HAProxy to take the draining instance out",
        )
        taken_out = time.monotonic() - stopped_at
        status = wait_exit(victim.process, 40)
        exited = time.monotonic() - stopped_at
        time.sleep(1.0)
    failed = [o for o in images.outcomes + jobs.outcomes if o.status not in OK]
    finished = settle_jobs(fleet, backlog, jobs)
    lost = [job_id for job_id, job in finished.items() if job["status"] != "succeeded"]
    log = fleet.log("imgsrv0")
    handed_back = log.count('"reason":"worker shutting down"')
    print(
        f"\nBALANCER SIGTERM: images {summary(images.outcomes)}, submissions "
        f"{summary(jobs.outcomes)}, out of the balancer after {taken_out:.2f} s, exited "
        f"{status} after {exited:.2f} s, {handed_back} jobs handed back, {len(finished)} jobs, "
        f"{len(lost)} lost"
    )
    assert status == 0
    assert failed == []
    assert '"event":"drain"' in log and "readiness off while draining" in log
    assert "drained: closing the listener" in log
    assert handed_back >= 1  # it held jobs (every slot was busy) and gave them back
    assert lost == []


def _readiness(url: str) -> int:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_sigkill_fails_only_requests_in_flight_and_loses_no_job(
    fleet: Fleet, origin: Origin
) -> None:
    victim = next(i for i in fleet.instances if i.process is not None and i.process.poll() is None)
    backlog = queue_backlog(fleet, origin, jobs=6, variants=10)
    images, jobs = balancer_load(fleet)
    with images, jobs:
        time.sleep(0.3)
        killed_at = time.monotonic()
        victim.kill_group()
        time.sleep(4.0)
    failed = [o for o in images.outcomes + jobs.outcomes if o.status not in OK]
    late = [o for o in failed if o.at > killed_at + 2.0]
    finished = settle_jobs(fleet, backlog, jobs)
    lost = [job_id for job_id, job in finished.items() if job["status"] != "succeeded"]
    taken_over = sum(1 for job in finished.values() if job["attempts"] > 1)
    print(
        f"\nBALANCER SIGKILL: images {summary(images.outcomes)}, submissions "
        f"{summary(jobs.outcomes)}, {len(failed)} failed (all within "
        f"{max((o.at - killed_at for o in failed), default=0):.2f} s of the kill), "
        f"{taken_over} jobs taken over, {len(finished)} jobs, {len(lost)} lost"
    )
    assert late == []
    assert all(o.at >= killed_at - 0.1 for o in failed)  # nothing failed before the kill
    assert lost == []
    assert taken_over >= 1  # its jobs were run again by the others after their leases


def test_the_shipped_balancer_configs_are_valid(tmp_path: Path) -> None:
    assert HAPROXY is not None
    rendered = tmp_path / "haproxy.cfg"
    rendered.write_text(
        haproxy_config(HAPROXY_CFG.read_text(), "127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"])
    )
    for config in (HAPROXY_CFG, rendered):
        checked = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True)
        assert checked.returncode == 0, checked.stderr.decode()
    text = rendered.read_text()
    assert "server imgsrv2 127.0.0.1:3" in text and "10.0.0." not in text
    assert "balance leastconn" in text and "uri /readyz" in text


def test_the_nginx_example_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("needs nginx (Debian package nginx-light)")
    example = HAPROXY_CFG.parent / "nginx-imgsrv.conf"
    (tmp_path / "logs").mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\nevents {{}}\n"
        f"http {{ access_log off; include {example}; }}\n"
    )
    checked = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True
    )
    assert checked.returncode == 0, checked.stderr.decode()
