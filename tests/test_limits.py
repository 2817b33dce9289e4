"""Every configured limit, enforced over HTTP with the right status and a problem body."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
from starlette.testclient import TestClient

from imgsrv.app import create_app
from tests.conftest import CORPUS_IMAGES, corpus_settings
from tests.origin import Origin
from tests.servers import ImgsrvProcess

PHOTO = "local://orientation/Landscape_1.jpg"  # 1800x1200, 348 KB


def status_of(overrides: dict[str, object], path: str) -> tuple[int, str]:
    with TestClient(create_app(corpus_settings(**overrides))) as client:
        r = client.get(path)
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json"
            return r.status_code, str(orjson.loads(r.content)["detail"])
        return r.status_code, ""


def test_max_source_bytes() -> None:
    assert status_of({"max_source_bytes": 400_000}, f"/_/w:50/plain/{PHOTO}")[0] == 200
    status, detail = status_of({"max_source_bytes": 100_000}, f"/_/w:50/plain/{PHOTO}")
    assert status == 413 and "100000" in detail


def test_max_source_megapixels() -> None:
    assert status_of({"max_source_megapixels": 2.2}, f"/_/w:50/plain/{PHOTO}")[0] == 200
    assert status_of({"max_source_megapixels": 2.0}, f"/_/w:50/plain/{PHOTO}")[0] == 413


def test_max_animation_frames() -> None:
    gif = "local://gif/animated-iss634-42-frames.gif"
    assert status_of({"max_animation_frames": 42}, f"/_/w:50/plain/{gif}")[0] == 200
    assert status_of({"max_animation_frames": 41}, f"/_/w:50/plain/{gif}")[0] == 413
    # a still output only decodes the first frame, so the frame limit does not apply
    assert status_of({"max_animation_frames": 1}, f"/_/w:50/f:png/plain/{gif}")[0] == 200


def test_max_output_dimension() -> None:
    assert status_of({"max_output_dimension": 500}, f"/_/w:500/plain/{PHOTO}")[0] == 200
    status, detail = status_of({"max_output_dimension": 500}, f"/_/w:501/plain/{PHOTO}")
    assert status == 400 and "501" in detail


def test_allowed_source_hosts(origin: Origin) -> None:
    url = quote(origin.url("files/orientation/Landscape_1.jpg"), safe="")
    allowed = {"allow_source_networks": ("127.0.0.0/8",)}
    assert (
        status_of({**allowed, "allowed_source_hosts": ("127.0.0.1",)}, f"/_/plain/{url}")[0] == 200
    )
    assert (
        status_of({**allowed, "allowed_source_hosts": ("*.example.com",)}, f"/_/plain/{url}")[0]
        == 403
    )


def test_redirect_limit_and_timeouts(origin: Origin) -> None:
    allowed: dict[str, object] = {"allow_source_networks": ("127.0.0.0/8",)}
    chain = quote(origin.url("chain/3"), safe="")
    assert status_of({**allowed, "max_redirects": 2}, f"/_/plain/{chain}")[0] == 502
    slow = quote(origin.url("slow-headers?delay=2"), safe="")
    assert status_of({**allowed, "read_timeout": 0.3}, f"/_/plain/{slow}")[0] == 504
    trickle = quote(origin.url("trickle?chunks=50&interval=0.1"), safe="")
    assert status_of({**allowed, "download_timeout": 0.5}, f"/_/plain/{trickle}")[0] == 504


def test_svg_can_be_switched_off() -> None:
    svg = "local://svg/simple-logo.svg"
    assert status_of({}, f"/_/w:50/f:png/plain/{svg}")[0] == 200
    assert status_of({"allow_svg": False}, f"/_/w:50/f:png/plain/{svg}")[0] == 415


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_bombs_are_refused_quickly_without_large_memory(tmp_path: Path) -> None:
    env = {
        "IMGSRV_WORKERS": "1",
        "IMGSRV_EMBEDDED_REDIS": "0",
        "IMGSRV_LOCAL_ROOT": str(CORPUS_IMAGES),
    }
    bombs = sorted(p.name for p in (CORPUS_IMAGES / "bombs").iterdir())
    with ImgsrvProcess(env, cwd=tmp_path) as server:
        assert server.process is not None
        for name in bombs:
            r = httpx.get(f"{server.url}/_/w:256/plain/local://bombs/{name}", timeout=30)
            assert r.status_code < 500, (name, r.status_code)
            assert r.elapsed.total_seconds() < 5, name
        assert httpx.get(server.url + "/healthz").status_code == 200
        peak = _peak_rss_mib(server.process.pid)
    print(f"peak RSS while refusing {len(bombs)} bombs: {peak:.0f} MiB")
    # A decoded 65536x65536 RGBA bomb alone would need 16 GiB.
    assert peak < 400, f"peak RSS {peak:.0f} MiB"
