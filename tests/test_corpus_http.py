"""Every corpus file through the HTTP path: 200 or the right 4xx, never a 5xx, never a hang."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.corpus import IMAGES, MANIFEST

CLIENT_ERRORS = {400, 413, 415, 422}

# Files whose outcome is fixed by what they are; everything else in a "valid" category must
# render (200) and everything in bombs/ or malformed/ must be refused with a 4xx.
EXPECTED = {
    "avif/animated-sequence.avifs": {415},
    "heic/hevc-128x128.heif": {415},
    "heic/hevc-256x256.heic": {415},
    "jxl/animated-spline.jxl": {415},
    "jxl/orientation6-rotate-90-cw.jxl": {415},
    "jxl/photo-dice.jxl": {415},
    "bombs/png-65536x65536-uint32-limit.png": {413},
    "bombs/png-50000x50000-header-only.png": {413},
    "bombs/png-16384x16384-32kb.png": {413},
    "bombs/jpeg-20000x14000.jpg": {413},
    "bombs/avif-17000x17000.avif": {413},
    "bombs/svg-100000x100000-canvas.svg": {413},
    "bombs/gif-10000-frames-100x100.gif": {200, 413},  # still output uses the first frame
    # libpng skips the oversized zTXt chunk: the pixels are fine, the bomb never goes off
    "bombs/png-ztxt-decompression-dos.png": {200},
    # five stray bytes between markers: every pixel is present, so the image is served
    "malformed/junk-before-dqt.jpg": {200},
    "malformed/jpeg-bytes-named.png": {200},
    "malformed/png-bytes-named.jpg": {200},
    "malformed/webp-containing-svg-text.webp": {200},
    "malformed/truncated.jpg": {422},
    "malformed/truncated.png": {422},
    "malformed/truncated.gif": {422},
    "malformed/truncated-progressive.jpg": {422},
    "malformed/zero-bytes.jpg": {415},
    "malformed/one-byte.jpg": {415},
    "malformed/random-bytes.jpg": {415},
    "svg/xxe-external-entity.svg": {422},
}


def corpus_files() -> list[str]:
    with MANIFEST.open() as f:
        return [row["path"] for row in csv.DictReader(f, delimiter="\t")]


def expected_statuses(path: str) -> set[int]:
    if path in EXPECTED:
        return EXPECTED[path]
    category = path.split("/")[0]
    if category in ("bombs", "malformed"):
        return CLIENT_ERRORS
    return {200}


@pytest.mark.parametrize("path", corpus_files())
def test_corpus_file_is_answered_with_200_or_the_right_4xx(client: TestClient, path: str) -> None:
    r = client.get(f"/_/w:256/plain/local://{path}")
    assert r.status_code in expected_statuses(path), (path, r.status_code, r.text[:300])
    if r.status_code == 200:
        assert r.headers["content-type"].startswith("image/")
        assert len(r.content) == int(r.headers["content-length"]) > 0
    else:
        assert r.headers["content-type"] == "application/problem+json"
    info = client.get(f"/info/_/plain/local://{path}")
    assert info.status_code < 500, (path, info.status_code, info.text[:300])


def test_server_survives_the_whole_corpus(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert Path(IMAGES).is_dir()
