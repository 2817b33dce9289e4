"""The libvips ceiling: a miss workload's transforms in a tight loop, source bytes in memory.

``python -m bench.harness.ceiling --jobs JOBS.json --seconds 20 --go GO --out FILE`` runs
one process; the runner starts as many as imgsrv has workers, so both sides have the
same processes on the same cores. A job is one (source, width, format) of a scenario
(``f:auto`` resolved from an ``Accept`` header as imgsrv resolves it); a process cycles over
its jobs in order, so a mixed scenario (``cdn_mix``) gets the same mix of transforms as the
servers. Each process:

* sets libvips up as an imgsrv worker does (operation cache off, one thread per pipeline);
* works out each job once, outside the timed loop: the source's header, the output size
  imgsrv plans, the output format, the encoder settings (imgsrv's shipped defaults);
* warms up, writes ``FILE.ready``, waits for the runner's ``GO`` file and the common start
  time in it, loops until the end time, and writes the per-transform times, the CPU time
  of the loop (``time.process_time``: every thread of the process) and the output bytes
  (JSON) for the runner to merge.

Two modes: ``--impl vips`` (the ceiling: :func:`vips_transform`, bare pyvips calls, nothing
else) and ``--impl pipeline`` (``imgsrv.transform.transform`` itself, so the gap between the
ceiling and imgsrv splits into pipeline cost and HTTP/server cost).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyvips

from imgsrv.transform.resize import scale_frame

WIDTH = 300


@dataclass(frozen=True)
class Job:
    """One transform of a workload: source file, ``w:{width}``, output format.

    ``format`` is ``jpeg``/``png``/``webp``/``avif``, ``auto`` (chosen from ``accept`` as
    imgsrv's ``f:auto`` does) or ``""`` (the source's own format, imgsrv's default).
    """

    source: str
    width: int
    format: str = ""
    accept: str = ""


@dataclass(frozen=True)
class Encoders:
    """imgsrv's encoder settings, from its shipped defaults (config/default.toml)."""

    jpeg_quality: int
    webp_quality: int
    webp_effort: int
    avif_quality: int
    avif_effort: int
    png_compression: int


@dataclass(frozen=True)
class VipsJob:
    """What :func:`vips_transform` needs for one job, worked out once before the loop.

    ``load``: the loader's shrink-on-load option (``shrink`` for JPEG, ``scale`` for WebP);
    ``thumbnail``: the source is one whose shrink-on-load imgsrv leaves to libvips'
    thumbnail (HEIF, AVIF, SVG); ``width`` x ``height``: the planned output frame.
    """

    data: bytes
    width: int
    height: int
    format: str
    load: dict[str, Any]
    thumbnail: bool
    orientation: int
    to_srgb: bool
    encoders: Encoders


def configure() -> None:
    """libvips as an imgsrv worker runs it (see imgsrv.transform.vips.configure_vips)."""
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.concurrency_set(1)


def encoders() -> Encoders:
    """The encoder settings an imgsrv server runs with when nothing is configured."""
    from imgsrv.config import load_settings

    settings = load_settings(env={})
    return Encoders(
        jpeg_quality=settings.jpeg_quality,
        webp_quality=settings.webp_quality,
        webp_effort=settings.webp_effort,
        avif_quality=settings.avif_quality,
        avif_effort=settings.avif_effort,
        png_compression=settings.png_compression,
    )


def prepare(job: Job, settings: Encoders | None = None) -> VipsJob:
    """Plan ``job`` as imgsrv does: its header, planned output size, loader options, format.

    The planning is imgsrv's own Python (URL parser, header reader, resize planner, JPEG
    shrink rule, format negotiation), so none of it can drift from the server's; only the
    libvips work of :func:`vips_transform` is timed.
    """
    from imgsrv.negotiation import accepted_formats
    from imgsrv.transform.header import read_header
    from imgsrv.transform.load import THUMBNAIL_FORMATS, shrink_on_load
    from imgsrv.transform.negotiate_format import choose_output_format
    from imgsrv.transform.resize import make_plan

    data = Path(job.source).read_bytes()
    spec = parse_spec(job)
    options = transform_options()
    header = read_header(data, options)
    plan = make_plan(header.width, header.height, 1, spec, options)
    accepted = accepted_formats(job.accept) if job.format == "auto" else frozenset()
    return VipsJob(
        data=data,
        width=plan.width,
        height=plan.height,
        format=choose_output_format(spec, header, accepted),
        load=shrink_on_load(header, plan, options),
        thumbnail=header.format in THUMBNAIL_FORMATS,
        orientation=header.orientation,
        to_srgb=header.icc_profile or header.cmyk,
        encoders=settings or encoders(),
    )


def vips_transform(job: VipsJob) -> bytes:
    """The libvips calls imgsrv makes for a miss of ``job``, and nothing else.

    This is the one place that states which calls those are; keep it in step with
    ``imgsrv/transform`` (load.py, orient.py, colour.py, resize.py, save.py). For a ``w:N``
    miss imgsrv calls:

    1. decode with shrink-on-load: ``new_from_buffer(data, "", access="sequential",
       fail_on="error")`` with ``shrink`` (JPEG: the largest of 8/4/2 that keeps at least the
       planned size) or ``scale`` (WebP: straight to the planned size); HEIF, AVIF and SVG
       sources go through ``thumbnail_buffer(data, width, height=height, size="force",
       option_string="fail_on=error")`` (plus ``output_profile="srgb"`` for an ICC profile)
       instead, which also orients and scales;
    2. ``autorot()`` when the EXIF orientation is not 1; ``icc_transform("srgb",
       embedded=True, ...)`` when the source has an ICC profile or is CMYK (8-bit sRGB
       sources, every benchmark source, need no other colour call);
    3. ``resize(h, vscale=v)`` (Lanczos 3; imgsrv's own ``scale_frame`` is called, so the two
       cannot differ) to exactly the planned size, alpha premultiplied
       around it in 8 bits (``premultiply().cast()`` ... ``unpremultiply().cast()``), and a
       ``gravity`` crop if rounding left a pixel over;
    4. the saver with imgsrv's defaults, metadata stripped: ``jpegsave_buffer(Q,
       interlace=False, optimize_coding=True)``, ``webpsave_buffer(Q, effort)``,
       ``heifsave_buffer(Q, compression="av1", effort, bitdepth=8)`` or
       ``pngsave_buffer(compression, interlace=False)``.
    """
    image = _decode(job)
    if (int(image.width), int(image.height)) != (job.width, job.height):
        image = scale_frame(image, job.width, job.height)
    return _save(image, job.format, job.encoders)


def _decode(job: VipsJob) -> Any:
    if job.thumbnail:
        colour: dict[str, Any] = {"output_profile": "srgb"} if job.to_srgb else {}
        return pyvips.Image.thumbnail_buffer(
            job.data, job.width, height=job.height, size="force",
            option_string="fail_on=error", **colour,
        )  # fmt: skip
    image = pyvips.Image.new_from_buffer(
        job.data, "", access="sequential", fail_on="error", **job.load
    )
    if job.orientation != 1:
        image = image.autorot()
    if job.to_srgb:
        image = image.icc_transform(
            "srgb", embedded=True, input_profile="srgb", intent="perceptual", depth=8
        )
    return image


def _save(image: Any, fmt: str, settings: Encoders) -> bytes:
    saved: Any
    if fmt == "jpeg":
        saved = image.jpegsave_buffer(
            Q=settings.jpeg_quality, interlace=False, optimize_coding=True, keep="none"
        )
    elif fmt == "webp":
        saved = image.webpsave_buffer(
            Q=settings.webp_quality, effort=settings.webp_effort, keep="none"
        )
    elif fmt == "avif":
        saved = image.heifsave_buffer(
            Q=settings.avif_quality, compression="av1", effort=settings.avif_effort,
            bitdepth=8, keep="none",
        )  # fmt: skip
    elif fmt == "png":
        saved = image.pngsave_buffer(
            compression=settings.png_compression, interlace=False, keep="none"
        )
    else:
        raise ValueError(f"the ceiling does not write {fmt!r}")
    return bytes(saved)


def parse_spec(job: Job) -> Any:
    """imgsrv's TransformSpec for ``job``, parsed from the URL the servers are sent."""
    from imgsrv.config import load_settings
    from imgsrv.urls import parse_path

    options = f"w:{job.width}" + (f"/f:{job.format}" if job.format else "")
    # Default settings (not this process's IMGSRV_* environment): the server's defaults.
    return parse_path(f"/_/{options}/plain/local:%2F%2Fx".encode(), load_settings(env={})).spec


def transform_options() -> Any:
    """imgsrv's TransformOptions under its default settings."""
    from imgsrv.config import load_settings
    from imgsrv.runtime import transform_options as from_settings

    return from_settings(load_settings(env={}))


Call = Callable[[], bytes]


def make_calls(impl: str, jobs: Sequence[Job]) -> list[Call]:
    """One ready-to-time call per job: the ceiling's libvips calls or imgsrv's pipeline."""
    if impl == "pipeline":
        return [_pipeline_call(job) for job in jobs]
    settings = encoders()
    return [_vips_call(prepare(job, settings)) for job in jobs]


def _vips_call(job: VipsJob) -> Call:
    return lambda: vips_transform(job)


def _pipeline_call(job: Job) -> Call:
    """imgsrv's own pure transform for ``job``, spec parsed from a URL."""
    from imgsrv.negotiation import accepted_formats
    from imgsrv.transform import transform

    data = Path(job.source).read_bytes()
    spec = parse_spec(job)
    options = transform_options()
    accepted = accepted_formats(job.accept) if job.format == "auto" else frozenset()
    return lambda: bytes(transform(data, spec, accepted, options).data)


def wait_for_start(ready: Path, go: Path, limit: float = 300.0) -> None:
    """Say this worker is ready, then wait for the go file and the start time it holds."""
    ready.write_text("ready")
    deadline = time.monotonic() + limit
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no start signal from the runner")
        time.sleep(0.01)
    start_at = float(go.read_text() or "0")
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def run(calls: Sequence[Call], seconds: float, offset: int = 0) -> dict[str, Any]:
    """Cycle the calls for ``seconds``: per-call times, loop CPU and output bytes."""
    times: list[float] = []
    output_bytes = 0
    index = offset % len(calls)
    cpu_before = time.process_time()
    begin = time.perf_counter()
    end = begin + seconds
    now = begin
    while now < end:
        output_bytes += len(calls[index]())
        index = (index + 1) % len(calls)
        after = time.perf_counter()
        times.append((after - now) * 1000)
        now = after
    return {
        "ms": times,
        "seconds": now - begin,
        "cpu_s": time.process_time() - cpu_before,
        "output_bytes": output_bytes,
    }


def write_jobs(path: Path, jobs: Sequence[Job]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(job) for job in jobs]))
    return path


def read_jobs(path: Path) -> list[Job]:
    return [Job(**item) for item in json.loads(path.read_text())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=Path, required=True, help="JSON list of jobs")
    parser.add_argument("--impl", choices=["vips", "pipeline"], default="vips")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--go", type=Path, required=True, help="file holding the start time")
    parser.add_argument("--offset", type=int, default=0, help="first job of the cycle")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    configure()
    calls = make_calls(args.impl, read_jobs(args.jobs))
    for call in calls:  # warm-up: first calls pay for library start-up
        call()
    wait_for_start(args.out.with_suffix(".ready"), args.go)
    result = run(calls, args.seconds, args.offset)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
