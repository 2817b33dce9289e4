"""Every file of the test corpus either renders or fails with the right imgsrv error.

The corpus MANIFEST lists what libvips makes of each file; the expectations below are what
imgsrv must make of it. Bombs and malformed files are listed one by one, so that a file
added to the corpus without a decision here fails the completeness test.
"""

from __future__ import annotations

import csv
import time

import pytest
import pyvips

from imgsrv.errors import (
    ImageTooLarge,
    ImgsrvError,
    UndecodableImage,
    UnsupportedFormat,
)
from imgsrv.spec import TransformSpec
from imgsrv.transform import Rendered, TransformOptions, configure_vips, transform
from tests.corpus import IMAGES, MANIFEST

OK = None
Expected = type[ImgsrvError] | None

# Files with an outcome other than "renders", and the bombs and malformed files that do render.
EXPECTED: dict[str, Expected] = {
    "avif/animated-sequence.avifs": UnsupportedFormat,  # libvips has no AVIF sequence loader
    "svg/xxe-external-entity.svg": UndecodableImage,  # libxml2 refuses the external entities
    # Pixel limits, from the header, before any decoding.
    "bombs/avif-17000x17000.avif": ImageTooLarge,
    "bombs/gif-10000-frames-100x100.gif": ImageTooLarge,  # GIF out: animated, 10000 frames
    "bombs/jpeg-20000x14000.jpg": ImageTooLarge,
    "bombs/png-16384x16384-32kb.png": ImageTooLarge,
    "bombs/png-50000x50000-header-only.png": ImageTooLarge,
    "bombs/png-65536x65536-uint32-limit.png": ImageTooLarge,
    "bombs/svg-100000x100000-canvas.svg": ImageTooLarge,
    # Bombs that libvips defuses itself.
    "bombs/gif-frame-65535x65535.gif": UndecodableImage,  # "no frames in GIF"
    "bombs/svg-billion-laughs.svg": UndecodableImage,  # entity amplification refused
    "bombs/png-ztxt-decompression-dos.png": OK,  # the text chunk is never inflated in full
    # Malformed files.
    "malformed/broken-ihdr.png": UndecodableImage,
    "malformed/corrupt-header.jpg": UndecodableImage,
    "malformed/invalid-frame-data.gif": UndecodableImage,  # kept animated: bad frame 2 decoded
    "malformed/jpeg-bytes-named.png": OK,  # content sniffing ignores the name
    "malformed/junk-before-dqt.jpg": OK,  # a recovered warning, the picture is complete
    "malformed/one-byte.jpg": UnsupportedFormat,
    "malformed/png-bytes-named.jpg": OK,
    "malformed/random-after-jpeg-soi.jpg": UndecodableImage,
    "malformed/random-bytes.jpg": UnsupportedFormat,
    "malformed/truncated-progressive.jpg": UndecodableImage,
    "malformed/truncated.gif": UndecodableImage,
    "malformed/truncated.jpg": UndecodableImage,
    "malformed/truncated.png": UndecodableImage,
    "malformed/truncated.svgz": UnsupportedFormat,  # a broken gzip stream sniffs as nothing
    "malformed/webp-containing-svg-text.webp": OK,
    "malformed/zero-bytes.jpg": UnsupportedFormat,
}

CATEGORY_EXPECTED: dict[str, Expected] = {
    "jxl": UnsupportedFormat,  # no JPEG XL loader in this libvips
    "heic": UnsupportedFormat,  # HEVC headers open, pixels cannot be decoded
}

MAGIC = {
    "jpeg": lambda d: d[:3] == b"\xff\xd8\xff",
    "png": lambda d: d[:8] == b"\x89PNG\r\n\x1a\n",
    "gif": lambda d: d[:4] == b"GIF8",
    "webp": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP",
    "avif": lambda d: d[4:12] == b"ftypavif",
}


def _manifest() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    with MANIFEST.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = _manifest()
PATHS = [row["path"] for row in ROWS]
CATEGORIES = {row["path"]: row["category"] for row in ROWS}


def expected_for(path: str) -> Expected:
    if path in EXPECTED:
        return EXPECTED[path]
    return CATEGORY_EXPECTED.get(CATEGORIES[path], OK)


@pytest.fixture(scope="module", autouse=True)
def _vips() -> None:
    configure_vips(1)


def _run(data: bytes, spec: TransformSpec) -> tuple[Rendered | ImgsrvError, float]:
    started = time.perf_counter()
    try:
        result: Rendered | ImgsrvError = transform(data, spec, frozenset(), TransformOptions())
    except ImgsrvError as exc:  # anything else fails the test with its traceback
        result = exc
    return result, time.perf_counter() - started


def test_every_bomb_and_malformed_file_has_a_decision() -> None:
    undecided = [p for p in PATHS if CATEGORIES[p] in ("bombs", "malformed") and p not in EXPECTED]
    assert not undecided
    assert len(PATHS) > 100


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", PATHS)
def test_default_thumbnail(path: str) -> None:
    data = (IMAGES / path).read_bytes()
    result, elapsed = _run(data, TransformSpec(source=path, width=256))
    assert elapsed < 5.0
    expected = expected_for(path)
    if expected is None:
        assert isinstance(result, Rendered), f"{path}: {result!r}"
        assert MAGIC[result.format](result.data)
        out = pyvips.Image.new_from_buffer(result.data, "")
        assert (out.width, out.height) == (result.width, result.height)
        assert 1 <= result.width <= 256
        assert result.pages == max(1, out.get("n-pages") if out.get_typeof("n-pages") else 1)
    else:
        assert isinstance(result, expected), f"{path}: {result!r}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", PATHS)
def test_every_step_on_the_full_decode_path(path: str) -> None:
    spec = TransformSpec(
        source=path,
        width=64,
        height=64,
        crop=(0, 0, 300, 300),
        trim=10.0,
        rotate=90,
        flip="h",
        blur=1.0,
        sharpen=1.0,
        padding=(2, 2, 2, 2),
        background=(10, 20, 30, 255),
        format="png",
    )
    data = (IMAGES / path).read_bytes()
    result, elapsed = _run(data, spec)
    assert elapsed < 5.0
    if isinstance(result, Rendered):
        assert MAGIC["png"](result.data)
        assert result.width <= 68 and result.height <= 68
    # Limits and formats do not depend on the path taken.
    if expected_for(path) in (UnsupportedFormat,):
        assert isinstance(result, UnsupportedFormat)
