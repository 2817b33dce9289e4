"""API keys of the job API: ``Authorization: Bearer <key>`` -> the tenant that owns jobs.

Keys come from the ``api_keys`` setting as ``tenant:key`` entries. A presented key is
compared with every configured key, always all of them and on SHA-256 digests of equal length,
so the time taken says neither which key nor how much of one matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from imgsrv.config import ConfigError

# Tenant names become part of Redis key names: a small alphabet keeps them unambiguous.
TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The configured keys; :meth:`tenant` authenticates one presented key."""

    def __init__(self, entries: Iterable[str]) -> None:
        """Parse ``tenant:key`` entries; raises ConfigError for malformed or duplicate ones."""
        self._digests: list[tuple[bytes, str]] = []
        self._keys: dict[str, str] = {}
        for entry in entries:
            tenant, sep, key = entry.partition(":")
            tenant, key = tenant.strip(), key.strip()
            if not sep or not key or not TENANT_RE.match(tenant):
                raise ConfigError(
                    "api_keys entries must be tenant:key with a tenant of letters, digits, "
                    "'.', '_' or '-' (at most 64) and a non-empty key"
                )
            if any(hmac.compare_digest(_digest(key), d) for d, _ in self._digests):
                raise ConfigError("api_keys: the same key is given twice")
            self._digests.append((_digest(key), tenant))
            # A tenant may have several keys (rotation); callbacks are signed with the first.
            self._keys.setdefault(tenant, key)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def tenant(self, presented: str) -> str | None:
        """The tenant owning ``presented``, or None when it matches no configured key."""
        wanted = _digest(presented)
        found: str | None = None
        for digest, tenant in self._digests:
            # No early exit: every request compares against every key.
            if hmac.compare_digest(wanted, digest):
                found = tenant
        return found

    def tenants(self) -> list[str]:
        """The configured tenants, sorted."""
        return sorted(self._keys)

    def key_of(self, tenant: str) -> str | None:
        """The (first) key of ``tenant``, used to sign its callbacks when no secret is set."""
        return self._keys.get(tenant)


def bearer_tenant(keys: ApiKeys, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The tenant of the valid ``Authorization: Bearer`` key among raw ASGI ``headers``.

    None without keys configured, without the header, or for a key that matches none.
    """
    if not keys:
        return None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return keys.tenant(token) if scheme.lower() == "bearer" and token else None
    return None
