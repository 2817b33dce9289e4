"""One JSON log line when a serving process starts, begins to drain, and stops.

Every line has ``event`` (``start``, ``drain`` or ``stop``) and ``instance``
(``<hostname>:<pid>``, the same name a job worker gives itself), so that an operator can
follow each process of a fleet through its life: the start line says what it runs with, the
drain line which signal asked it to stop, the stop line how long it lived.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from imgsrv import __version__
from imgsrv.config import Settings
from imgsrv.logs import flush_logs

log = logging.getLogger("imgsrv.instance")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def start_fields(settings: Settings) -> dict[str, Any]:
    """What the start line says about a serving process (never a secret or a URL)."""
    return {
        "version": __version__,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.worker_count,
        "transform_threads": settings.thread_count,
        "l1_bytes": settings.l1_bytes,
        "redis": "configured" if settings.redis_url else "none",
        "signed_urls": settings.signed,
        "job_workers": settings.job_workers,
        "egress_budget_bytes": settings.egress_budget_bytes,
    }


class InstanceLog:
    """The start, drain and stop lines of this process."""

    def __init__(self) -> None:
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self._started = time.monotonic()
        self._drained = False

    def _line(self, msg: str, event: str, **fields: Any) -> None:
        log.info(msg, extra={"event": event, "instance": self.instance, **fields})

    def start(self, settings: Settings) -> None:
        self._started = time.monotonic()
        self._line("instance started", "start", **start_fields(settings))

    def drain(self, signal_name: str) -> None:
        """Once per process: the server stops accepting and finishes what it holds."""
        if self._drained:
            return
        self._drained = True
        self._line("instance draining", "drain", signal=signal_name)
        flush_logs()

    def stop(self) -> None:
        uptime = round(time.monotonic() - self._started, 3)
        self._line("instance stopped", "stop", uptime_s=uptime)
        flush_logs()


def on_stop_signal(callback: Callable[[str], None]) -> Callable[[], None]:
    """Call ``callback(signal name)`` on the event loop when SIGTERM or SIGINT arrives, then
    let the handler that was installed before (the server's own, which starts the graceful
    shutdown) act on it as usual. Returns a function that puts the previous handlers back.

    Only the main thread may install signal handlers; elsewhere (tests running the app in a
    thread) nothing is installed.
    """
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        # Logging here could interrupt a log call of the same thread: leave it to the loop.
        loop.call_soon_threadsafe(callback, signal.Signals(signum).name)
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:  # nobody else handles it: the default action
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        return lambda: None

    def restore() -> None:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, before)

    return restore
