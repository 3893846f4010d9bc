"""Kernel plumbing plans (router.kernel.plumbing) run against the in-memory port (fake.py).

The fake stands in for the kernel: plans are computed from its snapshots, executed on it,
and the resulting state is read back through the same public port API. The same plans run
on the real kernel in tests/integration/test_kernel_netlink.py.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import ClosedError, ConfigError, KernelError, LocalProtocolError
from router.kernel.fake import FakeKernel
from router.kernel.plumbing import (
    BRIDGE_NAME,
    CONTAINER_IFNAME,
    TAP_NAME,
    Attachment,
    attach_plan,
    attachment,
    bridge_plan,
    detach_plan,
    host_veth_name,
    multicast_route_via,
    reset_plan,
    tap_plan,
)
from router.kernel.port import (
    AddAddress,
    AddBridge,
    AddRoute,
    AddVeth,
    DeleteAddress,
    DeleteLink,
    DeleteRoute,
    KernelPort,
    Plan,
    Route,
    Scope,
    SetDown,
    SetMac,
    SetMaster,
    SetMtu,
    SetUp,
    check_mac,
    check_name,
    execute,
    netns_inode,
    resolve_netns,
)

HOST = "/run/netns/h1"
C1 = "/run/netns/c1"
C2 = "/run/netns/c2"
MAC1 = "02:00:00:00:aa:01"
MTU = 1376
A1 = ipaddress.IPv4Interface("10.32.1.1/12")
A2 = ipaddress.IPv4Interface("10.32.1.2/12")
A3 = ipaddress.IPv4Interface("10.40.0.1/16")
VETH1 = host_veth_name(0xF0000101)
VETH2 = host_veth_name(0xF0000102)


def kernel(*containers: str) -> FakeKernel:
    fake = FakeKernel()
    fake.add_netns(HOST)
    for c in containers:
        fake.add_netns(c)
    return fake


async def converge(port: KernelPort, plan: Plan) -> None:
    await execute(port, plan)


async def launch(port: KernelPort, mtu: int = MTU) -> None:
    """Bridge plus an open, enslaved TAP: what the router sets up on start."""
    await execute(port, bridge_plan(await port.snapshot(HOST), mtu=mtu, mac=MAC1))
    await port.open_tap(TAP_NAME, netns=HOST)
    await execute(port, tap_plan(await port.snapshot(HOST), mtu=mtu))


async def attach(port: KernelPort, container: str, veth: str, *cidrs: ipaddress.IPv4Interface,
                 mac: str | None = None, multicast: bool = True) -> Plan:
    plan = attach_plan(await port.snapshot(HOST), await port.snapshot(container),
                       host_veth=veth, cidrs=cidrs, mac=mac, multicast_route=multicast)
    await execute(port, plan)
    return plan


async def detach(port: KernelPort, container: str, *cidrs: ipaddress.IPv4Interface) -> Plan:
    plan = detach_plan(await port.snapshot(container), cidrs=cidrs or None)
    await execute(port, plan)
    return plan


# -- bridge ----------------------------------------------------------------------------------


async def test_bridge_plan_creates_an_up_bridge_and_then_converges() -> None:
    port = kernel()
    plan = bridge_plan(await port.snapshot(HOST), mtu=MTU, mac=MAC1)
    assert plan.ops == (AddBridge(BRIDGE_NAME, MTU, mac=MAC1, netns=HOST), SetUp("weave", HOST))
    await execute(port, plan)
    bridge = (await port.snapshot(HOST)).link("weave")
    assert bridge is not None
    assert (bridge.kind, bridge.mtu, bridge.mac, bridge.up) == ("bridge", MTU, MAC1, True)
    assert not bridge_plan(await port.snapshot(HOST), mtu=MTU, mac=MAC1)


async def test_bridge_plan_repairs_mtu_mac_and_state_of_an_existing_bridge() -> None:
    port = kernel()
    await port.apply([AddBridge("weave", 1500, netns=HOST)])
    plan = bridge_plan(await port.snapshot(HOST), mtu=MTU, mac=MAC1)
    assert plan.ops == (SetMtu("weave", MTU, HOST), SetMac("weave", MAC1, HOST),
                        SetUp("weave", HOST))
    await execute(port, plan)
    assert not bridge_plan(await port.snapshot(HOST), mtu=MTU, mac=MAC1)


async def test_bridge_plan_refuses_a_weave_link_that_is_not_a_bridge() -> None:
    port = kernel()
    await port.apply([AddVeth("weave", "weave-peer", 1500, peer_netns=HOST, netns=HOST)])
    with pytest.raises(KernelError) as info:
        bridge_plan(await port.snapshot(HOST), mtu=MTU)
    assert info.value.errno == errno.EEXIST
    assert "reset" in str(info.value)


# -- TAP -------------------------------------------------------------------------------------


async def test_tap_is_enslaved_up_and_sized_then_converges() -> None:
    port = kernel()
    await launch(port)
    tap = (await port.snapshot(HOST)).link(TAP_NAME)
    assert tap is not None
    assert (tap.kind, tap.master, tap.up, tap.mtu) == ("tun", "weave", True, MTU)
    assert not tap_plan(await port.snapshot(HOST), mtu=MTU)


async def test_tap_open_twice_is_busy_and_closing_removes_the_device() -> None:
    port = kernel()
    await execute(port, bridge_plan(await port.snapshot(HOST), mtu=MTU))
    device = await port.open_tap(TAP_NAME, netns=HOST)
    assert device.name == TAP_NAME
    with pytest.raises(KernelError) as info:
        await port.open_tap(TAP_NAME, netns=HOST)
    assert info.value.errno == errno.EBUSY
    with pytest.raises(KernelError) as info:
        await port.open_tap("weave", netns=HOST)
    assert info.value.errno == errno.EINVAL
    device.close()
    device.close()
    assert (await port.snapshot(HOST)).link(TAP_NAME) is None
    assert port.statistics().taps_opened == 1


async def test_tap_plan_needs_an_open_tap_and_a_bridge() -> None:
    port = kernel()
    with pytest.raises(KernelError) as info:
        tap_plan(await port.snapshot(HOST), mtu=MTU)
    assert info.value.errno == errno.ENODEV and "launch" in str(info.value)
    await execute(port, bridge_plan(await port.snapshot(HOST), mtu=MTU))
    with pytest.raises(KernelError) as info:
        tap_plan(await port.snapshot(HOST), mtu=MTU)
    assert info.value.errno == errno.ENODEV and "not open" in str(info.value)


# -- attach ----------------------------------------------------------------------------------


async def test_attach_makes_ethwe_with_mac_address_and_multicast_route() -> None:
    port = kernel(C1)
    await launch(port)
    await attach(port, C1, VETH1, A1, mac="02:00:00:00:00:c1")
    host, c1 = await port.snapshot(HOST), await port.snapshot(C1)
    ethwe = c1.link(CONTAINER_IFNAME)
    assert ethwe is not None
    assert (ethwe.kind, ethwe.mac, ethwe.up, ethwe.mtu) == ("veth", "02:00:00:00:00:c1", True, MTU)
    assert c1.addresses_of("ethwe") == (A1,)
    assert c1.routes == (Route(ipaddress.ip_network("224.0.0.0/4"), "ethwe", scope=Scope.LINK),)
    host_end = host.link(VETH1)
    assert host_end is not None
    assert (host_end.master, host_end.up, host_end.mtu) == ("weave", True, MTU)
    assert host.link("ethwe") is None  # never visible in the host
    assert attachment(c1) == Attachment(mac="02:00:00:00:00:c1", cidrs=(A1,))
    again = attach_plan(host, c1, host_veth=VETH1, cidrs=[A1], mac="02:00:00:00:00:c1")
    assert not again


async def test_attach_again_adds_only_new_addresses_and_missing_route() -> None:
    port = kernel(C1)
    await launch(port)
    await attach(port, C1, VETH1, A1, multicast=False)
    assert (await port.snapshot(C1)).routes == ()
    plan = await attach(port, C1, VETH1, A1, A2, A2)
    assert plan.ops == (AddAddress("ethwe", A2, C1), AddRoute(multicast_route_via(), C1))
    assert plan.rollback == (DeleteAddress("ethwe", A2, C1),)
    assert (await port.snapshot(C1)).addresses_of("ethwe") == (A1, A2)


async def test_attach_mtu_follows_the_bridge_unless_given() -> None:
    port = kernel(C1, C2)
    await launch(port, mtu=9000)
    await attach(port, C1, VETH1, A1)
    assert (await port.snapshot(C1)).link("ethwe").mtu == 9000  # type: ignore[union-attr]
    plan = attach_plan(await port.snapshot(HOST), await port.snapshot(C2), host_veth=VETH2,
                       cidrs=[A2], mtu=1400)
    await execute(port, plan)
    assert (await port.snapshot(C2)).link("ethwe").mtu == 1400  # type: ignore[union-attr]


async def test_attach_without_bridge_names_the_problem() -> None:
    port = kernel(C1)
    with pytest.raises(KernelError) as info:
        attach_plan(await port.snapshot(HOST), await port.snapshot(C1), host_veth=VETH1,
                    cidrs=[A1])
    assert info.value.errno == errno.ENODEV
    assert 'bridge "weave" not present' in str(info.value)


async def test_attach_refuses_a_foreign_ethwe_and_the_host_itself() -> None:
    port = kernel(C1)
    await launch(port)
    await port.apply([AddBridge("ethwe", 1500, netns=C1)])
    with pytest.raises(KernelError) as info:
        attach_plan(await port.snapshot(HOST), await port.snapshot(C1), host_veth=VETH1,
                    cidrs=[A1])
    assert info.value.errno == errno.EEXIST
    host = await port.snapshot(HOST)
    with pytest.raises(LocalProtocolError):
        attach_plan(host, host, host_veth=VETH1, cidrs=[A1])


async def test_failed_attach_rolls_back_everything_it_created() -> None:
    port = kernel(C1)
    await launch(port)
    port.fail_when(lambda op: isinstance(op, AddAddress), errno.ENOSPC)
    with pytest.raises(KernelError) as info:
        await attach(port, C1, VETH1, A1)
    assert info.value.errno == errno.ENOSPC
    assert (await port.snapshot(HOST)).link(VETH1) is None
    assert (await port.snapshot(C1)).link("ethwe") is None
    assert port.statistics().ops_failed == 1


async def test_stale_host_end_is_replaced() -> None:
    port = kernel(C1)
    await launch(port)
    await port.apply([AddVeth(VETH1, "elsewhere", MTU, peer_netns=HOST, netns=HOST)])
    plan = attach_plan(await port.snapshot(HOST), await port.snapshot(C1), host_veth=VETH1,
                       cidrs=[A1])
    assert plan.ops[0] == DeleteLink(VETH1, HOST)
    await execute(port, plan)
    host = await port.snapshot(HOST)
    assert host.link("elsewhere") is None
    assert host.link(VETH1).master == "weave"  # type: ignore[union-attr]


async def test_attach_reenslaves_a_released_host_end() -> None:
    port = kernel(C1)
    await launch(port)
    await attach(port, C1, VETH1, A1)
    await port.apply([SetMaster(VETH1, None, HOST), SetDown(VETH1, HOST)])
    plan = await attach(port, C1, VETH1, A1)
    assert plan.ops == (SetMaster(VETH1, "weave", HOST), SetUp(VETH1, HOST))


# -- detach and reset ------------------------------------------------------------------------


async def test_detach_one_address_keeps_the_veth_and_the_last_removes_it() -> None:
    port = kernel(C1)
    await launch(port)
    await attach(port, C1, VETH1, A1, A2)
    plan = await detach(port, C1, A1, A3)  # A3 was never there: ignored
    # A1 is the primary of 10.32.0.0/12: A2 goes with it in the kernel, so it comes back.
    assert plan.ops == (DeleteAddress("ethwe", A2, C1), DeleteAddress("ethwe", A1, C1),
                        AddAddress("ethwe", A2, C1))
    assert (await port.snapshot(C1)).addresses_of("ethwe") == (A2,)
    plan = await detach(port, C1, A2)
    assert plan.ops == (DeleteLink("ethwe", C1),)
    assert (await port.snapshot(C1)).link("ethwe") is None
    assert (await port.snapshot(HOST)).link(VETH1) is None
    assert not detach_plan(await port.snapshot(C1))
    assert attachment(await port.snapshot(C1)) is None


async def test_detach_keeps_secondaries_and_other_subnets() -> None:
    port = kernel(C1)
    await launch(port)
    a4 = ipaddress.IPv4Interface("10.32.1.4/12")
    await attach(port, C1, VETH1, A1, A2, A3, a4)
    plan = await detach(port, C1, A2)  # a secondary: nothing else moves
    assert plan.ops == (DeleteAddress("ethwe", A2, C1),)
    plan = await detach(port, C1, A3)  # alone in its subnet
    assert plan.ops == (DeleteAddress("ethwe", A3, C1),)
    assert (await port.snapshot(C1)).addresses_of("ethwe") == (A1, a4)


async def test_fake_deleting_a_primary_drops_its_secondaries() -> None:
    port = kernel(C1)
    await port.apply([AddVeth("a", "b", 1500, peer_netns=HOST, netns=C1),
                      AddAddress("a", A1, C1), AddAddress("a", A3, C1), AddAddress("a", A2, C1)])
    await port.apply([DeleteAddress("a", A1, C1)])
    assert (await port.snapshot(C1)).addresses_of("a") == (A3,)


async def test_detach_all_removes_veth_on_both_sides() -> None:
    port = kernel(C1)
    await launch(port)
    await attach(port, C1, VETH1, A1, A2)
    await detach(port, C1)
    assert (await port.snapshot(C1)).links == ((await port.snapshot(C1)).link("lo"),)
    assert (await port.snapshot(HOST)).link(VETH1) is None


async def test_reset_removes_bridge_tap_and_veths_but_not_other_links() -> None:
    port = kernel(C1, C2)
    await launch(port)
    await attach(port, C1, VETH1, A1)
    await attach(port, C2, VETH2, A2)
    await port.apply([AddVeth("eth0", "lan0", 1500, peer_netns=C2, netns=HOST)])
    plan = reset_plan(await port.snapshot(HOST))
    assert plan.ops[-1] == DeleteLink("weave", HOST)
    assert {op.name for op in plan.ops if isinstance(op, DeleteLink)} == {
        "weave", TAP_NAME, VETH1, VETH2}
    await execute(port, plan)
    host = await port.snapshot(HOST)
    assert sorted(link.name for link in host.links) == ["eth0", "lo"]
    assert (await port.snapshot(C1)).link("ethwe") is None
    assert (await port.snapshot(C2)).link("ethwe") is None
    assert not reset_plan(host)


# -- names -----------------------------------------------------------------------------------


def test_host_veth_names_fit_and_are_distinct() -> None:
    inodes = [0xF0000000, 0xF0000001, 0xF0001234, 0xFFFFFFFF]
    names = [host_veth_name(i) for i in inodes]
    assert len(set(names)) == 4
    for name in names:
        assert check_name(name) == name and name.startswith("vethwepl")


@pytest.mark.parametrize("bad", ["", "a" * 16, "a/b", "a b", ".", ".."])
def test_bad_interface_names_are_our_bug(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        check_name(bad)


@pytest.mark.parametrize("bad", ["02:00:00:00:00", "02-00-00-00-00-01", "AA:BB:CC:DD:EE:FF"])
def test_bad_macs_are_our_bug(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        check_mac(bad)


def test_ops_read_like_commands() -> None:
    assert str(AddBridge("weave", MTU, netns=HOST)) == f"add bridge weave mtu {MTU} in {HOST}"
    assert str(AddRoute(multicast_route_via())) == "add route 224.0.0.0/4 dev ethwe scope link"
    assert str(SetMaster("x", None)) == "set x nomaster"


# -- the fake's kernel semantics ---------------------------------------------------------


async def expect(port: FakeKernel, op: object, code: int) -> None:
    with pytest.raises(KernelError) as info:
        await port.apply([op])  # type: ignore[list-item]
    assert info.value.errno == code, info.value


async def test_fake_reports_the_kernels_errnos() -> None:
    port = kernel(C1)
    net = ipaddress.IPv4Network
    await port.apply([AddBridge("br", 1500, netns=C1),
                      AddVeth("a", "b", 1500, peer_netns=C1, netns=C1)])
    await expect(port, AddBridge("br", 1500, netns=C1), errno.EEXIST)
    await expect(port, AddVeth("x", "a", 1500, peer_netns=C1, netns=C1), errno.EEXIST)
    await expect(port, AddBridge("big", 70000, netns=C1), errno.EINVAL)
    await expect(port, SetMac("a", "01:00:5e:00:00:01", C1), errno.EADDRNOTAVAIL)
    await expect(port, DeleteLink("nope", C1), errno.ENODEV)
    await expect(port, SetMaster("a", "b", C1), errno.EOPNOTSUPP)
    await expect(port, SetMaster("br", "br", C1), errno.ELOOP)
    await expect(port, DeleteAddress("a", A1, C1), errno.EADDRNOTAVAIL)
    await expect(port, AddRoute(Route(net("10.9.0.0/16"), "a"), C1), errno.ENETDOWN)
    await expect(port, DeleteRoute(Route(net("10.9.0.0/16"), "a"), C1), errno.ESRCH)
    await expect(port, SetUp("a", "/run/netns/gone"), errno.ENOENT)
    await port.apply([SetUp("a", C1), AddAddress("a", A1, C1)])
    await expect(port, AddAddress("a", A1, C1), errno.EEXIST)
    gw = Route(net("10.99.0.0/16"), gateway=ipaddress.ip_address("10.32.0.9"))
    await port.apply([AddRoute(gw, C1)])
    assert (await port.snapshot(C1)).routes == (Route(gw.dst, "a", gw.gateway),)
    await expect(port, AddRoute(gw, C1), errno.EEXIST)
    far = Route(net("10.98.0.0/16"), gateway=ipaddress.ip_address("192.0.2.1"))
    await expect(port, AddRoute(far, C1), errno.ENETUNREACH)
    assert port.statistics().ops_failed == 14


async def test_fake_down_drops_routes_and_veth_dies_as_a_pair() -> None:
    port = kernel(C1)
    await port.apply([AddVeth("a", "b", 1500, peer_netns=HOST, netns=C1), SetUp("a", C1),
                      AddAddress("a", A1, C1), AddRoute(multicast_route_via("a"), C1)])
    await port.apply([SetDown("a", C1)])
    state = await port.snapshot(C1)
    assert state.routes == () and state.addresses_of("a") == (A1,)
    await port.apply([DeleteLink("b", HOST)])
    assert (await port.snapshot(C1)).link("a") is None
    assert (await port.snapshot(C1)).addresses == ()


async def test_fake_namespace_deletion_takes_veth_peers_along() -> None:
    port = kernel(C1)
    await launch(port)
    await attach(port, C1, VETH1, A1)
    port.delete_netns(C1)
    assert (await port.snapshot(HOST)).link(VETH1) is None
    assert C1 not in port.namespaces()
    with pytest.raises(KernelError) as info:
        port.add_netns(HOST)
    assert info.value.errno == errno.EEXIST


async def test_fake_counts_and_closes() -> None:
    port = kernel()
    await launch(port)
    stats = port.statistics()
    assert (stats.ops_applied, stats.taps_opened) == (5, 1)
    assert stats.snapshots == 2
    await port.aclose()
    with pytest.raises(ClosedError):
        await port.snapshot(HOST)


# -- property: any sequence of attaches and detaches keeps host and containers consistent ----

CONTAINERS = (C1, C2, "/run/netns/c3")
POOL = (A1, A2, A3, ipaddress.IPv4Interface("10.32.9.9/24"))
ACTION = st.tuples(st.sampled_from(("attach", "detach", "detach-all")),
                   st.integers(0, len(CONTAINERS) - 1), st.sets(st.sampled_from(POOL)))


@settings(max_examples=60, deadline=None)
@given(st.lists(ACTION, max_size=12))
def test_attach_detach_sequences_keep_host_and_containers_consistent(
    actions: list[tuple[str, int, set[ipaddress.IPv4Interface]]],
) -> None:
    trio.run(_run_actions, actions)


async def _run_actions(actions: list[tuple[str, int, set[ipaddress.IPv4Interface]]]) -> None:
    port = kernel(*CONTAINERS)
    await launch(port)
    model: dict[int, set[ipaddress.IPv4Interface]] = {}
    for verb, i, cidrs in actions:
        c, veth = CONTAINERS[i], host_veth_name(0xF0000200 + i)
        ordered = sorted(cidrs)
        if verb == "attach":
            await attach(port, c, veth, *ordered)
            model.setdefault(i, set()).update(cidrs)
            again = attach_plan(await port.snapshot(HOST), await port.snapshot(c),
                                host_veth=veth, cidrs=ordered)
            assert not again, again
        elif i in model:
            await detach(port, c, *(ordered if verb == "detach" else ()))
            remaining = model[i] - cidrs if verb == "detach" and cidrs else set()
            if remaining:
                model[i] = remaining
            else:
                del model[i]
        host = await port.snapshot(HOST)
        for j, cj in enumerate(CONTAINERS):
            state = await port.snapshot(cj)
            assert set(state.addresses_of("ethwe")) == model.get(j, set())
            assert (state.link("ethwe") is not None) == (j in model)
            host_end = host.link(host_veth_name(0xF0000200 + j))
            assert (host_end is not None) == (j in model)
            assert host_end is None or host_end.master == "weave"
    await execute(port, reset_plan(await port.snapshot(HOST)))
    assert [link.name for link in (await port.snapshot(HOST)).links] == ["lo"]


# -- naming containers -----------------------------------------------------------------------


def test_resolve_netns_by_name_path_and_pid(tmp_path: Path) -> None:
    (tmp_path / "c1").symlink_to("/proc/self/ns/net")
    own = "/proc/self/ns/net"
    assert resolve_netns("c1", run_dir=str(tmp_path), allow_own=True) == str(tmp_path / "c1")
    assert resolve_netns(own, allow_own=True) == own
    pid = str(os.getpid())
    assert resolve_netns(pid, allow_own=True) == f"/proc/{pid}/ns/net"
    assert netns_inode(own) == os.stat(own).st_ino


@pytest.mark.parametrize(("spec", "words"), [
    ("", "empty"),
    ("missing", "no network namespace"),
    ("plain-file", "not a network namespace"),
    ("4194999", "no process"),
    ("..", "not a namespace name"),
    ("/nonexistent/ns", "no network namespace"),
])
def test_resolve_netns_rejects_bad_specs(tmp_path: Path, spec: str, words: str) -> None:
    (tmp_path / "plain-file").write_text("")
    with pytest.raises(ConfigError) as info:
        resolve_netns(spec, run_dir=str(tmp_path))
    assert words in str(info.value)
    assert spec in str(info.value)


def test_resolve_netns_refuses_the_routers_own_namespace() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_netns(str(os.getpid()))
    assert "own network namespace" in str(info.value)
