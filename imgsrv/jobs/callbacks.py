"""Job callbacks: a signed POST of the finished job to the client's ``callback_url``.

When a job reaches a final state, the finishing script puts its id into the ``callbacks``
sorted set of the queue (see :mod:`imgsrv.jobs.scripts`), so a callback survives the process
that finished the job. Every worker loop takes due callbacks from there, delivers them, and
stores the delivery state in the job (``callback`` in the job body): ``pending`` with the
attempts so far, then ``delivered`` or ``failed``. Non-2xx answers, timeouts and connection
errors are retried with the job backoff, up to ``job_callback_attempts`` deliveries.

The request::

    POST <callback_url>
    Content-Type: application/json
    X-Imgsrv-Job: <job id>
    X-Imgsrv-Timestamp: <Unix seconds>
    X-Imgsrv-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

    <the job, as GET /v1/jobs/{id} answers it>

The secret is ``job_callback_secret``, or the tenant's API key when none is set. A receiver
recomputes the HMAC over the timestamp, a dot and the raw body, compares in constant time, and
refuses old timestamps to stop replays. Connections go through the sources' SSRF guard
(:class:`~imgsrv.sources.GuardedTransport`): private addresses are refused after DNS
resolution, redirects are not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time

import httpx
import orjson

from imgsrv import metrics
from imgsrv.config import Settings
from imgsrv.errors import ForbiddenSource, ImgsrvError
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.model import JsonObject, iso_time
from imgsrv.jobs.queue import JobQueue
from imgsrv.sources import GuardedTransport

log = logging.getLogger("imgsrv.jobs.callbacks")

SIGNATURE_HEADER = "X-Imgsrv-Signature"
TIMESTAMP_HEADER = "X-Imgsrv-Timestamp"
JOB_HEADER = "X-Imgsrv-Job"
BATCH = 20


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Imgsrv-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class CallbackSender:
    """Delivers due callbacks of the queue; one per worker loop."""

    def __init__(self, queue: JobQueue, config: JobConfig, settings: Settings) -> None:
        self.queue = queue
        self.config = config
        self._client = httpx.AsyncClient(
            transport=GuardedTransport(settings.allowed_networks, max_connections=BATCH),
            timeout=httpx.Timeout(config.callback_timeout),
            headers={"User-Agent": settings.user_agent, "Content-Type": "application/json"},
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def deliver_due(self) -> int:
        """Deliver the callbacks that are due now; returns how many were tried."""
        # Held long enough for one delivery to time out, so nobody else tries it meanwhile.
        lease = self.config.callback_timeout * 2 + 5
        job_ids = await self.queue.take_callbacks(lease, BATCH)
        await asyncio.gather(*(self.deliver(job_id) for job_id in job_ids))
        return len(job_ids)

    async def deliver(self, job_id: str) -> None:
        """One delivery attempt of ``job_id``'s callback, and its recorded outcome."""
        job = await self.queue.get(job_id)
        if job is None or not job.callback_url:
            await self.queue.callback_result(job_id, {}, None)
            return
        attempt = int((job.callback or {}).get("attempts", 0)) + 1
        secret = self.config.callback_secret or (self.config.keys.key_of(job.tenant) or "").encode()
        body = orjson.dumps(job.body(with_callback=False))
        status_code, error, final = None, None, False
        if not secret:
            error, final = "no key to sign with: set job_callback_secret", True
        else:
            status_code, error, final = await self._post(job.callback_url, job_id, secret, body)
        state: JsonObject = {
            "status": "delivered" if error is None else "pending",
            "attempts": attempt,
            "last_status": status_code,
            "last_error": error,
            "delivered_at": iso_time(int(time.time() * 1000)) if error is None else None,
        }
        retry_in: float | None = None
        if error is None:
            outcome = "delivered"
        elif final or attempt >= self.config.callback_attempts:
            state["status"] = outcome = "failed"
        else:
            outcome = "retry"
            retry_in = self.config.retry_delay(attempt)
        metrics.JOB_CALLBACKS.labels(outcome).inc()
        log.info(
            "job callback",
            extra={
                "job": job_id,
                "outcome": outcome,
                "attempt": attempt,
                "http": status_code,
                "error": error,
            },
        )
        await self.queue.callback_result(job_id, state, retry_in)

    async def _post(
        self, url: str, job_id: str, secret: bytes, body: bytes
    ) -> tuple[int | None, str | None, bool]:
        """(HTTP status, error or None, whether retrying is pointless)."""
        timestamp = int(time.time())
        headers = {
            JOB_HEADER: job_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        }
        try:
            # Streamed and never read: the receiver's answer body is of no interest.
            async with self._client.stream("POST", url, content=body, headers=headers) as answer:
                status = answer.status_code
        except ForbiddenSource as exc:
            return None, exc.detail, True
        except ImgsrvError as exc:  # the guard could not resolve the host
            return None, exc.detail, False
        except httpx.TimeoutException:
            return None, f"no answer within {self.config.callback_timeout:g} s", False
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: could not deliver", False
        if 200 <= status < 300:
            return status, None, False
        return status, f"the receiver answered {status}", False
