"""The libvips ceiling: the ``miss`` transform in a tight loop, source bytes in memory.

``python -m bench.harness.ceiling --source FILE --format jpeg --seconds 20 --start-at T
--out FILE`` runs one process; the runner starts as many as imgsrv has workers, so both
sides have the same processes on the same cores. Each process:

* sets libvips up as an imgsrv worker does (operation cache off, one thread per pipeline);
* decodes with shrink-on-load (``thumbnail_buffer``), exactly the call, target size and
  loader options imgsrv's pipeline makes for ``w:300``, and encodes with the same saver
  arguments (JPEG q80 with optimised Huffman tables, WebP q80, metadata stripped);
* waits for a common start time, loops until the end time, and writes the per-transform
  times (JSON) for the runner to merge.

Two modes: ``--impl vips`` (the ceiling: bare pyvips calls, nothing else) and
``--impl pipeline`` (``imgsrv.transform.transform`` itself, so the gap between the ceiling
and imgsrv splits into pipeline cost and HTTP/server cost).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyvips

JPEG_QUALITY = 80
WEBP_QUALITY = 80
WIDTH = 300


def configure() -> None:
    """libvips as an imgsrv worker runs it (see imgsrv.transform.vips.configure_vips)."""
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.concurrency_set(1)


def target_height(data: bytes, width: int) -> int:
    """The height imgsrv plans for ``w:{width}``: the source's aspect ratio, rounded."""
    header = pyvips.Image.new_from_buffer(data, "")
    return max(1, round(header.height * width / header.width))


def vips_transform(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """Shrink-on-load to ``width`` x ``height`` and encode: the whole libvips work of a miss."""
    image = pyvips.Image.thumbnail_buffer(
        data, width, height=height, size="force", option_string="fail_on=error"
    )
    saved: Any
    if fmt == "jpeg":
        saved = image.jpegsave_buffer(
            Q=JPEG_QUALITY, interlace=False, optimize_coding=True, keep="none"
        )
    else:
        saved = image.webpsave_buffer(Q=WEBP_QUALITY, keep="none")
    return bytes(saved)


def make_transform(impl: str, data: bytes, fmt: str, width: int) -> Callable[[bytes], bytes]:
    if impl == "pipeline":
        return _pipeline_call(fmt, width)
    height = target_height(data, width)
    return lambda source: vips_transform(source, fmt, width, height)


def _pipeline_call(fmt: str, width: int) -> Callable[[bytes], bytes]:
    """imgsrv's own pure transform for ``w:{width}`` in ``fmt``, spec parsed from a URL."""
    from imgsrv.config import load_settings
    from imgsrv.transform import TransformOptions, transform
    from imgsrv.urls import parse_path

    # Default settings (not this process's IMGSRV_* environment): the server's defaults.
    settings = load_settings(env={})
    spec = parse_path(f"/_/w:{width}/f:{fmt}/plain/local:%2F%2Fx".encode(), settings).spec
    options = TransformOptions(jpeg_quality=JPEG_QUALITY, webp_quality=WEBP_QUALITY)
    return lambda data: bytes(transform(data, spec, frozenset(), options).data)


def run(
    data: bytes, call: Callable[[bytes], bytes], start_at: float, seconds: float
) -> dict[str, Any]:
    """Warm up, wait for ``start_at`` (time.time()), loop for ``seconds``; the timings."""
    for _ in range(3):
        output = call(data)
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    times: list[float] = []
    begin = time.perf_counter()
    end = begin + seconds
    now = begin
    while now < end:
        output = call(data)
        after = time.perf_counter()
        times.append((after - now) * 1000)
        now = after
    return {"ms": times, "seconds": now - begin, "output_bytes": len(output)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--format", choices=["jpeg", "webp"], default="jpeg")
    parser.add_argument("--impl", choices=["vips", "pipeline"], default="vips")
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    configure()
    data = args.source.read_bytes()
    call = make_transform(args.impl, data, args.format, args.width)
    result = run(data, call, args.start_at, args.seconds)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
