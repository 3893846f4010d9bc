"""router/kernel/route_overlap.py: Weave's CheckNetworkFree over a hand-built snapshot."""

from __future__ import annotations

import ipaddress

import pytest

from router.errors import ConfigError
from router.kernel.port import Address, Link, NetnsState, Route
from router.kernel.route_overlap import check_range_free, host_routes, overlaps

NET = ipaddress.IPv4Network
IF = ipaddress.IPv4Interface

HOST = NetnsState(
    netns=None,
    links=(Link(1, "lo", "", "00:00:00:00:00:00", 65536, True),
           Link(2, "eth0", "veth", "aa:00:00:00:00:01", 1500, True),
           Link(3, "weave", "bridge", "aa:00:00:00:00:02", 1376, True),
           Link(4, "vethwepl1", "veth", "aa:00:00:00:00:03", 1376, True, master="weave"),
           Link(5, "dock", "bridge", "aa:00:00:00:00:04", 1500, True)),
    addresses=(Address("lo", IF("127.0.0.1/8")), Address("eth0", IF("192.168.91.4/24")),
               Address("weave", IF("10.32.0.1/12")), Address("dock", IF("172.17.0.1/32"))),
    routes=(Route(NET("0.0.0.0/0"), "eth0", ipaddress.IPv4Address("192.168.91.254")),
            Route(NET("10.99.0.0/16"), "eth0", ipaddress.IPv4Address("192.168.91.1")),
            Route(NET("10.40.0.0/16"), "weave")),
)


def test_the_routes_are_the_users_and_the_addresses_not_the_bridges() -> None:
    assert sorted(host_routes(HOST)) == [(NET("10.99.0.0/16"), "eth0"),
                                        (NET("192.168.91.0/24"), "eth0")]


@pytest.mark.parametrize(("subnet", "route"), [
    ("192.168.91.0/24", "192.168.91.0/24 dev eth0"),  # the underlay (issue 10, item 3)
    ("192.168.91.128/25", "192.168.91.0/24 dev eth0"),  # inside it
    ("192.168.0.0/16", "192.168.91.0/24 dev eth0"),  # around it
    ("0.0.0.0/0", "10.99.0.0/16 dev eth0"),  # everything
    ("10.96.0.0/12", "10.99.0.0/16 dev eth0"),  # a user's route
])
def test_an_overlapping_range_is_refused_naming_the_route(subnet: str, route: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_range_free(NET(subnet), HOST)
    assert str(caught.value) == (f"--ipalloc-range {subnet} overlaps with the host's route "
                                 f"{route}: pick another range (the same on every host)")


@pytest.mark.parametrize("subnet", [
    "10.32.0.0/12",  # the weave bridge's own address
    "10.40.0.0/16",  # a route through the weave bridge
    "127.0.0.0/8",  # loopback: no main-table route (as Weave)
    "172.17.0.0/16",  # a /32 address makes no main-table route
    "192.168.92.0/24",
])
def test_a_free_range_passes(subnet: str) -> None:
    check_range_free(NET(subnet), HOST)


def test_overlaps_is_symmetric() -> None:
    assert overlaps(NET("10.0.0.0/8"), NET("10.1.0.0/16"))
    assert overlaps(NET("10.1.0.0/16"), NET("10.0.0.0/8"))
    assert not overlaps(NET("10.0.0.0/16"), NET("10.1.0.0/16"))
