"""Behaviour of the libvips pipeline, checked on real libvips output.

Synthetic images (solid colour blocks) make the geometry checks exact: which colour ends up
where tells which region a fit, gravity, crop or rotation kept. The test corpus (tests/images)
supplies real-world files (EXIF orientations, colour profiles, animations, broken files).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pyvips

from imgsrv.errors import ImageTooLarge, InvalidOption, UndecodableImage, UnsupportedFormat
from imgsrv.spec import TransformSpec
from imgsrv.transform import (
    ImageInfo,
    Rendered,
    TransformOptions,
    configure_vips,
    probe,
    resolve_auto_format,
    transform,
)
from imgsrv.transform.geometry import ResizePlan, compass_offset, focus_offset, plan_resize
from imgsrv.transform.header import read_header
from imgsrv.transform.load import decode, jpeg_shrink
from imgsrv.transform.vips import get_int
from tests.corpus import IMAGES as CORPUS

OPTIONS = TransformOptions()
NONE: frozenset[str] = frozenset()

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)


@pytest.fixture(scope="module", autouse=True)
def _vips() -> None:
    configure_vips(1)


# --------------------------------------------------------------------------- helpers


def corpus(relative: str) -> bytes:
    return (CORPUS / relative).read_bytes()


def spec(**fields: Any) -> TransformSpec:
    return TransformSpec(source="test", **fields)


def render(data: bytes, accepted: frozenset[str] = NONE, **fields: Any) -> Rendered:
    return transform(data, spec(**fields), accepted, OPTIONS)


def decoded(rendered: Rendered, **load: Any) -> Any:
    """The rendered bytes decoded again, in memory."""
    return pyvips.Image.new_from_buffer(rendered.data, "", **load).copy_memory()


def solid(width: int, height: int, colour: tuple[int, ...]) -> Any:
    bands = len(colour)
    image = (pyvips.Image.black(width, height, bands=bands) + list(colour)).cast("uchar")
    return image.copy(interpretation="srgb")


def blocks(*rows: list[tuple[tuple[int, ...], int, int]]) -> Any:
    """An image from rows of (colour, width, height) blocks, each row left to right."""
    joined_rows = [
        pyvips.Image.arrayjoin([solid(w, h, colour) for colour, w, h in row], across=len(row))
        for row in rows
    ]
    return pyvips.Image.arrayjoin(joined_rows, across=1)


def png(image: Any) -> bytes:
    return bytes(image.pngsave_buffer())


def halves(width: int = 200, height: int = 100) -> bytes:
    """Left half red, right half blue."""
    return png(blocks([(RED, width // 2, height), (BLUE, width // 2, height)]))


def pixel(image: Any, x: int, y: int) -> tuple[int, ...]:
    return tuple(round(v) for v in image.getpoint(x, y))


def near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)
    )


def mean_difference(a: Any, b: Any) -> float:
    """Mean absolute difference per pixel and band, of two same-sized images."""
    return float((a.cast("float") - b.cast("float")).abs().avg())


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def is_gif(data: bytes) -> bool:
    return data[:6] in (b"GIF87a", b"GIF89a")


def is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def is_avif(data: bytes) -> bool:
    return data[4:12] == b"ftypavif"


# --------------------------------------------------------------------------- process setup


def test_configure_vips_turns_the_cache_off_and_sets_concurrency(tmp_path: Path) -> None:
    configure_vips(3)
    try:
        assert pyvips.cache_get_max() == 0
        assert pyvips.cache_get_max_mem() == 0
        assert pyvips.cache_get_max_files() == 0
        assert pyvips.concurrency_get() == 3
        # Untrusted loaders are blocked: libvips' own format and CSV no longer open...
        for name in ("x.v", "x.csv"):
            path = tmp_path / name
            solid(4, 4, RED).write_to_file(str(path))
            with pytest.raises(pyvips.Error):
                pyvips.Image.new_from_file(str(path)).avg()
        # ...but SVG, also marked untrusted by libvips, still does.
        rendered = render(b'<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"/>')
        assert (rendered.width, rendered.height) == (20, 10)
    finally:
        configure_vips(1)


_NESTED_LOG_SCRIPT = """
import logging, sys
import pyvips
from imgsrv.transform import configure_vips
from imgsrv.transform.vips import sniff_loader

if sys.argv[1] == "configured":
    configure_vips(1)
data = open(sys.argv[2], "rb").read()  # a JPEG whose probing makes libvips log a warning
nested = []

class LibvipsAgain(logging.Filter):
    # Stands for any Python that runs inside the handler, e.g. a garbage collection that
    # frees an image whose loader logs while closing.
    def filter(self, record):
        if not nested:
            nested.append(1)
            sniff_loader(data)
        return True

