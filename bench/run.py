"""Run the imgsrv benchmark: ``python bench/run.py [--quick | --smoke] [--out FILE]``.

One command prepares the source images, starts a static origin (nginx if installed) and a
Redis, then runs every scenario with its contenders interleaved, and writes:

* the results JSON (``--out``, and ``bench/results/<date>.json`` unless ``--smoke``),
* the same as a markdown table with the target ratios (``.md`` next to the JSON),
* a PNG chart of throughput and p99 per contender (``.png`` next to the JSON).

``--quick`` runs every scenario and contender briefly (under 8 minutes once the
virtualenvs under ``bench/.work/`` exist); ``--smoke`` runs imgsrv alone over a subset of
the scenarios for seconds each, to check the harness (used by the test suite). See
bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # ``python bench/run.py`` puts bench/ first on the path; the harness imports as bench.*.
    sys.path.insert(0, str(REPO))

from bench.harness import (  # noqa: E402
    ceiling,
    images,
    loadgen,
    origin,
    procs,
    report,
    servers,
    venvs,
    versions,
)
from bench.harness.context import TIMINGS, Bench  # noqa: E402
from bench.harness.scenarios import SCENARIOS, SMOKE_SCENARIOS, skipped  # noqa: E402

DEFAULT_WORK = REPO / "bench" / ".work"
RESULTS = REPO / "bench" / "results"
ALL_CONTENDERS = (
    "imgsrv", "imgsrv_wrk", "imgsrv_c16", "ceiling", "pipeline", "bare", "thumbor", "loadgen",
)  # fmt: skip
SMOKE_CONTENDERS = ("imgsrv", "imgsrv_wrk")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="imgsrv benchmark: imgsrv vs the libvips ceiling, bare starlette, thumbor"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="every scenario, briefly (< 8 min)")
    mode.add_argument("--smoke", action="store_true", help="imgsrv alone, a subset (CI)")
    parser.add_argument("--out", type=Path, help="also write the results JSON here")
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK,
        help="scratch folder: sources, logs, virtualenvs (default bench/.work)",
    )  # fmt: skip
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated subset of {','.join(SCENARIOS)} (--smoke: "
        f"{','.join(SMOKE_SCENARIOS)})",
    )
    parser.add_argument(
        "--contenders", help=f"comma-separated subset of {','.join(ALL_CONTENDERS)}"
    )
    parser.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    parser.add_argument("--rounds", type=int, help="override the number of interleaved rounds")
    parser.add_argument(
        "--imgsrv-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra IMGSRV_* setting for imgsrv (repeatable), e.g. IMGSRV_ACCESS_LOG=0",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="attach py-spy to imgsrv's workers during its rounds (bench/results/profiles/)",
    )  # fmt: skip
    parser.add_argument("--no-nginx", action="store_true", help="use the Python origin")
    parser.add_argument("--no-wrk", action="store_true", help="drive hit with locust")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    timing = TIMINGS[mode]
    if args.rounds:
        timing = type(timing)(**{**timing.__dict__, "rounds": args.rounds})
    default_scenarios = SMOKE_SCENARIOS if args.smoke else tuple(SCENARIOS)
    scenarios = [s.strip() for s in (args.scenarios or ",".join(default_scenarios)).split(",")]
    scenarios = [s for s in scenarios if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    default_contenders = SMOKE_CONTENDERS if args.smoke else ALL_CONTENDERS
    contenders = frozenset(
        c.strip() for c in (args.contenders or ",".join(default_contenders)).split(",")
    )
    if contenders - set(ALL_CONTENDERS):
        names = ", ".join(sorted(contenders - set(ALL_CONTENDERS)))
        raise SystemExit(f"unknown contender(s): {names}")
    procs.install_signal_handlers()
    started = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    with work_lock(args.work):
        try:
            command_line = sys.argv[1:] if argv is None else argv
            document = run(args, mode, timing, scenarios, contenders, command_line)
        finally:
            procs.stop_all()
    write_outputs(document, args, mode)
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


@contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """Hold an exclusive lock on the work folder: two runs sharing it would stop each
    other's Redis and overwrite each other's files."""
    import fcntl

    with open(work / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"another benchmark run is using {work}; wait for it or pass --work DIR"
            ) from None
        yield


def run(
    args: argparse.Namespace,
    mode: str,
    timing: object,
    scenarios: list[str],
    contenders: frozenset[str],
    command_line: list[str],
) -> dict[str, object]:
    work = args.work.resolve()
    for folder in ("logs", "samples", "paths"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    sources = images.write_sources(work / "sources")
    # probe.jpg: the bytes of a hit response (the ceiling's output for the hit transform),
    # served by the origin to measure the load generator's own capacity.
    ceiling.configure()
    encoders = ceiling.encoders()
    hit_job = ceiling.Job(str(sources[images.PHOTO_1920.name]), ceiling.WIDTH)
    (work / "sources" / "probe.jpg").write_bytes(
        ceiling.vips_transform(ceiling.prepare(hit_job, encoders))
    )
    thumbor_venv = None
    thumbor_avif = False
    if "thumbor" in contenders and not args.smoke:
        thumbor_venv = venvs.thumbor_venv(work)
        thumbor_avif = servers.thumbor_writes_avif(thumbor_venv)
        log(f"thumbor's automatic format: {'AVIF' if thumbor_avif else 'WebP'}")
    py_spy = venvs.py_spy(work) if args.profile else None
    use_wrk = loadgen.wrk_available() and not args.no_wrk

    the_origin = origin.start_origin(work / "sources", work, prefer_nginx=not args.no_nginx)
    log(f"origin: {the_origin.kind} at {the_origin.url}")
    redis = servers.start_redis(work)
    overrides = dict(item.split("=", 1) for item in args.imgsrv_env)
    bench = Bench(
        work=work,
        sources=sources,
        origin=the_origin,
        redis=redis,
        workers=args.workers,
        timing=timing,  # type: ignore[arg-type]
        thumbor_venv=thumbor_venv,
        use_wrk=use_wrk,
        contenders=contenders,
        imgsrv_env=overrides,
        py_spy=py_spy,
        profile_dir=RESULTS / "profiles" / mode if args.profile else None,
        log=log,
        thumbor_avif=thumbor_avif,
        encoders=encoders,
    )
    bench.commands.update(
        {
            "run": " ".join(["python bench/run.py", shlex.join(command_line)]).strip(),
            "mode": mode,
            "sources": images.describe_sources(sources),
            "origin": the_origin.command,
            "redis": redis.command,
        }
    )
    results: dict[str, object] = {}
    for name in scenarios:
        log(f"scenario {name}")
        try:
            results[name] = SCENARIOS[name](bench)
        except Exception as exc:
            # One broken scenario must not cost the others' results: record it and go on.
            log(f"scenario {name} failed:\n{traceback.format_exc()}")
            users = 256 if name.startswith("overload") else 32
            results[name] = skipped(users, f"failed: {type(exc).__name__}: {exc}"[:500])
    found = versions.collect(
        thumbor_venv, servers.redis_binary(), the_origin.kind, "wrk" if use_wrk else "locust"
    )
    if thumbor_venv is not None:
        found["thumbor_auto_format"] = "avif (AUTO_AVIF)" if thumbor_avif else "webp (AUTO_WEBP)"
    document = {"versions": found, "commands": bench.commands, "scenarios": results}
    return report.derive(document)


def write_outputs(document: dict[str, object], args: argparse.Namespace, mode: str) -> None:
    problems = report.shape_problems(document)
    if problems:
        log("results do not follow the documented shape: " + "; ".join(problems))
    text = json.dumps(document, indent=2) + "\n"
    targets: list[Path] = []
    if args.out:
        targets.append(args.out)
    complete = not (args.smoke or args.profile or args.contenders or args.rounds) and (
        args.scenarios is None
    )
    if complete:
        # Only a whole, unprofiled run is kept as the dated results of the suite.
        stamp = datetime.datetime.now().strftime("%Y-%m-%d")
        suffix = "" if mode == "full" else f"-{mode}"
        targets.append(RESULTS / f"{stamp}{suffix}.json")
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.with_suffix(".md").write_text(report.markdown(document))
        log(f"wrote {path} and {path.with_suffix('.md')}")
        if not args.no_chart and mode != "smoke":
            write_chart(path, path.with_suffix(".png"), args.work.resolve())
    print(report.markdown(document))


def write_chart(results: Path, png: Path, work: Path) -> None:
    """Draw the chart with matplotlib: here if importable, else in the tools virtualenv."""
    script = REPO / "bench" / "harness" / "chart.py"
    try:
        import matplotlib  # noqa: F401

        python = Path(sys.executable)
    except ImportError:
        python = venvs.tools_python(work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), str(script), str(results), str(png)], env=env, check=False,
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode == 0:
        log(f"wrote {png}")
    else:
        log(f"chart failed: {done.stderr[-2000:]}")


if __name__ == "__main__":
    raise SystemExit(main())
