"""The netlink kernel port (router.kernel.netlink) on the real kernel, in throwaway namespaces.

Every namespace is named ``wrk<pid>-<role>`` and deleted in ``finally`` (processes in it
killed first), even when a test fails; leftovers of crashed runs (their pid is gone) are
removed before the first test. All kernel objects live in those namespaces: the port runs in
the test's own namespace but every operation names a throwaway one, and the veth's
container end is created directly inside the container. What the port did is checked with
the ``ip`` and ``ethtool`` tools, not only with the port's own snapshots; one scenario runs
the same operations on the fake port and compares errnos and resulting state.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import trio

from router.errors import ClosedError, KernelError
from router.kernel.fake import FakeKernel
from router.kernel.netlink import NetlinkPort, open_netlink_port
from router.kernel.plumbing import (
    TAP_NAME,
    attach_plan,
    bridge_plan,
    detach_plan,
    host_veth_name,
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
    NetnsState,
    Op,
    Plan,
    Route,
    Scope,
    SetDown,
    SetMac,
    SetMaster,
    SetMtu,
    SetUp,
    execute,
    netns_inode,
    resolve_netns,
)
from router.kernel.tap import VNET_HDR_LEN

pytestmark = pytest.mark.integration

PREFIX = f"wrk{os.getpid()}"
_STALE = re.compile(r"^wrk(\d+)-")
MTU = 1376
A1 = ipaddress.IPv4Interface("10.32.1.1/12")
A2 = ipaddress.IPv4Interface("10.32.1.2/12")
A3 = ipaddress.IPv4Interface("10.44.0.1/16")
MAC1 = "02:00:00:00:c1:01"
MAC2 = "02:00:00:00:c2:01"
BRIDGE_MAC = "02:00:00:00:00:0b"
OUR_NAMES = {"weave", "ethwe", "v1", "v2", "v3", "peer3", *(f"br{i}" for i in range(8))}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr}")
    return proc


def netns_names() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line]


def delete_netns(name: str) -> None:
    """Kill every process in ``name`` (by pid), then delete it."""
    for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    sh("ip", "netns", "del", name, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="module", autouse=True)
def _no_stale_namespaces() -> Iterator[None]:
    for name in netns_names():
        m = _STALE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            delete_netns(name)
    before = root_link_names()
    yield
    assert not [n for n in netns_names() if n.startswith(PREFIX)], "namespaces left behind"
    new = root_link_names() - before
    assert not {n for n in new if n in OUR_NAMES or n.startswith("vethwe")}, new


def root_link_names() -> set[str]:
    """Names of the links in the namespace the tests run in (other runs may add their own)."""
    return {link["ifname"] for link in json.loads(sh("ip", "-j", "link").stdout)}


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """``netns(role)`` makes namespace ``wrk<pid>-<role>`` and returns its path."""
    made: list[str] = []

    def make(role: str) -> str:
        name = f"{PREFIX}-{role}"
        sh("ip", "netns", "add", name)
        made.append(name)
        return f"/run/netns/{name}"

    try:
        yield make
    finally:
        for name in made:
            delete_netns(name)


@pytest.fixture
async def port() -> AsyncIterator[NetlinkPort]:
    async with open_netlink_port() as p:
        yield p


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


def ip_json(path: str, *args: str) -> Any:
    return json.loads(sh("ip", "-n", name_of(path), "-j", *args).stdout or "[]")


def wait_for(what: str, probe: Callable[[], tuple[bool, str]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok, seen = probe()
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; saw: {seen}")
        time.sleep(0.05)


async def launch(port: KernelPort, host: str, mtu: int = MTU) -> Any:
    await execute(port, bridge_plan(await port.snapshot(host), mtu=mtu, mac=BRIDGE_MAC))
    tap = await port.open_tap(TAP_NAME, netns=host)
    await execute(port, tap_plan(await port.snapshot(host), mtu=mtu))
    return tap


async def attach(port: KernelPort, host: str, container: str,
                 *cidrs: ipaddress.IPv4Interface, mac: str | None = None) -> str:
    veth = host_veth_name(netns_inode(container))
    plan = attach_plan(await port.snapshot(host), await port.snapshot(container),
                       host_veth=veth, cidrs=cidrs, mac=mac)
    await execute(port, plan)
    return veth


# -- bridge and TAP --------------------------------------------------------------------------


async def test_bridge_up_and_tap_with_offloads(port: NetlinkPort,
                                               netns: Callable[[str], str]) -> None:
    host = netns("h")
    tap = await launch(port, host)
    try:
        [bridge] = ip_json(host, "-d", "link", "show", "weave")
        assert bridge["linkinfo"]["info_kind"] == "bridge"
        assert bridge["mtu"] == MTU and "UP" in bridge["flags"]
        assert bridge["address"] == BRIDGE_MAC
        assert bridge["linkinfo"]["info_data"]["stp_state"] == 0
        [dev] = ip_json(host, "-d", "link", "show", TAP_NAME)
        assert dev["master"] == "weave" and "UP" in dev["flags"] and dev["mtu"] == MTU
        assert dev["linkinfo"]["info_kind"] == "tun"
        detail = sh("ip", "-n", name_of(host), "-d", "link", "show", TAP_NAME).stdout
        assert "tun type tap pi off vnet_hdr on" in detail
        features = sh("ip", "netns", "exec", name_of(host), "ethtool", "-k", TAP_NAME).stdout
        for feature in ("tx-checksumming: on", "tx-tcp-segmentation: on",
                        "tx-tcp6-segmentation: on"):
            assert feature in features, features
        assert tap.fileno() >= 0
        assert not bridge_plan(await port.snapshot(host), mtu=MTU, mac=BRIDGE_MAC)
        assert not tap_plan(await port.snapshot(host), mtu=MTU)
    finally:
        tap.close()
    assert (await port.snapshot(host)).link(TAP_NAME) is None
    assert sh("ip", "-n", name_of(host), "link", "show", TAP_NAME, check=False).returncode != 0


async def test_bridge_mtu_stays_pinned_when_smaller_ports_come_and_go(
        port: NetlinkPort, netns: Callable[[str], str]) -> None:
    host, c1 = netns("h"), netns("c1")
    await execute(port, bridge_plan(await port.snapshot(host), mtu=9000))
    plan = attach_plan(await port.snapshot(host), await port.snapshot(c1),
                       host_veth=host_veth_name(netns_inode(c1)), cidrs=[A1], mtu=1400)
    await execute(port, plan)
    assert (await port.snapshot(host)).link("weave").mtu == 9000  # type: ignore[union-attr]
    await execute(port, detach_plan(await port.snapshot(c1)))
    assert (await port.snapshot(host)).link("weave").mtu == 9000  # type: ignore[union-attr]


async def test_tap_frames_carry_a_virtio_net_header(port: NetlinkPort,
                                                    netns: Callable[[str], str]) -> None:
    """An ARP request written into the TAP reaches the container; its reply comes back."""
    host, c1 = netns("h"), netns("c1")
    tap = await launch(port, host)
    try:
        await attach(port, host, c1, A1, mac=MAC1)
        ours = bytes.fromhex("020000009999")
        arp = (b"\xff" * 6 + ours + b"\x08\x06" + bytes.fromhex("0001080006040001") + ours
               + ipaddress.IPv4Address("10.32.1.99").packed + b"\x00" * 6 + A1.ip.packed)
        vnet = bytes(VNET_HDR_LEN)  # no checksum offload, no GSO
        os.set_blocking(tap.fileno(), False)
        deadline = time.monotonic() + 10.0
        seen: list[bytes] = []
        while time.monotonic() < deadline:
            os.write(tap.fileno(), vnet + arp)
            ready, _, _ = select.select([tap.fileno()], [], [], 0.2)
            while ready:
                try:
                    frame = os.read(tap.fileno(), 65536)
                except BlockingIOError:
                    break
                seen.append(frame[:40])
                eth = frame[VNET_HDR_LEN:]
                if eth[:6] == ours and eth[12:14] == b"\x08\x06" and eth[20:22] == b"\x00\x02":
                    assert frame[:2] == b"\x00\x00"  # vnet header: no flags, no GSO
                    assert eth[6:12] == bytes.fromhex(MAC1.replace(":", ""))
                    assert eth[28:32] == A1.ip.packed
                    return
        raise AssertionError(f"no ARP reply from the container; frames seen: {seen}")
    finally:
        tap.close()


# -- containers ------------------------------------------------------------------------------


async def test_attach_and_detach_a_container(port: NetlinkPort,
                                             netns: Callable[[str], str]) -> None:
    host, c1 = netns("h"), netns("c1")
    tap = await launch(port, host)
    try:
        veth = await attach(port, host, c1, A1, mac=MAC1)
        [ethwe] = ip_json(c1, "link", "show", "ethwe")
        assert ethwe["address"] == MAC1 and "UP" in ethwe["flags"] and ethwe["mtu"] == MTU
        [addr] = ip_json(c1, "-4", "addr", "show", "ethwe")
        assert [(a["local"], a["prefixlen"]) for a in addr["addr_info"]] == [("10.32.1.1", 12)]
        [route] = ip_json(c1, "route", "show", "224.0.0.0/4")
        assert route["dev"] == "ethwe" and route["scope"] == "link"
        [host_end] = ip_json(host, "link", "show", veth)
        assert host_end["master"] == "weave" and "UP" in host_end["flags"]
        assert not re.search(r": ethwe[@:]", sh("ip", "-n", name_of(host), "-o", "link").stdout)

        await attach(port, host, c1, A2)
        await execute(port, detach_plan(await port.snapshot(c1), cidrs=[A1]))
        [addr] = ip_json(c1, "-4", "addr", "show", "ethwe")
        assert [a["local"] for a in addr["addr_info"]] == ["10.32.1.2"]

        await execute(port, detach_plan(await port.snapshot(c1), cidrs=[A2]))
        assert sh("ip", "-n", name_of(c1), "link", "show", "ethwe", check=False).returncode
        assert sh("ip", "-n", name_of(host), "link", "show", veth, check=False).returncode
        assert not detach_plan(await port.snapshot(c1))
    finally:
        tap.close()


async def test_two_containers_on_one_bridge_ping_each_other(
        port: NetlinkPort, netns: Callable[[str], str]) -> None:
    host, c1, c2 = netns("h"), netns("c1"), netns("c2")
    tap = await launch(port, host)
    try:
        await attach(port, host, c1, A1, mac=MAC1)
        await attach(port, host, c2, A2, mac=MAC2)

        def ping() -> tuple[bool, str]:
            proc = sh("ip", "netns", "exec", name_of(c1), "ping", "-c", "1", "-W", "1",
                      str(A2.ip), check=False)
            return proc.returncode == 0, proc.stdout + proc.stderr

        wait_for("c1 to ping c2 across the bridge", ping)
    finally:
        tap.close()


async def test_reset_removes_bridge_tap_and_container_veths(
        port: NetlinkPort, netns: Callable[[str], str]) -> None:
    host, c1, c2 = netns("h"), netns("c1"), netns("c2")
    tap = await launch(port, host)
    try:
        await attach(port, host, c1, A1)
        await attach(port, host, c2, A2)
        await execute(port, reset_plan(await port.snapshot(host)))
        assert [link["ifname"] for link in ip_json(host, "link")] == ["lo"]
        for c in (c1, c2):
            assert [link["ifname"] for link in ip_json(c, "link")] == ["lo"]
        assert not reset_plan(await port.snapshot(host))
    finally:
        tap.close()


async def test_failed_attach_leaves_nothing_behind(port: NetlinkPort,
                                                   netns: Callable[[str], str]) -> None:
    host, c1 = netns("h"), netns("c1")
    await execute(port, bridge_plan(await port.snapshot(host), mtu=MTU))
    veth = host_veth_name(netns_inode(c1))
    plan = attach_plan(await port.snapshot(host), await port.snapshot(c1), host_veth=veth,
                       cidrs=[A1])
    # The kernel refuses the same address twice: the last step fails after the veth exists.
    doomed = Plan(ops=(*plan.ops, AddAddress("ethwe", A1, c1)), rollback=plan.rollback)
    with pytest.raises(KernelError) as info:
        await execute(port, doomed)
    assert info.value.errno == errno.EEXIST
    assert sh("ip", "-n", name_of(host), "link", "show", veth, check=False).returncode
    assert [link["ifname"] for link in ip_json(c1, "link")] == ["lo"]


# -- naming and lifetime of namespaces -------------------------------------------------------


async def test_container_by_name_path_or_pid(port: NetlinkPort,
                                             netns: Callable[[str], str]) -> None:
    host, c1 = netns("h"), netns("c1")
    sleeper = subprocess.Popen(["ip", "netns", "exec", name_of(c1), "sleep", "60"])
    try:
        def entered() -> tuple[bool, str]:
            seen = os.readlink(f"/proc/{sleeper.pid}/ns/net")
            return seen != os.readlink("/proc/self/ns/net"), seen

        wait_for("the sleeper to enter its namespace", entered)
        by_name = resolve_netns(name_of(c1))
        by_pid = resolve_netns(str(sleeper.pid))
        assert by_name == c1 and by_pid == f"/proc/{sleeper.pid}/ns/net"
        assert netns_inode(by_name) == netns_inode(by_pid) == netns_inode(resolve_netns(c1))
        tap = await launch(port, host)
        try:
            await attach(port, host, by_pid, A1, mac=MAC1)
            seen = await port.snapshot(by_name)
            assert seen.link("ethwe").mac == MAC1  # type: ignore[union-attr]
        finally:
            tap.close()
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_missing_namespace_is_enoent(port: NetlinkPort) -> None:
    with pytest.raises(KernelError) as info:
        await port.snapshot(f"/run/netns/{PREFIX}-missing")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(KernelError) as info:
        await port.apply([SetUp("lo", f"/run/netns/{PREFIX}-missing")])
    assert info.value.errno == errno.ENOENT


async def test_port_does_not_keep_a_deleted_container_alive(
        port: NetlinkPort, netns: Callable[[str], str]) -> None:
    host, c1 = netns("h"), netns("c1")
    tap = await launch(port, host)
    try:
        veth = await attach(port, host, c1, A1)
        await port.snapshot(c1)
        sh("ip", "netns", "del", name_of(c1))

        def host_end_gone() -> tuple[bool, str]:
            out = sh("ip", "-n", name_of(host), "-o", "link").stdout
            return veth not in out, out

        wait_for("the container's veth to die with its namespace", host_end_gone)
    finally:
        tap.close()


@pytest.mark.parametrize("workers", [1, 3])
async def test_concurrent_callers_take_turns_and_a_closed_port_refuses(
        netns: Callable[[str], str], workers: int) -> None:
    host = netns("h")
    async with open_netlink_port(workers) as p:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(p.apply, [AddBridge(f"br{i}", 1500, netns=host)])
                nursery.start_soon(p.snapshot, host)
        bridges = [li.name for li in (await p.snapshot(host)).links if li.kind == "bridge"]
        assert sorted(bridges) == [f"br{i}" for i in range(8)]
    with pytest.raises(ClosedError):
        await p.snapshot(host)
    await p.aclose()


async def test_worker_thread_and_descriptors_are_released(netns: Callable[[str], str]) -> None:
    host = netns("h")
    fds = set(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    async with open_netlink_port() as p:
        await p.snapshot(host)
        await p.apply([AddBridge("weave", MTU, netns=host)])
        assert threading.active_count() == threads + 1
        stats = p.statistics()
        assert (stats.snapshots, stats.ops_applied) == (1, 1)
    assert threading.active_count() == threads
    assert set(os.listdir("/proc/self/fd")) == fds


async def test_a_port_of_several_workers_runs_jobs_at_once_each_in_its_own_namespaces(
        netns: Callable[[str], str]) -> None:
    """Eight pods plumbed and unplumbed at once through a port of four workers: each job
    runs whole on one worker (its container's namespace entered and left there), no worker
    is left in a foreign namespace, threads start only when needed and all end at close."""
    host = netns("h")
    pods = [netns(f"p{i}") for i in range(8)]
    threads = threading.active_count()
    async with open_netlink_port(4) as p:
        assert threading.active_count() == threads + 1  # the first worker only
        await p.apply([AddBridge("weave", MTU, netns=host), SetUp("weave", host)])
        host_state = await p.snapshot(host)

        async def plumb(i: int, pod: str) -> None:
            plan = attach_plan(host_state, await p.snapshot(pod), host_veth=f"vethwepl{i}",
                               cidrs=[ipaddress.IPv4Interface(f"10.32.0.{i + 2}/12")])
            await execute(p, plan)

        async with trio.open_nursery() as nursery:
            for i, pod in enumerate(pods):
                nursery.start_soon(plumb, i, pod)
        assert threads + 1 < threading.active_count() <= threads + 4
        for i, pod in enumerate(pods):
            assert [str(a) for a in (await p.snapshot(pod)).addresses_of("ethwe")] == \
                [f"10.32.0.{i + 2}/12"]
        ports = {li.name for li in (await p.snapshot(host)).links if li.master == "weave"}
        assert ports == {f"vethwepl{i}" for i in range(8)}
        # every worker is back home: a snapshot of no namespace is of ours, not a pod's
        homes: list[NetnsState] = []

        async def home() -> None:
            homes.append(await p.snapshot())

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(home)
        assert not [s for s in homes if s.link("ethwe") is not None]
        async with trio.open_nursery() as nursery:
            for pod in pods:
                nursery.start_soon(p.apply, [DeleteLink("ethwe", pod)])
        assert not [li for li in (await p.snapshot(host)).links if li.master == "weave"]
    assert threading.active_count() == threads


# -- the fake behaves like the kernel -------------------------------------------------------


def scenario(h: str, c: str) -> list[Op]:
    net = ipaddress.IPv4Network
    gw_route = Route(net("10.99.0.0/16"), gateway=ipaddress.IPv4Address("10.32.0.9"))
    return [
        AddBridge("weave", 1500, mac=BRIDGE_MAC, netns=h),
        AddBridge("weave", 1500, netns=h),  # EEXIST
        SetUp("weave", h),
        AddVeth("v1", "ethwe", 1400, peer_netns=c, peer_mac=MAC1, netns=h),
        AddVeth("v2", "ethwe", 1400, peer_netns=c, netns=h),  # EEXIST (peer name)
        SetMaster("v1", "weave", h),
        SetMaster("v1", "nope", h),  # ENODEV
        SetMaster("weave", "weave", h),  # ELOOP
        SetMaster("v1", "v1", h),  # EOPNOTSUPP: not a bridge
        SetUp("v1", h),
        SetUp("ethwe", c),
        AddAddress("ethwe", A1, c),
        AddAddress("ethwe", A1, c),  # EEXIST
        AddAddress("ethwe", A3, c),
        DeleteAddress("ethwe", A2, c),  # EADDRNOTAVAIL
        AddAddress("ethwe", A2, c),  # secondary of A1's subnet
        AddAddress("ethwe", ipaddress.IPv4Interface("10.32.1.3/12"), c),
        DeleteAddress("ethwe", ipaddress.IPv4Interface("10.32.1.3/12"), c),  # secondary only
        DeleteAddress("ethwe", A1, c),  # the primary: A2 goes too
        DeleteAddress("ethwe", A2, c),  # EADDRNOTAVAIL
        AddAddress("ethwe", A1, c),
        AddRoute(Route(net("224.0.0.0/4"), "ethwe", scope=Scope.LINK), c),
        AddRoute(Route(net("224.0.0.0/4"), "ethwe", scope=Scope.LINK), c),  # EEXIST
        AddRoute(gw_route, c),
        AddRoute(Route(net("10.98.0.0/16"), gateway=ipaddress.IPv4Address("192.0.2.1")), c),
        DeleteRoute(Route(net("10.77.0.0/16"), "ethwe"), c),  # ESRCH
        SetMtu("ethwe", 70000, c),  # EINVAL
        SetMtu("ethwe", 1300, c),
        SetMac("ethwe", "01:00:5e:00:00:01", c),  # EADDRNOTAVAIL
        SetMac("ethwe", MAC2, c),
        DeleteLink("nope", h),  # ENODEV
        SetUp("lo", f"{c}-missing"),  # ENOENT
        AddVeth("v3", "peer3", 1500, peer_netns=h, netns=h),
        SetUp("v3", h),
        AddAddress("v3", ipaddress.IPv4Interface("192.168.5.1/24"), h),
        AddRoute(Route(net("10.55.0.0/16"), "v3"), h),
        DeleteRoute(Route(net("10.55.0.0/16"), "v3"), h),
        AddRoute(Route(net("10.56.0.0/16"), "v3"), h),
        DeleteLink("peer3", h),  # takes v3, its address and route along
        SetDown("ethwe", c),  # drops the routes through ethwe
        AddRoute(Route(net("224.0.0.0/4"), "ethwe", scope=Scope.LINK), c),  # ENETDOWN
        SetUp("ethwe", c),
    ]


def normal(state: NetnsState) -> tuple[object, ...]:
    links = sorted((li.name, li.kind, li.up, li.mtu, li.master) for li in state.links)
    macs = sorted((li.name, li.mac) for li in state.links if li.name in ("ethwe",))
    return (links, macs, sorted(map(str, state.addresses)), sorted(map(str, state.routes)))


async def run_scenario(port: KernelPort, h: str, c: str) -> tuple[list[int | None], list[Any]]:
    codes: list[int | None] = []
    for op in scenario(h, c):
        try:
            await port.apply([op])
            codes.append(None)
        except KernelError as exc:
            codes.append(exc.errno)
    return codes, [normal(await port.snapshot(h)), normal(await port.snapshot(c))]


async def test_fake_and_kernel_agree_on_a_scenario(port: NetlinkPort,
                                                   netns: Callable[[str], str]) -> None:
    host, c1 = netns("h"), netns("c1")
    fake = FakeKernel()
    fake.add_netns(host)
    fake.add_netns(c1)
    real_codes, real_state = await run_scenario(port, host, c1)
    fake_codes, fake_state = await run_scenario(fake, host, c1)
    ops = [str(op) for op in scenario(host, c1)]
    assert list(zip(ops, fake_codes, strict=True)) == list(zip(ops, real_codes, strict=True))
    assert fake_state == real_state


# -- one batch, partial snapshots ------------------------------------------------------------


def relink(h: str, c: str) -> list[Op]:
    """One plan that names links op after op, deletes one and makes it again (so an index
    the port remembered within the batch must be forgotten), then a partial look."""
    net = ipaddress.IPv4Network
    a1 = ipaddress.IPv4Interface("10.32.0.1/12")
    return [
        AddBridge("weave", 1400, netns=h),
        SetUp("weave", h),
        AddAddress("weave", a1, h),
        AddVeth("v1", "ethwe", 1400, peer_netns=c, peer_mac=MAC1, netns=h),
        SetMaster("v1", "weave", h),
        SetUp("v1", h),
        SetUp("ethwe", c),
        AddAddress("ethwe", A1, c),
        DeleteLink("v1", h),  # ethwe goes with it
        AddVeth("v1", "ethwe", 1400, peer_netns=c, peer_mac=MAC2, netns=h),
        SetMaster("v1", "weave", h),
        SetUp("v1", h),
        SetUp("ethwe", c),
        AddAddress("ethwe", A3, c),
        AddRoute(Route(net("224.0.0.0/4"), "ethwe", scope=Scope.LINK), c),
        AddVeth("v2", "peer2", 1400, peer_netns=c, netns=h),
    ]


async def partial_views(port: KernelPort, h: str, c: str) -> list[Any]:
    await port.apply(relink(h, c))
    return [normal(await port.snapshot(h, links=["weave", "v1", "nope"])),
            normal(await port.snapshot(h, links=["v1"])),  # its master still named
            normal(await port.snapshot(c, links=["ethwe"])),
            normal(await port.snapshot(c))]


async def test_one_batch_and_partial_snapshots_agree_with_the_fake(
        port: NetlinkPort, netns: Callable[[str], str]) -> None:
    host, c1 = netns("h"), netns("c1")
    fake = FakeKernel()
    fake.add_netns(host)
    fake.add_netns(c1)
    real = await partial_views(port, host, c1)
    assert real == await partial_views(fake, host, c1)
    links, _, addresses, routes = real[0]
    assert links == [("v1", "veth", True, 1400, "weave"), ("weave", "bridge", True, 1400, None)]
    assert addresses == ["Address(ifname='weave', cidr=IPv4Interface('10.32.0.1/12'))"]
    assert routes == []  # a partial snapshot leaves routes out
    assert real[1][0] == [("v1", "veth", True, 1400, "weave")]
    assert real[2][2] == [f"Address(ifname='ethwe', cidr=IPv4Interface('{A3}'))"]
    multicast = Route(ipaddress.IPv4Network("224.0.0.0/4"), "ethwe", scope=Scope.LINK)
    assert real[3][3] == [str(multicast)]


async def test_partial_snapshot_of_the_ports_own_namespace(port: NetlinkPort) -> None:
    """At home the port asks the kernel for one link's addresses (a strict socket):
    the same as the whole snapshot's, for ``lo`` (the one link of the tests' namespace
    no other run changes)."""
    whole = await port.snapshot()
    part = await port.snapshot(links=["lo", "wr-no-such-link"])
    assert part.links == (whole.link("lo"),)
    assert part.addresses == tuple(a for a in whole.addresses if a.ifname == "lo")
    assert {str(a.cidr) for a in part.addresses} >= {"127.0.0.1/8"}
    assert part.routes == ()
