"""Who a request comes from: the client whose turn it is in the transform pool.

A request's client is the tenant of the API key it presents (``Authorization: Bearer``), else
its network address: the peer's own, or, when the peer is one of the configured trusted
proxies, the nearest address in ``X-Forwarded-For`` that is not a trusted proxy (a header
from anyone else is ignored, since any client can write one). IPv6 addresses count per /64:
one host or one subscriber usually holds a whole /64 and could otherwise take a turn per
address. An address names a client within a one-hour window, which is part of its key, so
that an address that changes hands does not carry its standing from one hour into the next.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from typing import Final

from imgsrv.sources.addresses import IPAddress, IPNetwork

WINDOW_SECONDS: Final = 3600
IPV6_CLIENT_PREFIX: Final = 64


def client_key(tenant: str | None, address: str, now: float | None = None) -> str:
    """The pool's key of a client: ``key:<tenant>``, else ``ip:<address>@<window>``."""
    if tenant:
        return "key:" + tenant
    window = int((time.time() if now is None else now) // WINDOW_SECONDS)
    return f"ip:{address}@{window}"


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[IPNetwork, ...]
) -> str:
    """The address that names a client (IPv6 as its /64), given a request's peer address
    and the values of its ``X-Forwarded-For`` headers, trusting only ``trusted`` proxies."""
    address = request_address(peer, forwarded_for, trusted)
    if address is None:
        return peer or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


def request_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[IPNetwork, ...]
) -> IPAddress | None:
    """The address a request comes from: the peer's, or, behind trusted proxies, the nearest
    forwarded one that is not such a proxy (None when the peer is not an IP address)."""
    address = _parse(peer) if peer is not None else None
    if address is None or not trusted or not _trusted(address, trusted):
        return address
    # Right to left: each trusted proxy appended the address it received the request from.
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        forwarded = _parse(hop)
        if forwarded is None:
            break  # garbage: stop at the last address a trusted proxy vouched for
        address = forwarded
        if not _trusted(forwarded, trusted):
            break
    return address


def _parse(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


def _trusted(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in trusted)
