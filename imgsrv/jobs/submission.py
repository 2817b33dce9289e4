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
from datetime import datetime
from typing import Any, cast

import httpx
import orjson

from imgsrv.config import Settings
from imgsrv.errors import InvalidOption
from imgsrv.jobs.config import JobConfig
from imgsrv.jobs.errors import ForbiddenCallback, InvalidJob
from imgsrv.jobs.model import PRIORITIES, JobRequest, Priority
from imgsrv.sources import address_allowed, resolve_source
from imgsrv.spec import DEFAULT_TTL, TransformSpec, parse_options
from imgsrv.urls import spec_limits

FIELDS = frozenset(
    {
        "source",
        "variants",
        "priority",
        "callback_url",
        "ttl",
        "delay_s",
        "run_at",
        "idempotency_key",
    }
)
MAX_DELAY_S = 30 * 86_400
MAX_CALLBACK_URL = 2048
MAX_IDEMPOTENCY_KEY = 255
_IPV4_LIKE = re.compile(r"^[0-9a-fA-FxX.]+$")


def parse_submission(body: bytes, settings: Settings, config: JobConfig) -> JobRequest:
    """Validate a ``POST /v1/jobs`` body; raises InvalidJob, InvalidSource or Forbidden*."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJob("body", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidJob("body", "must be a JSON object")
    # An optional field sent as null means the same as leaving it out.
    data = {name: value for name, value in data.items() if value is not None}
    for name in data:
        if name not in FIELDS:
            raise InvalidJob(str(name)[:64], "unknown field")
    raw_source = data.get("source")
    if not isinstance(raw_source, str):
        raise InvalidJob("source", "a source URL or path (string) is required")
    source = resolve_source(raw_source, settings)
    ttl = _ttl(data.get("ttl", DEFAULT_TTL), source, settings)
    variants = data.get("variants")
    if not isinstance(variants, list) or not variants:
        raise InvalidJob("variants", "a non-empty list of variant objects is required")
    if len(variants) > config.max_variants:
        raise InvalidJob("variants", f"at most {config.max_variants} variants per job")
    options = tuple(_variant(i, v, source, ttl, settings) for i, v in enumerate(variants))
    delay_ms, run_at_ms = _schedule(data.get("delay_s"), data.get("run_at"))
    return JobRequest(
        source=source,
        variants=tuple(variants),
        options=options,
        priority=_priority(data.get("priority", "normal")),
        ttl=ttl,
        delay_ms=delay_ms,
        run_at_ms=run_at_ms,
        callback_url=_callback_url(data.get("callback_url"), settings),
        idempotency_key=_idempotency_key(data.get("idempotency_key")),
    )


def _ttl(value: Any, source: str, settings: Settings) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidJob("ttl", "seconds (86400..259200) or a duration such as '2d'")
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
    if not isinstance(variant, dict):
        raise InvalidJob(where, 'must be an object of options, e.g. {"w": 320, "f": "webp"}')
    pairs: list[tuple[str, list[str]]] = []
    try:
        for name, value in variant.items():
            if name == "ttl":
                raise InvalidOption(name, "set ttl on the job; it applies to every variant")
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


def _priority(value: Any) -> Priority:
    if value not in PRIORITIES:
        raise InvalidJob("priority", "one of high, normal, low")
    return cast(Priority, value)


def _schedule(delay: Any, run_at: Any) -> tuple[int, int]:
    """(delay in ms, absolute Unix ms or 0) from ``delay_s`` or ``run_at``."""
    if delay is not None and run_at is not None:
        raise InvalidJob("run_at", "give delay_s or run_at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise InvalidJob("delay_s", "a number of seconds")
        if not 0 <= delay <= MAX_DELAY_S:
            raise InvalidJob("delay_s", f"must be within 0..{MAX_DELAY_S} seconds")
        return int(delay * 1000), 0
    if run_at is not None:
        if not isinstance(run_at, str):
            raise InvalidJob("run_at", "an RFC 3339 time, e.g. 2030-01-01T12:00:00Z")
        try:
            moment = datetime.fromisoformat(run_at)
        except ValueError:
            raise InvalidJob("run_at", "an RFC 3339 time, e.g. 2030-01-01T12:00:00Z") from None
        if moment.tzinfo is None:
            raise InvalidJob("run_at", "needs a time zone (Z or +hh:mm)")
        at_ms = int(moment.timestamp() * 1000)
        if at_ms > (time.time() + MAX_DELAY_S) * 1000:
            raise InvalidJob("run_at", f"at most {MAX_DELAY_S // 86_400} days ahead")
        return 0, max(at_ms, 1)
    return 0, 0


def _callback_url(value: Any, settings: Settings) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value or len(value) > MAX_CALLBACK_URL:
        raise InvalidJob("callback_url", f"an http(s) URL of at most {MAX_CALLBACK_URL} characters")
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


def _idempotency_key(value: Any) -> str:
    if value is None:
        return ""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY
        or not value.isprintable()
    ):
        raise InvalidJob("idempotency_key", f"1..{MAX_IDEMPOTENCY_KEY} printable characters")
    return value
