"""Bounded background load for failure tests: image GETs and job submissions from threads.

Every request is recorded with its time (``time.monotonic()``) and outcome: the HTTP status,
or the exception name when no answer came. Loads stop when told, after ``max_requests``, or
after ``max_seconds``, whichever comes first, so a failing test never leaves them running.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float
    status: int | None  # None: no HTTP answer
    error: str = ""
    retry_after: str | None = None
    body: Any = None


@dataclass
class Load:
    """Threads sending requests made by ``make_request(thread, number)`` to ``base_url``."""

    base_url: str
    make_request: Callable[[int, int], tuple[str, str, Mapping[str, Any] | None]]
    threads: int = 4
    max_requests: int = 5000
    max_seconds: float = 90.0
    timeout: float = 30.0
    pause: float = 0.0  # seconds between a thread's requests
    outcomes: list[Outcome] = field(default_factory=list)
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._count = itertools.count()
        self._workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]

    def start(self) -> Load:
        self._deadline = time.monotonic() + self.max_seconds
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        return self.outcomes

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, thread: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as http:
            for number in itertools.count():
                if self._stop.is_set() or time.monotonic() > self._deadline:
                    return
                if next(self._count) >= self.max_requests:
                    return
                method, path, body = self.make_request(thread, number)
                self._record(self._send(http, method, path, body))
                if self.pause:
                    self._stop.wait(self.pause)

    def _send(
        self, http: httpx.Client, method: str, path: str, body: Mapping[str, Any] | None
    ) -> Outcome:
        try:
            answer = http.request(method, path, json=body, headers=dict(self.headers))
        except httpx.HTTPError as exc:
            return Outcome(time.monotonic(), None, type(exc).__name__)
        parsed: Any = None
        if answer.headers.get("content-type", "").endswith("json"):
            parsed = answer.json()
        return Outcome(
            time.monotonic(), answer.status_code, "", answer.headers.get("retry-after"), parsed
        )

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.at < end]


def failures(outcomes: Sequence[Outcome], ok: frozenset[int] = frozenset({200})) -> list[Outcome]:
    """Outcomes whose status is not in ``ok`` (no answer at all included)."""
    return [o for o in outcomes if o.status not in ok]


def summary(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """Outcome counts by status (or error name), for assertion messages and reports."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = str(outcome.status) if outcome.status is not None else outcome.error
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
