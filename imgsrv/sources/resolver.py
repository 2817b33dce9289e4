"""Resolving a source or callback host, and checking every address it resolves to.

Both HTTP clients (source downloads and callbacks) connect only to addresses returned from
here, so that there is no second DNS lookup an attacker could answer differently: a host is
refused as a whole if *any* of its addresses is forbidden.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

from imgsrv.errors import ForbiddenSource, SourceError
from imgsrv.sources.addresses import IPAddress, IPNetwork, address_allowed, parse_ip_literal


async def resolve_checked(
    host: str, port: int, allowed_networks: Iterable[IPNetwork] = ()
) -> list[IPAddress]:
    """The addresses of ``host``, all allowed by the SSRF guard.

    Raises :class:`ForbiddenSource` when any of them is not, :class:`SourceError` when the
    host does not resolve.
    """
    addresses = await _resolve(host, port)
    allowed = tuple(allowed_networks)
    if not all(address_allowed(a, allowed) for a in addresses):
        raise ForbiddenSource(f"source host {host!r} resolves to a non-public address")
    return addresses


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = parse_ip_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise SourceError(f"could not resolve source host {host!r}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # Scope ids (fe80::1%eth0) only occur on link-local addresses, which are refused
        # unless allowed; keep the scope so such an allowed address stays reachable.
        address = ipaddress.ip_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise SourceError(f"could not resolve source host {host!r}")
    return addresses
