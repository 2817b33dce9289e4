"""Decode once: a set of variants from one download and one decode, the same sizes and formats
as one render each, stored under the sync URL's key; jobs of one source claimed together merge."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pyvips
from starlette.testclient import TestClient

from imgsrv.app import create_app
from imgsrv.errors import InvalidOption
from imgsrv.spec import SpecLimits, parse_options, split_options
from imgsrv.transform import Rendered, TransformOptions, VariantSet, configure_vips, transform
from tests.corpus import IMAGES
from tests.job_fixtures import AUTH_A, PHOTO, job_settings, submit, wait_status
from tests.origin import Origin
from tests.servers import RedisProcess

OPTIONS = TransformOptions()
SPECS = [
    "w:320/f:webp",
    "w:640/f:webp",
    "w:1920/f:webp",
    "rs:cover:200:200/f:png",
    "rs:cover:300:100/g:smart/f:png",
    "rs:contain:300:100/bg:ff0000/f:png",
    "rs:fill:100:300/f:png",
    "rs:inside:150:150/pad:5/rot:90/f:png",
    "w:200/bl:2/sh:1/fl:h/f:png",
    "w:3000/el:1/f:jpeg",  # enlarged: the base is the full-size decode
    "c:10:10:300:200/w:100/f:png",  # full-resolution crop: its own decode
    "t:10/w:100/f:png",  # trim: its own decode
]
SOURCES = [
    "orientation/Landscape_6.jpg",  # EXIF orientation 6
    "jpeg/icc-adobe-rgb-a98.jpg",  # colour profile
    "jpeg/cmyk-swop-icc.jpg",
    "png/rgba-8bit-photo-transparent.png",  # alpha
    "gif/animated-cogs-5-frames.gif",  # animated source, still and animated outputs
]


@pytest.fixture(scope="module", autouse=True)
def vips() -> None:
    configure_vips(1)


def spec(text: str):  # type: ignore[no-untyped-def]
    return parse_options("local://x", split_options(text), SpecLimits())


def mean_difference(a: Rendered, b: Rendered) -> float:
    first = pyvips.Image.new_from_buffer(a.data, "").colourspace("srgb")
    second = pyvips.Image.new_from_buffer(b.data, "").colourspace("srgb")
    bands = min(first.bands, second.bands)
    return float((first[0:bands].cast("float") - second[0:bands].cast("float")).abs().avg())


@pytest.mark.parametrize("source", SOURCES)
def test_every_variant_has_the_size_and_format_of_its_own_render(source: str) -> None:
    data = (IMAGES / source).read_bytes()
    specs = [spec(text) for text in SPECS]
    if source.endswith(".gif"):
        specs.append(spec("w:50/f:gif"))  # keeps the animation: rendered on its own
    shared = VariantSet(data, specs, frozenset(), OPTIONS)
    for each in specs:
        alone = transform(data, each, frozenset(), OPTIONS)
        together = shared.render(each)
        facts = (together.width, together.height, together.format, together.pages)
        assert facts == (alone.width, alone.height, alone.format, alone.pages), each.canonical()
        assert together.content_type == alone.content_type
        if together.format == "png" and together.pages == 1:
            # The same picture, resampled once more from a larger image.
            assert mean_difference(together, alone) < 4.0, each.canonical()
    assert shared.decodes == 1


def test_the_largest_variant_is_the_same_bytes_and_smaller_ones_are_derived() -> None:
    data = (IMAGES / "orientation/Landscape_1.jpg").read_bytes()  # 1800x1200
    specs = [spec(f"w:{w}/f:webp") for w in (300, 600, 1200)]
    shared = VariantSet(data, specs, frozenset(), OPTIONS)
    assert shared.largest(shared._read_header()) == specs[2]
    largest = shared.render(specs[2])
    assert largest.data == transform(data, specs[2], frozenset(), OPTIONS).data
    assert [shared.render(s).width for s in specs[:2]] == [300, 600]
    assert shared.decodes == 1


def test_a_variant_that_cannot_be_rendered_fails_alone() -> None:
    data = (IMAGES / "orientation/Landscape_1.jpg").read_bytes()
    good, bad = spec("w:100"), spec("c:5000:5000:10:10")
    shared = VariantSet(data, [good, bad], frozenset(), OPTIONS)
    with pytest.raises(InvalidOption):
        shared.render(bad)
    assert shared.render(good).width == 100


# --------------------------------------------------------------------------- jobs


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_jobs_of_one_source_claimed_together_share_one_download_and_one_decode(
    tmp_path: Path, origin: Origin
) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    # No reuse of recent downloads: every render that is not shared downloads again.
    settings = job_settings(redis.url, source_cache_ttl=0.0)
    source = origin.url(PHOTO)
    downloads = origin.count(PHOTO)
    widths = [[320, 640], [960, 320], [1280], [200, 400, 800]]
    try:
        with TestClient(create_app(settings)) as api:
            ids = [
                submit(api, {"source": source, "variants": [{"w": w, "f": "webp"} for w in ws]})
                for ws in widths
            ]
            # The counters are this process's, shared by both apps. Read them before any
            # worker runs: the workers below claim and merge the jobs as soon as they start.
            before = api.get("/metrics").text
        merging = job_settings(redis.url, job_workers=4, job_merge_window=0.5, source_cache_ttl=0.0)
        with TestClient(create_app(merging)) as workers:
            jobs = [wait_status(workers, job_id, auth=AUTH_A) for job_id in ids]
            after = workers.get("/metrics").text
    finally:
        redis.stop()
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    for job, ws in zip(jobs, widths, strict=True):
        assert [v["result"]["width"] for v in job["variants"]] == ws
        assert all(v["result"]["format"] == "webp" for v in job["variants"])
    assert origin.count(PHOTO) == downloads + 1  # four jobs, nine variants, one download
    decodes = metric(after, "imgsrv_shared_decodes_total") - metric(
        before, "imgsrv_shared_decodes_total"
    )
    merged = metric(after, "imgsrv_jobs_merged_total") - metric(before, "imgsrv_jobs_merged_total")
    assert (decodes, merged) == (1, 4)
