"""Draining: how a serving process leaves a load balancer without failing a request.

On SIGTERM a process first drains for ``drain_delay`` seconds: ``/readyz`` answers 503
(``"draining"``), so the balancer's health check takes the instance out of rotation, while
every request that still arrives is served as usual; its in-process job worker stops claiming,
finishes the variant in hand and hands its job back. Then the listener closes, in-flight
requests finish and the process exits 0. A second stop signal ends the delay at once.

The signal arrives in :class:`imgsrv.serving.DrainingServer`; the app's readiness probe and
job worker learn about it from this process's :class:`Drain`. This module imports nothing of
the app (no prometheus_client): the gunicorn master imports it before the workers fork.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("imgsrv.serve")


class Drain:
    """Whether this process is draining, and who must know when it starts."""

    def __init__(self) -> None:
        self.draining = False
        self._listeners: list[Callable[[], None]] = []

    def on_drain(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on the event loop) when draining starts; returns an unsubscriber."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def begin(self, delay: float) -> bool:
        """Start draining (on the event loop); False if it had started already."""
        if self.draining:
            return False
        self.draining = True
        log.info("readiness off while draining", extra={"drain_delay": delay})
        for callback in list(self._listeners):
            callback()
        return True


_process_drain: Drain | None = None


def process_drain() -> Drain:
    """The drain state of this server process (shared by its server loop and its app)."""
    global _process_drain
    if _process_drain is None:
        _process_drain = Drain()
    return _process_drain