logging.getLogger("pyvips").addFilter(LibvipsAgain())
sniff_loader(data)
print("alive")
"""


def test_libvips_logging_never_reenters_python(tmp_path: Path) -> None:
    script = tmp_path / "nested_log.py"
    script.write_text(_NESTED_LOG_SCRIPT)
    jpeg = str(CORPUS / "malformed/random-after-jpeg-soi.jpg")
    root = str(Path(__file__).resolve().parents[1])

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), mode, jpeg],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
        )

    # Unconfigured, GLib aborts the process on the nested message: the hazard is real...
    assert run("unconfigured").returncode != 0
    # ...and configure_vips removes it.
    configured = run("configured")
    assert configured.returncode == 0, configured.stderr
    assert configured.stdout.strip() == "alive"


# --------------------------------------------------------------------------- limits before decoding


def test_pixel_bomb_is_refused_from_the_header_in_milliseconds() -> None:
    data = corpus("bombs/png-65536x65536-uint32-limit.png")  # decoding takes ~20 s
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="65536x65536"):
        render(data, width=256)
    assert time.perf_counter() - started < 0.2


def test_megapixel_limit_is_the_configured_one() -> None:
    data = png(solid(1000, 1000, RED))
    with pytest.raises(ImageTooLarge):
        transform(data, spec(width=10), NONE, TransformOptions(max_source_megapixels=0.99))
    rendered = transform(data, spec(width=10), NONE, TransformOptions(max_source_megapixels=1.0))
    assert rendered.width == 10


def test_frames_count_only_when_the_animation_is_kept() -> None:
    data = corpus("bombs/gif-10000-frames-100x100.gif")
    with pytest.raises(ImageTooLarge, match="10000 frames"):
        render(data, width=50)  # GIF in, GIF out: animated
    with pytest.raises(ImageTooLarge):
        render(data, accepted=frozenset({"webp"}), width=50, format="auto")
    started = time.perf_counter()
    still = render(data, width=50, format="png")  # first frame only
    assert time.perf_counter() - started < 1.0
    assert (still.format, still.pages, still.width) == ("png", 1, 50)


def test_animation_limits_are_configurable() -> None:
    data = corpus("gif/animated-cogs-5-frames.gif")  # 85x77, 5 frames
    four_frames = TransformOptions(max_animation_frames=4)
    with pytest.raises(ImageTooLarge, match="5 frames"):
        transform(data, spec(format="gif"), NONE, four_frames)
    assert transform(data, spec(format="png"), NONE, four_frames).pages == 1
    # 85 * 77 * 5 = 32,725 px: over a 0.03 Mpx budget as an animation, not as one frame.
    small_budget = TransformOptions(max_source_megapixels=0.03)
    with pytest.raises(ImageTooLarge):
        transform(data, spec(format="webp"), NONE, small_budget)
    assert transform(data, spec(format="jpeg"), NONE, small_budget).pages == 1


def test_enlarging_an_animation_is_held_to_the_pixel_budget() -> None:
    data = corpus("gif/animated-cogs-5-frames.gif")
    options = TransformOptions(max_source_megapixels=1.0)
    with pytest.raises(ImageTooLarge, match="frames"):
        transform(data, spec(width=1000, enlarge=True), NONE, options)
    assert transform(data, spec(width=200, enlarge=True), NONE, options).pages == 5


@pytest.mark.parametrize(
    "relative",
    [
        "jxl/photo-dice.jxl",
        "jxl/animated-spline.jxl",
        "avif/animated-sequence.avifs",
        "malformed/random-bytes.jpg",
        "malformed/zero-bytes.jpg",
        "malformed/one-byte.jpg",
    ],
)
def test_sources_without_a_loader_are_unsupported(relative: str) -> None:
    with pytest.raises(UnsupportedFormat):
        render(corpus(relative), width=64)


def test_empty_and_text_sources_are_unsupported() -> None:
    for data in (b"", b"hello world", b"2 2\n1 2\n3 4\n", b"1,2,3\n"):
        with pytest.raises(UnsupportedFormat):
            render(data, width=64)


@pytest.mark.parametrize("relative", ["heic/hevc-256x256.heic", "heic/hevc-128x128.heif"])
def test_hevc_heif_is_unsupported_not_undecodable(relative: str) -> None:
    with pytest.raises(UnsupportedFormat, match="HEVC not supported"):
        render(corpus(relative), width=64)
    with pytest.raises(UnsupportedFormat, match="HEVC"):
        render(corpus(relative), crop=(0, 0, 10, 10))


def test_svg_is_refused_when_disabled() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="red"/></svg>'  # noqa: E501
    with pytest.raises(UnsupportedFormat, match="SVG"):
        transform(svg, spec(width=10), NONE, TransformOptions(allow_svg=False))
    with pytest.raises(UnsupportedFormat, match="SVG"):
        probe(svg, TransformOptions(allow_svg=False))
    rendered = transform(svg, spec(width=10), NONE, OPTIONS)
    assert rendered.format == "png" and is_png(rendered.data)
    assert (rendered.width, rendered.height) == (10, 5)
    assert near(pixel(decoded(rendered), 5, 2), (*RED, 255))


@pytest.mark.parametrize(
    "relative",
    [
        "malformed/truncated.jpg",
        "malformed/truncated-progressive.jpg",
        "malformed/truncated.png",
        "malformed/truncated.gif",
    ],
)
@pytest.mark.parametrize(
    "fields",
    [{"width": 100}, {"width": 100, "format": "webp"}, {"crop": (0, 0, 9999, 9999)}, {"trim": 5}],
    ids=["shrink-on-load", "webp", "full-decode", "trim"],
)
def test_truncated_images_are_undecodable(relative: str, fields: dict[str, Any]) -> None:
    # libvips' default would fill the missing rows in grey and only warn.
    with pytest.raises(UndecodableImage):
        render(corpus(relative), **fields)


def test_a_crop_of_the_intact_part_of_a_truncated_image_is_served() -> None:
    # Decoding streams top to bottom and stops at the crop: every pixel served is real.
    rendered = render(corpus("malformed/truncated.jpg"), crop=(0, 0, 200, 100), format="png")
    out = decoded(rendered)
    assert (out.width, out.height) == (200, 100)
    assert out.crop(0, 90, 200, 10).deviate() > 5


@pytest.mark.parametrize(
    "relative",
    [
        "malformed/corrupt-header.jpg",
        "malformed/random-after-jpeg-soi.jpg",
        "malformed/broken-ihdr.png",
        "bombs/svg-billion-laughs.svg",
        "svg/xxe-external-entity.svg",
        "bombs/gif-frame-65535x65535.gif",
    ],
)
def test_corrupt_images_of_known_formats_are_undecodable(relative: str) -> None:
    with pytest.raises(UndecodableImage) as caught:
        render(corpus(relative), width=64)
    # The detail carries libvips' reason, on one bounded line.
    assert caught.value.detail and "\n" not in caught.value.detail
    assert len(caught.value.detail) < 400


def test_recoverable_warnings_do_not_refuse_a_complete_image() -> None:
    # Stray bytes between JPEG markers: libvips warns, the picture is intact.
    rendered = render(corpus("malformed/junk-before-dqt.jpg"), width=128)
    assert (rendered.width, rendered.height) == (128, 96)
    # Not a grey fill: the last rows hold picture.
    assert decoded(rendered).crop(0, 86, 128, 10).deviate() > 5


# --------------------------------------------------------------------------- orientation


def _upright_reference(name: str, width: int) -> Any:
    reference = pyvips.Image.thumbnail_buffer(
        corpus(f"orientation/{name}_1.jpg"), width, height=10_000
    )
    return reference.copy_memory()


@pytest.mark.parametrize("kind", ["Landscape", "Portrait"])
@pytest.mark.parametrize("orientation", range(9))
def test_every_exif_orientation_comes_out_upright(kind: str, orientation: int) -> None:
    reference = _upright_reference(kind, 120)
    rendered = render(corpus(f"orientation/{kind}_{orientation}.jpg"), width=120, format="png")
    out = decoded(rendered)
    assert (out.width, out.height) == (reference.width, reference.height)
    assert mean_difference(out, reference) < 6
    # The comparison can tell: a mirrored image is far from the reference.
    assert mean_difference(out.fliphor(), reference) > 15


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_applies_before_crop_on_the_full_resolution_path(orientation: int) -> None:
    # A crop covering the whole (displayed) image takes the full-decode path.
    reference = _upright_reference("Landscape", 120)
    rendered = render(
        corpus(f"orientation/Landscape_{orientation}.jpg"),
        crop=(0, 0, 1800, 1200),
        width=120,
        format="png",
    )
    out = decoded(rendered)
    assert (out.width, out.height) == (reference.width, reference.height)
    assert mean_difference(out, reference) < 6


@pytest.mark.parametrize(
    "relative",
    ["orientation/png-exif-orientation-6.png", "orientation/webp-exif-orientation-6.webp"],
)
def test_exif_orientation_in_png_and_webp(relative: str) -> None:
    source = pyvips.Image.new_from_buffer(corpus(relative), "").copy_memory()
    rendered = render(corpus(relative), format="png")
    out = decoded(rendered)
    upright = source.rot("d90")  # orientation 6 = rotate 90 degrees clockwise to display
    assert (out.width, out.height) == (source.height, source.width)
    assert mean_difference(out, upright) < 2
    assert not out.get_typeof("orientation") or out.get("orientation") == 1


def test_metadata_is_stripped_unless_asked_to_keep_it() -> None:
    data = corpus("orientation/Landscape_6.jpg")
    stripped = decoded(render(data, width=60))
    assert not stripped.get_typeof("exif-data")
    assert not stripped.get_typeof("icc-profile-data")
    kept = decoded(render(data, width=60, strip=False))
    assert kept.get_typeof("exif-data")
    # The kept EXIF must not turn the already upright pixels a second time.
    assert not kept.get_typeof("orientation") or kept.get("orientation") == 1
    assert (kept.width, kept.height) == (60, 40)


# --------------------------------------------------------------------------- fit modes


@pytest.mark.parametrize(
    ("fields", "size"),
    [
        ({"width": 100, "height": 100, "fit": "cover"}, (100, 100)),
        ({"width": 100, "height": 100, "fit": "contain"}, (100, 100)),
        ({"width": 100, "height": 100, "fit": "fill"}, (100, 100)),
        ({"width": 100, "height": 100, "fit": "inside"}, (100, 50)),
        ({"width": 100, "height": 100, "fit": "outside"}, (200, 100)),
        ({"width": 100}, (100, 50)),
        ({"height": 40}, (80, 40)),
        ({}, (400, 200)),
        ({"width": 100, "dpr": 2.0}, (200, 100)),
        ({"width": 50, "height": 50, "dpr": 3.0}, (150, 150)),
    ],
)
def test_fit_modes_give_the_sharp_sizes(fields: dict[str, Any], size: tuple[int, int]) -> None:
    rendered = render(halves(400, 200), **fields)
    out = decoded(rendered)
    assert (rendered.width, rendered.height) == size == (out.width, out.height)


def test_cover_crops_while_fill_and_inside_keep_everything() -> None:
    # Four 100 px stripes: red, green, blue, yellow.
    data = png(blocks([(RED, 100, 200), (GREEN, 100, 200), (BLUE, 100, 200), (YELLOW, 100, 200)]))
    cover = decoded(render(data, width=100, height=100, fit="cover", format="png"))
    # Scaled to 200x100, the middle 100 px hold the green and blue stripes only.
    assert near(pixel(cover, 5, 50)[:3], GREEN) and near(pixel(cover, 94, 50)[:3], BLUE)
    fill = decoded(render(data, width=100, height=100, fit="fill", format="png"))
    # Stretched, not cropped: all four stripes, 25 px each.
    stripes = [pixel(fill, x, 50)[:3] for x in (10, 37, 62, 90)]
    assert all(near(s, c) for s, c in zip(stripes, (RED, GREEN, BLUE, YELLOW), strict=True))
    inside = decoded(render(data, width=100, height=100, fit="inside", format="png"))
    assert (inside.width, inside.height) == (100, 50)
    assert near(pixel(inside, 3, 25)[:3], RED) and near(pixel(inside, 96, 25)[:3], YELLOW)


def test_contain_letterboxes_white_for_jpeg_and_transparent_for_png() -> None:
    data = png(solid(400, 200, RED))
    jpeg = decoded(render(data, width=100, height=100, fit="contain", format="jpeg"))
    assert (jpeg.width, jpeg.height, jpeg.bands) == (100, 100, 3)
    assert near(pixel(jpeg, 50, 5), WHITE)  # the bar above
    assert near(pixel(jpeg, 50, 50), RED)
    assert near(pixel(jpeg, 50, 94), WHITE)  # the bar below
    out = decoded(render(data, width=100, height=100, fit="contain", format="png"))
    assert out.bands == 4
    assert pixel(out, 50, 5)[3] == 0
    assert pixel(out, 50, 50) == (*RED, 255)


def test_contain_uses_the_background_and_gravity() -> None:
    data = png(solid(400, 200, RED))
    out = decoded(
        render(
            data,
            width=100,
            height=100,
            fit="contain",
            gravity="n",
            background=(0, 255, 0, 255),
            format="png",
        )
    )
    assert pixel(out, 50, 10)[:3] == RED  # placed at the top
    assert pixel(out, 50, 90)[:3] == GREEN


@pytest.mark.parametrize(
    ("fields", "size"),
    [
        ({"width": 800, "height": 800, "fit": "cover"}, (200, 200)),  # box aspect, no upscale
        ({"width": 800, "height": 400, "fit": "cover"}, (400, 200)),
        ({"width": 800, "height": 800, "fit": "contain"}, (400, 400)),
        ({"width": 800, "height": 800, "fit": "inside"}, (400, 200)),
        ({"width": 800, "height": 800, "fit": "outside"}, (400, 200)),
        ({"width": 800, "height": 100, "fit": "fill"}, (400, 100)),
        ({"width": 800}, (400, 200)),
        ({"width": 800, "height": 800, "fit": "cover", "enlarge": True}, (800, 800)),
        ({"width": 800, "enlarge": True}, (800, 400)),
        ({"width": 800, "height": 100, "fit": "fill", "enlarge": True}, (800, 100)),
    ],
)
def test_without_enlarge_nothing_is_scaled_up(
    fields: dict[str, Any], size: tuple[int, int]
) -> None:
    rendered = render(halves(400, 200), **fields)
    assert (rendered.width, rendered.height) == size


def test_contain_without_enlarge_pads_the_unscaled_image() -> None:
    out = decoded(
        render(png(solid(400, 200, RED)), width=800, height=800, fit="contain", format="jpeg")
    )
    assert (out.width, out.height) == (400, 400)
    assert near(pixel(out, 200, 10), WHITE)
    assert near(pixel(out, 200, 200), RED)


def test_output_is_clamped_to_the_maximum_dimension() -> None:
    options = TransformOptions(max_output_dimension=500)
    data = png(solid(1000, 100, RED))
    rendered = transform(data, spec(), NONE, options)  # no size: the source size, clamped
    assert (rendered.width, rendered.height) == (500, 50)
    padded = transform(data, spec(padding=(0, 10, 0, 10)), NONE, options)
    assert padded.width == 500
    assert padded.height == 48  # the frame (480 wide) keeps the aspect ratio
    tall = transform(png(solid(10, 100, RED)), spec(width=100, enlarge=True), NONE, options)
    assert (tall.width, tall.height) == (50, 500)


# --------------------------------------------------------------------------- geometry (pure)


def test_plan_resize_rules() -> None:
    big = 10_000
    assert plan_resize(400, 200, 100, 100, "cover", False, big, big) == ResizePlan(
        200, 100, 100, 100, "cover"
    )
    assert plan_resize(400, 200, 100, 100, "contain", False, big, big) == ResizePlan(
        100, 50, 100, 100, "contain"
    )
    # Rounding never produces an empty side.
    assert plan_resize(10_000, 1, 100, 0, "cover", False, big, big).height == 1
    # Clamped sizes stay within the limit on both axes.
    plan = plan_resize(3000, 2000, 0, 0, "cover", False, 1000, 500)
    assert (plan.width, plan.height) == (750, 500)
    assert plan.box_width <= 1000 and plan.box_height <= 500


def test_compass_and_focus_offsets() -> None:
    assert compass_offset("center", 100, 50) == (50, 25)
    assert compass_offset("nw", 100, 50) == (0, 0)
    assert compass_offset("se", 100, 50) == (100, 50)
    assert compass_offset("e", 100, 50) == (100, 25)
    assert compass_offset("s", 100, 50) == (50, 50)
    # A focal point near an edge pushes the box to that edge, not past it.
    assert focus_offset(390, 10, 400, 100, 100, 100) == (300, 0)
    assert focus_offset(200, 50, 400, 100, 100, 100) == (150, 0)


# --------------------------------------------------------------------------- gravity


@pytest.mark.parametrize(
    ("gravity", "colour"),
    [("w", RED), ("e", BLUE), ("nw", RED), ("sw", RED), ("ne", BLUE), ("se", BLUE)],
)
def test_horizontal_gravity_keeps_the_named_side(gravity: str, colour: tuple[int, ...]) -> None:
    out = decoded(render(halves(200, 100), width=50, height=50, gravity=gravity, format="png"))
    assert (out.width, out.height) == (50, 50)
    # Away from the other half's edge, which the resampling kernel softens.
    for x, y in ((0, 0), (40, 0), (0, 49), (40, 49), (25, 25)):
        assert near(pixel(out, x, y)[:3], colour, 20)
    assert not near(pixel(out, 20, 25)[:3], BLUE if colour == RED else RED, 100)


@pytest.mark.parametrize(("gravity", "colour"), [("n", GREEN), ("s", YELLOW)])
def test_vertical_gravity_keeps_the_named_side(gravity: str, colour: tuple[int, ...]) -> None:
    data = png(blocks([(GREEN, 100, 100)], [(YELLOW, 100, 100)]))
    out = decoded(render(data, width=50, height=50, gravity=gravity, format="png"))
    for x, y in (
        ((0, 0), (49, 0), (0, 40), (49, 40))
        if gravity == "n"
        else ((0, 9), (49, 9), (0, 49), (49, 49))
    ):
        assert near(pixel(out, x, y)[:3], colour, 20)


def test_centre_gravity_keeps_the_middle() -> None:
    out = decoded(render(halves(300, 100), width=100, height=100, format="png"))
    assert pixel(out, 0, 50)[:3] == RED
    assert pixel(out, 99, 50)[:3] == BLUE


def _busy_right() -> bytes:
    """Flat grey on the left two thirds, a high-contrast checkerboard on the right third."""
    grey = solid(200, 100, (128, 128, 128))
    dark, light = solid(4, 4, (0, 0, 0)), solid(4, 4, (255, 255, 0))
    tile = pyvips.Image.arrayjoin([dark, light, light, dark], across=2)
    checker = tile.replicate(13, 13).crop(0, 0, 100, 100)
    return png(grey.join(checker, "horizontal"))


@pytest.mark.parametrize("gravity", ["smart", "entropy"])
def test_smart_and_entropy_gravity_find_the_detail(gravity: str) -> None:
    out = decoded(render(_busy_right(), width=100, height=100, gravity=gravity, format="png"))
    assert (out.width, out.height) == (100, 100)
    # The busy part is on the right: the kept square holds no flat grey at its right edge.
    assert out.crop(90, 0, 10, 100).deviate() > 50
    centred = decoded(render(_busy_right(), width=100, height=100, format="png"))
    assert centred.crop(0, 0, 10, 100).deviate() < 1  # and the centre crop would not


def test_focal_point_gravity_keeps_the_point() -> None:
    data = halves(400, 100)
    right = decoded(render(data, width=100, height=100, gravity="fp", focus=(0.9, 0.5)))
    assert near(pixel(right, 0, 50), BLUE) and near(pixel(right, 99, 50), BLUE)
    left = decoded(render(data, width=100, height=100, gravity="fp", focus=(0.1, 0.5)))
    assert near(pixel(left, 0, 50), RED) and near(pixel(left, 99, 50), RED)


def test_focal_point_is_on_the_source_even_after_a_crop() -> None:
    colours = [RED, GREEN, BLUE, YELLOW, (255, 0, 255), (0, 255, 255), WHITE, (0, 0, 0)]
    stripes = png(blocks([(c, 50, 100) for c in colours]))  # eight 50 px stripes
    # Crop to stripes 4-7; the focus (source x = 225) is in stripe 4.
    out = decoded(
        render(
            stripes,
            crop=(200, 0, 200, 100),
            width=50,
            height=100,
            gravity="fp",
            focus=(0.5625, 0.5),
            format="png",
        )
    )
    assert (out.width, out.height) == (50, 100)
    assert pixel(out, 0, 50)[:3] == (255, 0, 255) == pixel(out, 49, 50)[:3]


# --------------------------------------------------------------------------- crop and trim


def _quadrants() -> bytes:
    return png(blocks([(RED, 100, 100), (GREEN, 100, 100)], [(BLUE, 100, 100), (YELLOW, 100, 100)]))


def test_crop_takes_source_pixels_before_resizing() -> None:
    out = decoded(render(_quadrants(), crop=(100, 0, 100, 100), format="png"))
    assert (out.width, out.height) == (100, 100)
    assert out.extract_band(1).min() == 255 and out.extract_band(0).max() == 0  # all green
    resized = render(_quadrants(), crop=(0, 100, 100, 100), width=20, format="png")
    assert (resized.width, resized.height) == (20, 20)
    assert pixel(decoded(resized), 10, 10)[:3] == BLUE


def test_crop_is_clipped_to_the_image() -> None:
    rendered = render(_quadrants(), crop=(150, 150, 500, 500), format="png")
    assert (rendered.width, rendered.height) == (50, 50)
    assert pixel(decoded(rendered), 25, 25)[:3] == YELLOW


def test_crop_outside_the_image_is_an_invalid_option() -> None:
    with pytest.raises(InvalidOption) as caught:
        render(_quadrants(), crop=(200, 0, 10, 10))
    assert caught.value.option == "crop" and caught.value.status == 400


def test_trim_removes_a_uniform_border() -> None:
    framed = solid(100, 80, WHITE).insert(solid(60, 40, RED), 20, 20)
    out = decoded(render(png(framed), trim=10.0, format="png"))
    assert (out.width, out.height) == (60, 40)
    assert out.extract_band(0).min() > 240 and out.extract_band(1).max() < 15


def test_trim_removes_a_transparent_border() -> None:
    framed = solid(100, 80, (0, 0, 0, 0)).insert(solid(30, 20, (0, 0, 0, 255)), 10, 50)
    rendered = render(png(framed), trim=1.0)
    assert (rendered.width, rendered.height) == (30, 20)


def test_trim_keeps_a_uniform_image_and_precedes_resizing() -> None:
    assert render(png(solid(50, 50, RED)), trim=10.0).width == 50
    framed = solid(200, 200, WHITE).insert(solid(100, 50, RED), 50, 50)
    rendered = render(png(framed), trim=10.0, width=50)
    assert (rendered.width, rendered.height) == (50, 25)


# --------------------------------------------------------------------------- rotate, flip


def test_rotate_turns_clockwise_after_resizing() -> None:
    rendered = render(halves(200, 100), width=100, rotate=90, format="png")
    out = decoded(rendered)
    assert (out.width, out.height) == (50, 100)  # the 100x50 result, turned
    assert pixel(out, 25, 5)[:3] == RED  # the left side is now at the top
    assert pixel(out, 25, 94)[:3] == BLUE
    upside_down = decoded(render(halves(200, 100), rotate=180, format="png"))
    assert pixel(upside_down, 5, 50)[:3] == BLUE


def test_flips() -> None:
    mirrored = decoded(render(halves(), flip="h", format="png"))
    assert pixel(mirrored, 5, 50)[:3] == BLUE and pixel(mirrored, 194, 50)[:3] == RED
    data = png(blocks([(GREEN, 100, 50)], [(YELLOW, 100, 50)]))
    flipped = decoded(render(data, flip="v", format="png"))
    assert pixel(flipped, 50, 5)[:3] == YELLOW
    both = decoded(render(_quadrants(), flip="hv", format="png"))
    assert pixel(both, 10, 10)[:3] == YELLOW and pixel(both, 190, 190)[:3] == RED


# --------------------------------------------------------------------------- blur, sharpen


def _edge() -> bytes:
    return png(blocks([((40, 40, 40), 50, 50), ((200, 200, 200), 50, 50)]))


def test_blur_softens_and_sharpen_steepens_an_edge() -> None:
    plain = decoded(render(_edge(), format="png"))
    blurred = decoded(render(_edge(), blur=3.0, format="png"))
    assert plain.getpoint(47, 25)[0] == 40
    assert blurred.getpoint(47, 25)[0] > 60  # the bright side bleeds over the edge
    soft = decoded(render(_edge(), blur=2.0, format="png"))
    sharpened = decoded(render(_edge(), blur=2.0, sharpen=2.0, format="png"))
    # Sharpening overshoots on both sides of the (blurred) edge.
    assert sharpened.crop(40, 0, 20, 50).deviate() > soft.crop(40, 0, 20, 50).deviate()
    assert render(_edge(), sharpen=50.0).width == 100  # beyond libvips' range: clamped


def test_blur_does_not_darken_transparent_edges() -> None:
    spot = solid(60, 60, (0, 0, 0, 0)).insert(solid(20, 20, (255, 255, 255, 255)), 20, 20)
    out = decoded(render(png(spot), blur=3.0, format="png"))
    halo = pixel(out, 18, 30)
    assert 0 < halo[3] < 255
    assert halo[0] > 240  # premultiplied: the halo stays white, not grey


# --------------------------------------------------------------------------- background, padding


def _transparent_dot() -> bytes:
    return png(solid(40, 40, (0, 0, 0, 0)).insert(solid(10, 10, (*BLUE, 255)), 15, 15))


def test_alpha_is_flattened_onto_white_for_jpeg_or_onto_the_background() -> None:
    white = decoded(render(_transparent_dot(), format="jpeg"))
    assert white.bands == 3
    assert near(pixel(white, 2, 2), WHITE) and near(pixel(white, 20, 20), BLUE, 30)
    red = decoded(render(_transparent_dot(), format="jpeg", background=(255, 0, 0, 255)))
    assert near(pixel(red, 2, 2), RED)


def test_an_opaque_background_fills_transparency_in_alpha_formats() -> None:
    out = decoded(render(_transparent_dot(), format="png", background=(0, 255, 0, 255)))
    assert pixel(out, 2, 2) == (*GREEN, 255) and pixel(out, 20, 20) == (*BLUE, 255)
    kept = decoded(render(_transparent_dot(), format="png"))
    assert pixel(kept, 2, 2)[3] == 0


def test_padding_is_css_pixels_times_dpr() -> None:
    rendered = render(
        png(solid(100, 50, RED)), width=40, dpr=2.0, padding=(1, 2, 3, 4), format="jpeg"
    )
    out = decoded(rendered)
    assert (out.width, out.height) == (80 + 4 + 8, 40 + 2 + 6)
    # JPEG's 16x16 chroma blocks tint the white next to red a little.
    assert near(pixel(out, 0, 0), WHITE, 30) and near(pixel(out, 50, 25), RED)
    transparent = decoded(render(png(solid(40, 20, RED)), padding=(5, 5, 5, 5), format="png"))
    assert pixel(transparent, 0, 0)[3] == 0 and pixel(transparent, 20, 15) == (*RED, 255)
    coloured = decoded(
        render(
            png(solid(40, 20, RED)), padding=(5, 5, 5, 5), background=(0, 0, 255, 255), format="png"
        )
    )
    assert pixel(coloured, 0, 0)[:3] == BLUE


# --------------------------------------------------------------------------- colour


@pytest.mark.parametrize(
    "relative",
    [
        "jpeg/icc-display-p3-900x600.jpg",
        "jpeg/icc-adobe-rgb-a98.jpg",
        "jpeg/cmyk-swop-icc.jpg",
        "jpeg/icc-xyb-jpegli.jpg",
    ],
)
@pytest.mark.parametrize("path", ["shrink-on-load", "full"])
def test_embedded_profiles_are_converted_to_srgb(relative: str, path: str) -> None:
    data = corpus(relative)
    source = pyvips.Image.new_from_buffer(data, "")
    # The reference decodes at the scale the pipeline's loader uses, so only colour differs.
    shrink = jpeg_shrink(max(source.width, source.height) / 100) if path != "full" else 1
    loaded = pyvips.Image.new_from_buffer(data, "", shrink=shrink)
    expected = loaded.icc_transform("srgb", embedded=True, intent="perceptual")
    expected = expected.thumbnail_image(100, height=100).copy_memory()
    untouched = source.thumbnail_image(100, height=100).copy_memory()
    fields: dict[str, Any] = {
        "width": expected.width,
        "height": expected.height,
        "fit": "fill",
        "format": "png",
    }
    if path == "full":
        fields["crop"] = (0, 0, source.width, source.height)
    out = decoded(render(data, **fields))
    assert (out.bands, out.interpretation, out.format) == (3, "srgb", "uchar")
    assert (out.width, out.height) == (expected.width, expected.height)
    assert mean_difference(out, expected) < 2.5
    if source.interpretation != "cmyk":
        # The check can fail: the unconverted pixels are measurably different.
        assert mean_difference(out, untouched) > mean_difference(out, expected) + 1


@pytest.mark.parametrize(
    "relative",
    [
        "jpeg/cmyk-ycck-no-icc.jpg",
        "jpeg/grayscale.jpg",
        "jpeg/grayscale-icc-dotgain.jpg",
        "png/rgb-16bit.png",
        "png/grey-alpha-16bit-pngsuite-bggn4a16.png",
        "tiff/rgb-16bit.tiff",
        "tiff/ccitt-g3-fax-2464x3248.tif",
    ],
)
def test_every_source_leaves_as_8_bit_srgb(relative: str) -> None:
    for fields in ({"width": 32}, {"width": 32, "crop": (0, 0, 10_000, 10_000)}):
        out = decoded(render(corpus(relative), format="png", **fields))
        assert out.interpretation == "srgb" and out.format == "uchar"
        assert out.bands in (3, 4)
    cmyk = decoded(render(corpus("jpeg/cmyk-ycck-no-icc.jpg"), format="jpeg"))
    assert cmyk.bands == 3 and cmyk.interpretation == "srgb"


# --------------------------------------------------------------------------- output formats


@pytest.mark.parametrize(
    ("fmt", "magic", "content_type"),
    [
        ("jpeg", is_jpeg, "image/jpeg"),
        ("png", is_png, "image/png"),
        ("webp", is_webp, "image/webp"),
        ("avif", is_avif, "image/avif"),
        ("gif", is_gif, "image/gif"),
    ],
)
def test_each_output_format(fmt: str, magic: Any, content_type: str) -> None:
    rendered = render(halves(200, 100), width=64, format=fmt)
    assert magic(rendered.data)
    assert (rendered.format, rendered.content_type) == (fmt, content_type)
    out = decoded(rendered)
    assert (out.width, out.height, rendered.width, rendered.height, rendered.pages) == (
        64,
        32,
        64,
        32,
        1,
    )
    assert near(pixel(out, 4, 16)[:3], RED, 40) and near(pixel(out, 60, 16)[:3], BLUE, 40)


def test_quality_comes_from_the_spec_or_the_configured_default() -> None:
    photo = pyvips.Image.gaussnoise(300, 200, mean=128, sigma=40).cast("uchar")
    data = png(photo.bandjoin([photo, photo]).copy(interpretation="srgb"))
    low, high = render(data, format="jpeg", quality=20), render(data, format="jpeg", quality=95)
    assert len(low.data) < len(high.data) * 0.6
    default_low = transform(data, spec(format="jpeg"), NONE, TransformOptions(jpeg_quality=20))
    assert len(default_low.data) == len(low.data)
    webp_low = transform(data, spec(format="webp"), NONE, TransformOptions(webp_quality=20))
    assert len(webp_low.data) < len(render(data, format="webp", quality=95).data)


def test_progressive_jpeg_is_written_on_request() -> None:
    baseline = render(halves(), format="jpeg")
    progressive = render(halves(), format="jpeg", progressive=True)
    assert b"\xff\xc2" in progressive.data  # SOF2: progressive DCT
    assert b"\xff\xc2" not in baseline.data and b"\xff\xc0" in baseline.data


@pytest.mark.parametrize(
    ("relative", "fmt"),
    [
        ("png/rgba-8bit.png", "png"),
        ("webp/lossy.webp", "webp"),
        ("gif/static.gif", "gif"),
        ("avif/small-300x400.avif", "avif"),
        ("jpeg/progressive.jpg", "jpeg"),
        ("tiff/rgb-lzw.tif", "jpeg"),  # not writable, opaque
        ("svg/simple-logo.svg", "png"),  # not writable, alpha
        ("malformed/png-bytes-named.jpg", "png"),  # the bytes decide, not the name
    ],
)
def test_no_format_keeps_the_source_format_when_writable(relative: str, fmt: str) -> None:
    assert render(corpus(relative), width=32).format == fmt


def test_resolve_auto_format() -> None:
    both = frozenset({"avif", "webp"})
    assert resolve_auto_format(both, alpha=False, animated=False) == "avif"
    assert resolve_auto_format(both, alpha=True, animated=False) == "avif"
    assert resolve_auto_format(frozenset({"webp"}), alpha=True, animated=False) == "webp"
    assert resolve_auto_format(NONE, alpha=True, animated=False) == "png"
    assert resolve_auto_format(NONE, alpha=False, animated=False) == "jpeg"
    assert resolve_auto_format(both, alpha=False, animated=True) == "webp"
    assert resolve_auto_format(frozenset({"avif"}), alpha=False, animated=True) == "gif"


def test_auto_format_negotiates_from_accept_and_alpha() -> None:
    opaque, alpha = halves(), _transparent_dot()
    assert render(opaque, frozenset({"avif", "webp"}), format="auto").format == "avif"
    assert render(opaque, frozenset({"webp"}), format="auto").format == "webp"
    assert render(opaque, format="auto").format == "jpeg"
    assert render(alpha, format="auto").format == "png"
    animated = corpus("gif/animated-cogs-5-frames.gif")
    as_webp = render(animated, frozenset({"avif", "webp"}), format="auto", width=40)
    assert (as_webp.format, as_webp.pages) == ("webp", 5) and is_webp(as_webp.data)
    as_gif = render(animated, format="auto", width=40)
    assert (as_gif.format, as_gif.pages) == ("gif", 5)
    # The accepted set only matters for auto.
    assert render(opaque, frozenset({"avif", "webp"}), format="png").format == "png"


# --------------------------------------------------------------------------- animation


def test_animated_gif_stays_animated_and_is_resized_per_frame() -> None:
    rendered = render(corpus("gif/animated-cogs-5-frames.gif"), width=40, height=40)
    assert (rendered.format, rendered.pages, rendered.width, rendered.height) == ("gif", 5, 40, 40)
    frames = decoded(rendered, n=-1)
    assert (frames.width, frames.height, frames.get("page-height")) == (40, 200, 40)
    assert len(frames.get("delay")) == 5


def test_animated_webp_keeps_its_frames() -> None:
    rendered = render(corpus("webp/animated-99-frames-13x169.webp"), height=100)
    assert (rendered.format, rendered.pages, rendered.height) == ("webp", 99, 100)
    assert rendered.width == 8  # 13 * 100 / 169, rounded
    as_gif = render(corpus("webp/animated-rotating-squares-9-frames.webp"), format="gif", width=40)
    assert (as_gif.format, as_gif.pages, as_gif.width) == ("gif", 9, 40)


def test_animation_steps_apply_to_every_frame() -> None:
    data = corpus("gif/animated-cogs-5-frames.gif")  # 85x77
    rotated = render(data, rotate=90, format="webp")
    assert (rotated.width, rotated.height, rotated.pages) == (77, 85, 5)
    cropped = render(data, crop=(10, 10, 30, 20), format="webp")
    assert (cropped.width, cropped.height, cropped.pages) == (30, 20, 5)
    padded = render(data, width=40, height=40, fit="contain", padding=(1, 2, 3, 4), format="webp")
    assert (padded.width, padded.height, padded.pages) == (46, 44, 5)
    smart = render(data, width=30, height=30, gravity="smart", format="webp")
    assert (smart.width, smart.height, smart.pages) == (30, 30, 5)
    trimmed = render(data, trim=5.0, flip="v", blur=1.0, format="webp")
    assert trimmed.pages == 5


def test_still_output_of_an_animation_is_its_first_frame() -> None:
    data = corpus("gif/animated-iss634-42-frames.gif")
    first = pyvips.Image.new_from_buffer(data, "").copy_memory()  # page 0
    rendered = render(data, format="png")
    assert rendered.pages == 1 and (rendered.width, rendered.height) == (245, 245)
    assert mean_difference(decoded(rendered), first) < 1
    assert render(data, format="avif", width=50).pages == 1


def test_still_of_a_multi_page_source_is_one_page_in_a_multi_page_format() -> None:
    # A two-page TIFF is not an animation: its first page, enlarged to exactly twice its
    # height, must still be written as one page by the savers that split by page-height.
    pages = pyvips.Image.arrayjoin([solid(40, 30, (200, 10, 10)), solid(40, 30, (10, 200, 10))],
                                   across=1).copy()  # fmt: skip
    pages.set_type(pyvips.GValue.gint_type, "page-height", 30)
    tiff = bytes(pages.tiffsave_buffer())
    # What the saver relies on: a single decoded page carries no page-height of its own.
    sources = (tiff, corpus("gif/animated-cogs-5-frames.gif"),
               corpus("webp/animated-rotating-squares-9-frames.webp"))  # fmt: skip
    for source in sources:
        assert pyvips.Image.new_from_buffer(source, "").get_typeof("page-height") == 0
    for fmt in ("webp", "gif"):
        still = render(tiff, format=fmt, width=80, enlarge=True)
        assert (still.pages, still.width, still.height) == (1, 80, 60)
        written = pyvips.Image.new_from_buffer(still.data, "", n=-1)
        assert (written.width, written.height) == (80, 60)
        assert get_int(written, "n-pages", 1) == 1


# --------------------------------------------------------------------------- probe


def test_probe_reads_the_header_only() -> None:
    assert probe(corpus("orientation/Landscape_6.jpg"), OPTIONS) == ImageInfo(
        width=1800, height=1200, format="jpeg", orientation=6, alpha=False, pages=1
    )
    assert probe(corpus("gif/animated-cogs-5-frames.gif"), OPTIONS).pages == 5
    assert probe(corpus("png/rgba-8bit.png"), OPTIONS).alpha is True
    assert probe(corpus("avif/alpha.avif"), OPTIONS).format == "avif"
    assert probe(corpus("heic/hevc-256x256.heic"), OPTIONS).format == "heif"
    started = time.perf_counter()
    bomb = probe(corpus("bombs/png-65536x65536-uint32-limit.png"), OPTIONS)
    assert (bomb.width, bomb.height) == (65536, 65536)
    assert time.perf_counter() - started < 0.2
    with pytest.raises(UnsupportedFormat):
        probe(corpus("jxl/photo-dice.jxl"), OPTIONS)
    with pytest.raises(UndecodableImage):
        probe(corpus("malformed/broken-ihdr.png"), OPTIONS)


# --------------------------------------------------------------------------- speed and threads


def test_shrink_on_load_decodes_at_the_smallest_jpeg_scale_that_covers_the_target() -> None:
    data = corpus("orientation/Landscape_6.jpg")  # stored 1200x1800, displayed 1800x1200
    header = read_header(data, OPTIONS)
    state = decode(data, header, spec(width=300), "webp", False, OPTIONS)
    # 1800 -> 300 is a factor of 6: the decoder scales by 1/4, as stored (not yet upright).
    assert (state.image.width, state.image.height) == (300, 450)
    assert not state.oriented and state.plan is None
    assert state.planned is not None and (state.planned.width, state.planned.height) == (300, 200)
    rendered = transform(data, spec(width=300), NONE, OPTIONS)
    assert (rendered.width, rendered.height) == (300, 200)
    assert (decoded(rendered).width, decoded(rendered).height) == (300, 200)
    full = decode(data, header, spec(width=300, crop=(0, 0, 10, 10)), "webp", False, OPTIONS)
    assert (full.image.width, full.image.height) == (1200, 1800)  # as stored, unrotated
    assert not full.oriented and full.plan is None and full.planned is None


def test_jpeg_shrink_headroom_leaves_a_factor_of_two_for_resampling() -> None:
    data = corpus("orientation/Landscape_1.jpg")  # 1800x1200
    header = read_header(data, OPTIONS)
    roomy = replace(OPTIONS, jpeg_shrink_headroom=True)
    state = decode(data, header, spec(width=300), "jpeg", False, roomy)
    assert (state.image.width, state.image.height) == (900, 600)  # 1/2, not 1/4
    assert (transform(data, spec(width=300), NONE, roomy).width) == 300


@pytest.mark.parametrize(
    ("factor", "fast", "roomy"),
    [(1.0, 1, 1), (1.9, 1, 1), (2.0, 2, 1), (3.9, 2, 1), (4.0, 4, 2), (7.9, 4, 2),
     (8.0, 8, 4), (15.9, 8, 4), (16.0, 8, 8), (40.0, 8, 8)],
)  # fmt: skip
def test_jpeg_shrink_never_decodes_below_the_target(factor: float, fast: int, roomy: int) -> None:
    assert jpeg_shrink(factor) == fast
    assert jpeg_shrink(factor, headroom=True) == roomy



@pytest.mark.parametrize(
    ("relative", "loader", "nickname"),
    [
        ("jpeg/progressive.jpg", "VipsForeignLoadJpegBuffer", "jpegload_buffer"),
        ("png/rgb-16bit.png", "VipsForeignLoadPngBuffer", "pngload_buffer"),
        ("tiff/rgb-16bit.tiff", "VipsForeignLoadTiffBuffer", "tiffload_buffer"),
    ],
)
def test_the_pixels_are_decoded_by_the_loader_that_read_the_header(
    relative: str, loader: str, nickname: str
) -> None:
    data = corpus(relative)
    header = read_header(data, OPTIONS)
    assert header.loader == loader
    image = decode(data, header, spec(width=20), "png", False, OPTIONS).image
    assert image.get("vips-loader") == nickname
    image.copy_memory()  # the pixels decode
    # The decode opens the bytes with the header's loader; it does not search for one again.
    other = "VipsForeignLoadGifBuffer"
    with pytest.raises(pyvips.Error):
        decode(data, replace(header, loader=other), spec(width=20), "png", False, OPTIONS)
def test_webp_sources_are_scaled_while_decoding() -> None:
    data = pyvips.Image.black(1200, 800, bands=3).webpsave_buffer()
    header = read_header(data, OPTIONS)
    state = decode(data, header, spec(width=300), "webp", False, OPTIONS)
    assert (state.image.width, state.image.height) == (300, 200)


def test_parallel_transforms_match_sequential_ones() -> None:
    sources = [halves(200 + 10 * i, 100) for i in range(8)]
    specs = [spec(width=50 + i, format="webp" if i % 2 else "png") for i in range(8)]
    expected = [transform(d, s, NONE, OPTIONS).data for d, s in zip(sources, specs, strict=True)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(
                lambda pair: transform(pair[0], pair[1], NONE, OPTIONS).data,
                zip(sources, specs, strict=True),
            )
        )
    assert results == expected


def test_spec_is_not_modified() -> None:
    original = spec(width=100, height=50, rotate=90, padding=(1, 2, 3, 4))
    copy = replace(original)
    transform(halves(), original, NONE, OPTIONS)
    assert original == copy


def test_webp_effort_reaches_the_encoder() -> None:
    data = corpus("orientation/Landscape_1.jpg")
    fast = transform(data, spec(width=400, format="webp"), NONE, replace(OPTIONS, webp_effort=0))
    small = transform(data, spec(width=400, format="webp"), NONE, replace(OPTIONS, webp_effort=6))
    assert (fast.width, fast.height) == (small.width, small.height) == (400, 267)
    assert len(fast.data) > len(small.data)  # effort 0 writes bigger files
