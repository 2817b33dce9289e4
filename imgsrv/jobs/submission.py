"""Checking a job submission before it is queued.

Everything that can be refused without I/O is refused here, at submit time, with the same
errors as the URL grammar: a bad variant is a 400 naming the variant and option, a source the
SSRF guard or the host allow-list refuses is a 403, and so is a callback URL whose host is a
literal private address. Host names are checked again, after DNS resolution, when a source is
downloaded or a callback delivered.

A variant is an object of URL option names (short or long) and their arguments:
``{"w": 320, "f": "webp"}``, ``{"rs": "cover:300:200"}`` or ``{"rs": ["cover", 300, 200]}``,
``{"preset": "thumb"}``; true and false stand for 1 and 0. The job's ``ttl`` applies to every
variant, and ``f: auto`` is refused: a job renders before any browser says what it accepts.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from typing import Any

import httpx

from imgsrv.config import Settings
from imgsrv.errors import InvalidOption
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import ForbiddenCallback, InvalidJob
from imgsrv.jobs.model import JobRequest
from imgsrv.jobs.schema import MAX_DELAY_S, JobSubmission, convert, decode
from imgsrv.sources import address_allowed, resolve_source
from imgsrv.spec import DEFAULT_TTL, TransformSpec, parse_options
from imgsrv.urls import spec_limits

_IPV4_LIKE = re.compile(r"^[0-9a-fA-FxX.]+$")
# A schedule submits its job again and again: these make sense for one submission only.
NOT_IN_SCHEDULES = ("run_at", "delay_s", "idempotency_key", "depends_on")


def parse_submission(body: bytes, settings: Settings, config: JobConfig) -> JobRequest:
    """Validate a ``POST /v1/jobs`` body; raises InvalidJob, InvalidSource or Forbidden*."""
    return check_submission(decode(body, JobSubmission), settings, config)


def parse_scheduled_job(data: dict[str, Any], settings: Settings, config: JobConfig) -> JobRequest:
    """Validate the job body of a schedule; errors name ``job.<field>``."""
    for name in NOT_IN_SCHEDULES:
        if data.get(name) is not None:
            raise InvalidJob(f"job.{name}", "not allowed in a schedule")
    try:
        return check_submission(convert(data, JobSubmission, "job."), settings, config)
    except InvalidJob as exc:
        if exc.culprit.startswith("job."):
            raise
        raise InvalidJob(
            "job." + exc.culprit, exc.detail.partition(": ")[2] or exc.detail
        ) from None


def check_submission(
    submission: JobSubmission, settings: Settings, config: JobConfig
) -> JobRequest:
    """The checks JSON Schema cannot express: the URL grammar of every variant, the source
    and callback addresses, the configured variant limit, the start time."""
    source = resolve_source(submission.source, settings)
    ttl = _ttl(submission.ttl if submission.ttl is not None else DEFAULT_TTL, source, settings)
    variants = submission.variants
    if len(variants) > config.max_variants:
        raise InvalidJob("variants", f"at most {config.max_variants} variants per job")
    options = tuple(_variant(i, v, source, ttl, settings) for i, v in enumerate(variants))
    delay_ms, run_at_ms = _schedule(submission)
    depends_on = tuple(submission.depends_on or ())
    if len(set(depends_on)) != len(depends_on):
        raise InvalidJob("depends_on", "names a job twice")
    return JobRequest(
        source=source,
        variants=tuple(dict(v) for v in variants),
        options=options,
        priority=submission.priority or "normal",
        ttl=ttl,
        delay_ms=delay_ms,
        run_at_ms=run_at_ms,
        callback_url=_callback_url(submission.callback_url, settings),
        idempotency_key=submission.idempotency_key or "",
        depends_on=depends_on,
    )


def _ttl(value: int | str, source: str, settings: Settings) -> int:
    try:
        return parse_options(source, [("ttl", [str(value)])], spec_limits(settings)).ttl
    except InvalidOption as exc:
        raise InvalidJob("ttl", exc.detail) from None


def _args(name: str, value: Any) -> list[str]:
    """A variant value as option arguments."""
    if isinstance(value, str):
        return value.split(":")
    args: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool):
            args.append("1" if item else "0")
        elif isinstance(item, int | float | str):
            args.append(str(item))
        else:
            raise InvalidOption(name, "arguments must be strings, numbers or booleans")
    return args


def _variant(index: int, variant: Any, source: str, ttl: int, settings: Settings) -> str:
    """Check one variant; returns its canonical option string (ttl included)."""
    where = f"variants[{index}]"
    pairs: list[tuple[str, list[str]]] = []
    try:
        for name, value in variant.items():
            pairs.append((name, _args(name, value)))
        pairs.append(("ttl", [str(ttl)]))
        spec = parse_options(source, pairs, spec_limits(settings))
    except InvalidOption as exc:
        raise InvalidJob(where, exc.detail) from None
    if spec.format == "auto":
        raise InvalidJob(where, "f:auto depends on a browser's Accept header; name a format")
    return variant_options(spec)


def variant_options(spec: TransformSpec) -> str:
    """The canonical option string of a spec, ttl included, from which it can be rebuilt."""
    parts = [":".join([name, *args]) for name, args in spec.options()]
    return "/".join([*parts, f"ttl:{spec.ttl}"])


def _schedule(submission: JobSubmission) -> tuple[int, int]:
    """(delay in ms, absolute Unix ms or 0) from ``delay_s`` or ``run_at``."""
    delay, run_at = submission.delay_s, submission.run_at
    if delay is not None and run_at is not None:
        raise InvalidJob("run_at", "give delay_s or run_at, not both")
    if delay is not None:
        return int(delay * 1000), 0
    if run_at is not None:
        if run_at.tzinfo is None:
            raise InvalidJob("run_at", "needs a time zone (Z or +hh:mm)")
        at_ms = int(run_at.timestamp() * 1000)
        if at_ms > (time.time() + MAX_DELAY_S) * 1000:
            raise InvalidJob("run_at", f"at most {MAX_DELAY_S // 86_400} days ahead")
        return 0, max(at_ms, 1)
    return 0, 0


def _callback_url(value: str | None, settings: Settings) -> str:
    if value is None:
        return ""
    try:
        url = httpx.URL(value)
        host = url.host
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise InvalidJob("callback_url", "is not a valid URL") from None
    if url.scheme not in ("http", "https") or not host:
        raise InvalidJob("callback_url", "must be an absolute http or https URL")
    if url.userinfo:
        raise InvalidJob("callback_url", "must not contain credentials")
    address = _ip_literal(host)
    if address is not None and not address_allowed(address, settings.allowed_networks):
        raise ForbiddenCallback(f"callback host {host!r} is a non-public address")
    return str(url.copy_with(fragment=None))


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names when it is an IP literal, in any form a resolver accepts.

    ``inet_aton`` takes the legacy forms too (``2130706433``, ``0x7f.1``, ``127.1``), which the
    system resolver would turn into addresses as well.
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            return None
    if not _IPV4_LIKE.match(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None
