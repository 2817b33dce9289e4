"""A circuit breaker, so a Redis that is down costs nothing instead of a timeout per request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after ``failures`` consecutive errors; lets one probe through every ``reset_after``.

    closed: calls go through. open: calls are skipped until ``reset_after`` seconds have passed.
    half_open: one call is let through as a probe; success closes, failure opens again.
    """

    def __init__(
        self,
        failures: int = 3,
        reset_after: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.reset_after = reset_after
        self._clock = clock
        self._consecutive = 0
        self._opened_at = 0.0
        self._state: State = "closed"

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the protected service now."""
        if self._state == "closed":
            return True
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_after:
            self._state = "half_open"
            self._opened_at = self._clock()
            return True
        # half_open: only the single probe; a stuck probe is replaced after reset_after.
        if self._state == "half_open" and self._clock() - self._opened_at >= self.reset_after:
            self._opened_at = self._clock()
            return True
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._state = "closed"

    def failure(self) -> None:
        self._consecutive += 1
        if self._state == "half_open" or self._consecutive >= self.failures:
            self._state = "open"
            self._opened_at = self._clock()
