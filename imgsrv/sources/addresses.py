"""The SSRF guard's address policy: which IP addresses sources and callbacks may reach.

Public unicast addresses pass. Everything that reaches this host, a private network or a
cloud's metadata service is refused, in every spelling that reaches it (IPv6 forms that embed
an IPv4 address, the legacy ``inet_aton`` numbers), unless the operator allows a network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_PART_RE = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")

# Cloud metadata endpoints. Most sit in ranges refused anyway (link-local, CGNAT, ULA); they are
# listed so the intent is explicit, and a few (Azure's wire server) are otherwise public.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS resolver
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "192.0.0.192",  # Oracle Cloud
    )
)

# Ranges that the standard library's is_global/is_private do not cover on every Python version.
_EXTRA_FORBIDDEN_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.x.y.z reaches the local host on Linux
        "100.64.0.0/10",  # carrier-grade NAT, also Alibaba metadata
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "64:ff9b:1::/48",  # local-use NAT64
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to, if any (mapped, compatible, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _is_public(address: IPAddress) -> bool:
    if address in METADATA_ADDRESSES:
        return False
    if (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
    ):
        return False
    if any(address in network for network in _EXTRA_FORBIDDEN_NETWORKS):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        # Without this, ::ffff:127.0.0.1 or 64:ff9b::a00:1 would reach an IPv4 address
        # that is refused when written plainly.
        embedded = _embedded_ipv4(address)
        if embedded is not None and not _is_public(embedded):
            return False
    return True


def address_allowed(address: IPAddress, allowed_networks: Iterable[IPNetwork] = ()) -> bool:
    """Whether the SSRF guard lets a connection to ``address`` through.

    Public unicast addresses pass; loopback, private, CGNAT, link-local, unique-local,
    multicast, unspecified, reserved and cloud-metadata addresses (IPv4 or IPv6, including IPv6
    forms that embed an IPv4 address) are refused unless they are inside ``allowed_networks``.
    """
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
    for network in allowed_networks:
        if any(candidate in network for candidate in candidates):
            return True
    return _is_public(address)


def parse_ip_literal(host: str) -> IPAddress | None:
    """Parse a URL host the way the system resolver would if it is an IP address.

    Besides dotted quads this accepts the legacy ``inet_aton`` forms that ``getaddrinfo`` also
    accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``), so that they are refused here
    rather than only at connect time.
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART_RE.match(part) for part in parts):
        return None
    numbers: list[int] = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    # inet_aton: every part but the last is one byte; the last fills the remaining bytes.
    *leading, last = numbers
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


@lru_cache(maxsize=16)
def parse_networks(allowed_networks: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Allowed networks as given in the settings, parsed once per distinct tuple."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
