"""The job settings, checked and converted once: weights parsed, times in milliseconds.

``load_settings`` keeps settings as plain text and numbers; the job API and workers build a
:class:`JobConfig` at start, so that a malformed key list, weight string or secret stops the
server at once with a ConfigError instead of failing the first job.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from imgsrv.config import ConfigError, Settings
from imgsrv.jobs.auth import ApiKeys
from imgsrv.jobs.model import PRIORITIES

DAY_MS = 86_400_000
MAX_BACKOFF = 3600.0


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Everything the queue, the workers and the callbacks need from Settings."""

    keys: ApiKeys
    prefix: str = "imgsrv"
    weights: tuple[int, int, int] = (8, 4, 1)  # high, normal, low
    max_attempts: int = 3
    backoff: float = 2.0
    lease_ms: int = 30_000
    heartbeat: float = 10.0
    poll_interval: float = 0.5
    max_variants: int = 50
    retention_ms: int = 7 * DAY_MS
    callback_secret: bytes = b""
    callback_timeout: float = 10.0
    callback_attempts: int = 5
    accept_replicas: int = 1
    accept_timeout: float = 0.5
    merge_window: float = 0.05
    max_schedules: int = 100
    registry_heartbeat: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> JobConfig:
        """Check the ``job_*`` and ``api_keys`` settings; raises ConfigError."""
        try:
            weights = tuple(int(w) for w in settings.job_priority_weights.split(":"))
        except ValueError:
            weights = ()
        if len(weights) != len(PRIORITIES) or min(weights) < 1:
            raise ConfigError("job_priority_weights must be three positive numbers, e.g. 8:4:1")
        try:
            secret = bytes.fromhex(settings.job_callback_secret)
        except ValueError:
            raise ConfigError("job_callback_secret must be a hex string") from None
        if settings.job_max_attempts < 1 or settings.job_max_variants < 1:
            raise ConfigError("job_max_attempts and job_max_variants must be at least 1")
        if settings.job_callback_attempts < 1:
            raise ConfigError("job_callback_attempts must be at least 1")
        if not 0 < settings.job_heartbeat < settings.job_lease:
            raise ConfigError("job_heartbeat must be positive and shorter than job_lease")
        if settings.job_poll_interval <= 0 or settings.job_backoff < 0:
            raise ConfigError("job_poll_interval must be positive and job_backoff not negative")
        if settings.job_merge_window < 0 or settings.job_max_schedules < 0:
            raise ConfigError("job_merge_window and job_max_schedules must not be negative")
        if settings.worker_heartbeat <= 0 or settings.dashboard_refresh <= 0:
            raise ConfigError("worker_heartbeat and dashboard_refresh must be positive")
        if settings.admin_key and ApiKeys(settings.api_keys).tenant(settings.admin_key):
            raise ConfigError("admin_key must differ from every API key in api_keys")
        if settings.job_retention_days <= 0 or settings.job_callback_timeout <= 0:
            raise ConfigError("job_retention_days and job_callback_timeout must be positive")
        return cls(
            keys=ApiKeys(settings.api_keys),
            prefix=settings.redis_prefix,
            weights=(weights[0], weights[1], weights[2]),
            max_attempts=settings.job_max_attempts,
            backoff=settings.job_backoff,
            lease_ms=int(settings.job_lease * 1000),
            heartbeat=settings.job_heartbeat,
            poll_interval=settings.job_poll_interval,
            max_variants=settings.job_max_variants,
            retention_ms=int(settings.job_retention_days * DAY_MS),
            callback_secret=secret,
            callback_timeout=settings.job_callback_timeout,
            callback_attempts=settings.job_callback_attempts,
            accept_replicas=settings.job_accept_replicas,
            accept_timeout=settings.job_accept_timeout,
            merge_window=settings.job_merge_window,
            max_schedules=settings.job_max_schedules,
            registry_heartbeat=settings.worker_heartbeat,
        )

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...).

        Exponential (``backoff``, twice that, four times...) with "equal jitter": half the
        delay is fixed, half random, so that jobs which failed together (an origin outage)
        do not all come back at the same moment.
        """
        full = min(MAX_BACKOFF, self.backoff * 2 ** max(0, attempt - 1))
        return float(full / 2 + random.uniform(0, full / 2))
