"""The sans-IO part of the CNI endpoints: requests, routes, results, the registry."""

from __future__ import annotations

import ipaddress

import pytest

from router.cni.model import (
    DECODE_FAILURE,
    INVALID_CONFIG,
    INVALID_ENV,
    AddRequest,
    CniError,
    IpSpec,
    Record,
    RouteSpec,
    add_result,
    bridge_gateway,
    decode_body,
    dump_registry,
    host_veth,
    parse_add,
    parse_cni_args,
    parse_registry,
    route_ops,
    routes_for,
)
from router.kernel.port import Address, AddRoute, NetnsState, Route, Scope

NS = "/run/netns/c1"


def test_weave_ipam_add_request() -> None:
    req = parse_add({"containerId": "abc", "ifname": "eth0", "netns": NS,
                     "ipam": {"type": "weave-ipam", "subnet": "10.32.4.0/24",
                              "routes": [{"dst": "10.32.0.0/12"}]}, "hairpin": True})
    assert req.weave_ipam and req.hairpin and req.key == "abc/eth0"
    assert req.subnet == ipaddress.IPv4Network("10.32.4.0/24")
    assert req.routes == (RouteSpec(ipaddress.IPv4Network("10.32.0.0/12")),)


def test_delegated_add_request_takes_the_ipam_result() -> None:
    req = parse_add({"containerId": "abc", "ifname": "eth0", "netns": NS,
                     "result": {"ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
                                "routes": [{"dst": "0.0.0.0/0"}]}})
    assert not req.weave_ipam
    assert req.ips == (IpSpec(ipaddress.IPv4Interface("10.1.0.5/24"),
                              ipaddress.IPv4Address("10.1.0.1")),)


@pytest.mark.parametrize(("data", "code", "words"), [
    ({"ifname": "eth0", "netns": NS}, INVALID_ENV, "containerId is empty"),
    ({"containerId": "a", "ifname": "x" * 16, "netns": NS}, INVALID_ENV, "interface name"),
    ({"containerId": "a", "ifname": "eth0", "netns": NS, "ipam": {"subnet": "10.32.0.1/12"}},
     INVALID_CONFIG, "host bits"),
    ({"containerId": "a", "ifname": "eth0", "netns": NS, "result": {"ips": []}},
     INVALID_CONFIG, "no IPv4 address"),
    ({"containerId": "a", "ifname": "eth0", "netns": NS,
      "result": {"ips": [{"address": "fd00::1/64"}]}}, INVALID_CONFIG, "only IPv4"),
    ({"containerId": "a", "ifname": "eth0", "netns": NS, "timeout": 0}, INVALID_CONFIG,
     "timeout"),
])
def test_bad_requests_name_the_problem(data: dict[str, object], code: int, words: str) -> None:
    with pytest.raises(CniError) as info:
        parse_add(data)
    assert info.value.code == code
    assert words in info.value.msg


def test_body_that_is_not_a_json_object() -> None:
    for body in (b"{", b"[1]", b"\xff"):
        with pytest.raises(CniError) as info:
            decode_body(body)
        assert info.value.code == DECODE_FAILURE


def test_host_veth_names_are_short_distinct_and_ours() -> None:
    names = {host_veth(f"container{i}", "eth0") for i in range(1000)}
    assert len(names) == 1000
    assert all(len(n) <= 15 and n.startswith("vethwe") for n in names)
    assert host_veth("a", "eth0") != host_veth("a", "eth1")


def test_default_route_via_gateway_or_exposed_bridge() -> None:
    cidr = ipaddress.IPv4Interface("10.32.0.5/12")
    req = AddRequest("a", "eth0", NS)
    host = NetnsState(None, addresses=(Address("weave", ipaddress.IPv4Interface("10.32.0.1/12")),))
    bridge_ip = bridge_gateway(host, "weave", cidr)
    assert bridge_ip == ipaddress.IPv4Address("10.32.0.1")
    assert routes_for(req, [IpSpec(cidr)], bridge_ip) == [
        RouteSpec(ipaddress.IPv4Network("0.0.0.0/0"), bridge_ip)]
    assert routes_for(req, [IpSpec(cidr)], None) == []  # no gateway: the subnet route only
    gw = ipaddress.IPv4Address("10.32.0.9")
    assert routes_for(req, [IpSpec(cidr, gw)], bridge_ip)[0].gw == gw


def test_route_ops_skip_what_is_there() -> None:
    gw = ipaddress.IPv4Address("10.32.0.1")
    routes = [RouteSpec(ipaddress.IPv4Network("0.0.0.0/0"), gw),
              RouteSpec(ipaddress.IPv4Network("10.40.0.0/16"))]
    ips = [IpSpec(ipaddress.IPv4Interface("10.32.0.5/12"))]
    ops = route_ops(routes, ips, "eth0", NS, ())
    assert ops == [AddRoute(Route(routes[0].dst, "eth0", gw), NS),
                   AddRoute(Route(routes[1].dst, "eth0", scope=Scope.LINK), NS)]
    existing = tuple(op.route for op in ops if isinstance(op, AddRoute))
    assert route_ops(routes, ips, "eth0", NS, existing) == []


def test_add_result_is_cni_1_0() -> None:
    req = AddRequest("a", "eth0", NS)
    ip = IpSpec(ipaddress.IPv4Interface("10.32.0.5/12"), ipaddress.IPv4Address("10.32.0.1"))
    out = add_result(req, host_mac="aa:aa:aa:aa:aa:aa", container_mac="bb:bb:bb:bb:bb:bb",
                     ips=[ip], routes=[])
    assert out == {
        "interfaces": [{"name": host_veth("a", "eth0"), "mac": "aa:aa:aa:aa:aa:aa"},
                       {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": NS}],
        "ips": [{"address": "10.32.0.5/12", "interface": 1, "gateway": "10.32.0.1"}],
        "routes": [{"dst": "224.0.0.0/4"}],
    }


def test_registry_round_trip_skips_junk() -> None:
    reg = {"a/eth0": Record("a", "eth0", NS, True, ["10.32.0.5/12"])}
    assert parse_registry(dump_registry(reg)) == reg
    assert parse_registry('{"x": 1, "y": {"containerId": 2}}') == {}
    assert parse_registry("not json") == {}
    assert parse_registry(None) == {}


def test_gateway_outside_the_subnet_gets_a_link_route_first() -> None:
    gw = ipaddress.IPv4Address("10.99.0.1")
    ips = [IpSpec(ipaddress.IPv4Interface("10.32.0.5/12"))]
    ops = route_ops([RouteSpec(ipaddress.IPv4Network("0.0.0.0/0"), gw)], ips, "eth0", NS, ())
    assert ops == [
        AddRoute(Route(ipaddress.IPv4Network("10.99.0.1/32"), "eth0", scope=Scope.LINK), NS),
        AddRoute(Route(ipaddress.IPv4Network("0.0.0.0/0"), "eth0", gw), NS),
    ]


def test_cni_args_are_kept_as_pairs_and_recorded() -> None:
    raw = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;junk;=x;K=a=b"
    assert parse_cni_args(raw) == (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "shop"),
                                   ("K8S_POD_NAME", "web-0"), ("K", "a=b"))
    assert parse_cni_args("") == () and parse_cni_args(None) == ()
    with pytest.raises(CniError) as err:
        parse_cni_args("K=" + "x" * 5000)
    assert err.value.code == 4
    req = parse_add({"containerId": "abc", "ifname": "eth0", "netns": NS,
                     "args": "K8S_POD_NAME=web-0"})
    assert req.args == (("K8S_POD_NAME", "web-0"),)
