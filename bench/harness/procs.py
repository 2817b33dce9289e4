"""Child processes that always get stopped: own process group, log file, registry.

Every server, load generator and ceiling worker is started through :func:`spawn` in a new
session (so its process group holds it and all its children: gunicorn workers, thumbor
forks, locust workers) and registered; :func:`stop_all` runs on normal exit, on exceptions
and on SIGINT/SIGTERM, and signals whole groups, so nothing outlives the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType


@dataclass
class Managed:
    """A started child process, the leader of its own process group."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the whole group, then SIGKILL it if it has not gone after ``timeout``."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Children that ignored the leader's exit (a forked worker mid-request) go too.
        _signal_group(self.pid, signal.SIGKILL)
        _registry.discard(self)
        return self.popen.returncode


class _Registry:
    def __init__(self) -> None:
        self._items: list[Managed] = []

    def add(self, item: Managed) -> None:
        self._items.append(item)

    def discard(self, item: Managed) -> None:
        if item in self._items:
            self._items.remove(item)

    def items(self) -> list[Managed]:
        return list(self._items)


_registry = _Registry()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    stdout_path: Path | None = None,
) -> Managed:
    """Start ``argv`` in a new session; stderr (and stdout unless ``stdout_path``) to the log."""
    log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    out_file = open(stdout_path, "wb") if stdout_path else log_file  # noqa: SIM115
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=log_file,
            start_new_session=True,
        )
    finally:
        for handle in {id(log_file): log_file, id(out_file): out_file}.values():
            if handle is not subprocess.DEVNULL:
                handle.close()  # type: ignore[union-attr]
    item = Managed(name, list(argv), popen, log_path)
    _registry.add(item)
    return item


def stop_all() -> None:
    """Stop every process still registered, newest first (load before servers)."""
    for item in reversed(_registry.items()):
        item.stop(timeout=10)


def install_signal_handlers() -> None:
    """Turn SIGTERM into KeyboardInterrupt so that ``finally`` blocks clean up either way."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, process: Managed | None = None, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200; fail early (with its log) if ``process`` exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"status {response.status}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    tail = process.log_tail() if process is not None else ""
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s ({last})\n{tail}")


def run_quiet(argv: Sequence[str], timeout: float = 60.0) -> str:
    """stdout+stderr of a short command, or "" when it cannot run."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()
