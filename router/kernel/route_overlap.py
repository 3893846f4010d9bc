"""Is an address range free on this host? Weave's ``CheckNetworkFree``, over a snapshot.

Weave refuses an ``--ipalloc-range`` that overlaps a route of the host: containers would
get addresses the host already reaches some other way (another host's underlay address,
a VPN, a docker bridge), and traffic to them would go astray. Two networks overlap when
either contains the other's first address.

The routes looked at are those of the main table (:class:`~router.kernel.port.NetnsState`):
the ones user space added (``routes``, the default route aside: it covers everything and
Weave ignores it too) and the ones the kernel derives from each address (``addresses``: a
``192.168.91.4/24`` on eth0 is the route ``192.168.91.0/24 dev eth0``; ``/32`` addresses
and loopback make no main-table route). Routes through the weave bridge and our own
devices do not count: they are the range's own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from router.errors import ConfigError
from router.kernel.plumbing import BRIDGE_NAME, DEVICE_PREFIX
from router.kernel.port import NetnsState

LOOPBACK = "lo"


def _ours(host: NetnsState, ifname: str | None, bridge: str) -> bool:
    if ifname is None:
        return False
    if ifname == bridge or ifname.startswith(DEVICE_PREFIX):
        return True
    link = host.link(ifname)
    return link is not None and link.master == bridge


def host_routes(host: NetnsState, *, bridge: str = BRIDGE_NAME
                ) -> Iterator[tuple[ipaddress.IPv4Network, str]]:
    """The IPv4 main-table routes of ``host`` that are not the weave bridge's: (dst, device)."""
    for route in host.routes:
        if (isinstance(route.dst, ipaddress.IPv4Network) and route.dst.prefixlen > 0
                and not _ours(host, route.ifname, bridge)):
            yield route.dst, route.ifname or "(no device)"
    for address in host.addresses:
        cidr = address.cidr
        if (isinstance(cidr, ipaddress.IPv4Interface) and cidr.network.prefixlen < 32
                and address.ifname != LOOPBACK and not _ours(host, address.ifname, bridge)):
            yield cidr.network, address.ifname


def overlaps(a: ipaddress.IPv4Network, b: ipaddress.IPv4Network) -> bool:
    """Either network contains the other's first address (Weave's ``overlaps``)."""
    return a.network_address in b or b.network_address in a


def check_range_free(subnet: ipaddress.IPv4Network, host: NetnsState, *,
                     flag: str = "--ipalloc-range", bridge: str = BRIDGE_NAME) -> None:
    """ConfigError naming the first route of ``host`` that ``subnet`` overlaps."""
    for dst, device in host_routes(host, bridge=bridge):
        if overlaps(subnet, dst):
            raise ConfigError(f"{flag} {subnet} overlaps with the host's route {dst} dev "
                              f"{device}: pick another range (the same on every host)")
