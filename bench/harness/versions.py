"""What ran: versions of every component and a description of the machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

from bench.harness import procs

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "imgsrv", "pyvips", "pyvips-binary", "starlette", "uvicorn", "uvicorn-worker", "gunicorn",
    "uvloop", "httptools", "httpx", "redis", "locust",
)  # fmt: skip
THUMBOR_PACKAGES = ("thumbor", "pillow", "tornado")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision() -> str:
    head = procs.run_quiet(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if not head or " " in head:
        return "unknown"
    dirty = procs.run_quiet(["git", "-C", str(REPO), "status", "--porcelain", "--", "imgsrv"])
    return head + ("+modified" if dirty else "")


def source_digest() -> str:
    """A short hash of imgsrv's source files, telling apart uncommitted states of the code."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "imgsrv").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _first_match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    return found.group(1) if found else "not installed"


def collect(
    thumbor_venv: Path | None, redis_binary: str | None, origin_kind: str, loadgen: str
) -> dict[str, str]:
    """Versions of everything that took part, and the machine."""
    import pyvips

    versions: dict[str, str] = {
        "python": platform.python_version(),
        "imgsrv_git": _git_revision(),
        "imgsrv_source_sha256": source_digest(),
        "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}",
    }
    versions.update({name: _version(name) for name in PACKAGES})
    if thumbor_venv is not None:
        python = thumbor_venv / "bin" / "python"
        code = (
            "import importlib.metadata as m\n"
            f"for n in {THUMBOR_PACKAGES!r}: print(n, m.version(n))"
        )
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
        for line in out.stdout.splitlines():
            name, _, version = line.partition(" ")
            versions[f"{name} (thumbor venv)"] = version
    if redis_binary:
        versions["redis-server"] = _first_match(r"v=(\S+)", procs.run_quiet([redis_binary, "-v"]))
    versions["origin"] = origin_kind
    if origin_kind == "nginx":
        versions["nginx"] = _first_match(r"nginx/(\S+)", procs.run_quiet(["nginx", "-v"]))
    versions["wrk"] = _first_match(r"wrk (\S+)", procs.run_quiet(["wrk", "-v"]))
    versions["hit_loadgen"] = loadgen
    versions["machine"] = (
        f"{platform.system()} {platform.release()} {platform.machine()}, {_cpu_model()}, "
        f"{len(os.sched_getaffinity(0))} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB RAM"
    )
    return versions
