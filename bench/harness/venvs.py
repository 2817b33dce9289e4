"""The benchmark's own virtual environments under ``bench/.work/``, made on first use.

* ``thumbor-venv``: thumbor from PyPI, isolated from imgsrv's dependencies (thumbor pins
  its own Pillow and tornado). :data:`THUMBOR_REQUIREMENT` is the tested version: it
  installs from wheels on Python 3.11 and needs no pycurl (its HTTP loader uses tornado's
  own client unless ``HTTP_LOADER_CURL_ASYNC_HTTP_CLIENT`` is set).
* ``tools-venv``: matplotlib (the chart) and py-spy (profiles), kept out of imgsrv's venv.

Creation takes a minute or two once; ``--quick`` assumes they exist (it creates them if not).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

THUMBOR_REQUIREMENT = "thumbor==7.8.0"
TOOLS_REQUIREMENTS = ("matplotlib>=3.8", "py-spy>=0.3.14")


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, requirements: tuple[str, ...], check: str) -> Path:
    """Create ``venv`` with ``requirements`` unless ``python -c check`` already succeeds there."""
    python = _python(venv)
    if python.exists():
        done = subprocess.run([str(python), "-c", check], capture_output=True, check=False)
        if done.returncode == 0:
            return venv
    print(f"[bench] creating {venv} with {' '.join(requirements)}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *requirements],
        check=True,
    )  # fmt: skip
    return venv


def thumbor_venv(work: Path) -> Path:
    return ensure_venv(work / "thumbor-venv", (THUMBOR_REQUIREMENT,), "import thumbor")


def tools_venv(work: Path) -> Path:
    venv = work / "tools-venv"
    # py-spy is a binary in bin/, not an importable module: check for the file.
    check = f"import matplotlib, os; assert os.path.exists({str(venv / 'bin' / 'py-spy')!r})"
    return ensure_venv(venv, TOOLS_REQUIREMENTS, check)


def tools_python(work: Path) -> Path:
    return _python(tools_venv(work))


def py_spy(work: Path) -> Path:
    return tools_venv(work) / "bin" / "py-spy"
