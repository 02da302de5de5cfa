"""Where upstreams may point: the operator's network policy, checked per connection.

Public (global unicast) addresses are allowed; loopback, private, link-local (cloud
metadata services included), shared, multicast, reserved and unspecified addresses are refused
unless a CIDR of ``[upstreams] allow_networks`` holds them. The client
implementation asks :meth:`NetworkPolicy.allows` with the address it is about
to connect to, after DNS, on every connection, so a name that resolves
differently later (DNS rebinding) is still caught. Nothing here resolves names
or opens connections.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
"""Cloud instance-metadata services (AWS, GCP, Azure; Alibaba's is not link-local)."""


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs from configuration; ValueError names a bad one."""
    networks = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not a network in CIDR notation") from None
    return tuple(networks)


class NetworkPolicy:
    """Which addresses upstream connections may reach."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed = parse_networks(allow_networks)

    def allows(self, address: str | IPAddress) -> bool:
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allowed):
            return True
        if ip in METADATA_ADDRESSES:
            return False
        # is_global is False for loopback, private, link-local, shared (CGNAT), reserved...
        return ip.is_global and not ip.is_multicast
