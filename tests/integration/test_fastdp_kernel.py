"""fastdp's kernel objects on the real kernel: the VXLAN device and its FDB, in namespaces.

Hosts come from :class:`router.testing.netns.Mesh` (``wr<pid>n<seq>-*``, removed after each
test even when it fails). The port runs in the test's namespace and names a host's
namespace in every operation. What it did is checked with ``ip -d link`` and ``bridge fdb``,
not only with the port's own reads; the same operations run on the fake port must give the
same errnos. The service test deletes the device and an entry behind its back. The
two-host test proves the programming right: a ping between two containers
crosses only the two VXLAN devices (none before the flood entries exist).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import select
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import trio

from router.errors import DecodeError, KernelError
from router.kernel.fake import FakeKernel
from router.kernel.netlink import NetlinkPort, open_netlink_port
from router.kernel.plumbing import TAP_NAME, bridge_plan, tap_plan
from router.kernel.port import (
    FLOOD_MAC,
    AddFdb,
    AddVxlan,
    DeleteFdb,
    DeleteLink,
    FdbEntry,
    OverlayPort,
    PinMac,
    SetMaster,
    SetMtu,
    SetUp,
    UnpinMac,
    VxlanDevice,
    execute,
)
from router.kernel.tap import VNET_HDR_LEN
from router.overlay.fastdp.heartbeat import Heard, HeartbeatEcho, decode_heartbeat_untrusted
from router.overlay.fastdp.plan import LocalConfig, desired, diff, heartbeat_mac, teardown
from router.overlay.fastdp.service import FastdpService
from router.testing.netns import Host, Mesh
from tests.integration.conftest import MeshFactory

pytestmark = pytest.mark.integration

DEV = "vxlan-6784"
MTU = 1376
VNI = 0x5EA7E  # any 24-bit value both ends agree on
PEER2 = ipaddress.IPv4Address("192.0.2.2")
PEER3 = ipaddress.IPv4Address("192.0.2.3")
MAC_A = "02:00:00:00:0a:01"


@pytest.fixture
async def port() -> AsyncIterator[NetlinkPort]:
    async with open_netlink_port() as p:
        yield p


def path(host: Host) -> str:
    return f"/run/netns/{host.name}"


def json_of(host: Host, *argv: str) -> Any:
    return json.loads(host.run(argv).stdout or "[]")


def fdb_shown(host: Host) -> set[tuple[str, str]]:
    rows = json_of(host, "bridge", "-j", "fdb", "show", "dev", DEV)
    return {(r["mac"], r["dst"]) for r in rows if "self" in r.get("flags", []) and "dst" in r}


async def make_vxlan(port: OverlayPort, netns: str | None, local: str, *,
                     bridge: bool = True) -> None:
    ops = [AddVxlan(DEV, vni=VNI, port=6784, local=ipaddress.IPv4Address(local), mtu=MTU,
                    netns=netns)]
    if bridge:
        ops.append(SetMaster(DEV, "weave", netns=netns))
    ops.append(SetUp(DEV, netns=netns))
    await port.apply(ops)


async def errno_of(port: OverlayPort, *ops: Any) -> int | None:
    try:
        await port.apply(ops)
    except KernelError as exc:
        return exc.errno
    return None


async def test_vxlan_device_and_fdb_entries(port: NetlinkPort, make_mesh: MeshFactory) -> None:
    mesh: Mesh = make_mesh(1)
    [host] = mesh.hosts
    ns = path(host)
    await execute(port, bridge_plan(await port.snapshot(ns), mtu=MTU))
    await make_vxlan(port, ns, host.ip)

    [link] = json_of(host, "ip", "-d", "-j", "link", "show", DEV)
    data = link["linkinfo"]["info_data"]
    assert link["linkinfo"]["info_kind"] == "vxlan" and link["master"] == "weave"
    assert link["mtu"] == MTU and "UP" in link["flags"]
    assert (data["id"], data["port"], data["local"], data["learning"]) == (
        VNI, 6784, host.ip, True)
    assert "group" not in data and "remote" not in data
    device = await port.vxlan(DEV, netns=ns)
    assert device is not None and device.fdb == frozenset()
    assert (device.vni, device.port, str(device.local), device.learning, device.remote) == (
        VNI, 6784, host.ip, True, None)
    assert device.link.master == "weave" and device.link.up and device.link.mtu == MTU

    entries = [FdbEntry(FLOOD_MAC, PEER2), FdbEntry(FLOOD_MAC, PEER3), FdbEntry(MAC_A, PEER3)]
    await port.apply([AddFdb(DEV, e, netns=ns) for e in entries])
    assert fdb_shown(host) == {(e.mac, str(e.dst)) for e in entries}
    device = await port.vxlan(DEV, netns=ns)
    assert device is not None and device.fdb == frozenset(entries)

    await port.apply([SetMtu(DEV, 1400, netns=ns), DeleteFdb(DEV, entries[0], netns=ns),
                      DeleteFdb(DEV, entries[2], netns=ns)])
    assert fdb_shown(host) == {(FLOOD_MAC, str(PEER3))}
    [link] = json_of(host, "ip", "-j", "link", "show", DEV)
    assert link["mtu"] == 1400

    await port.apply([DeleteLink(DEV, netns=ns)])
    assert await port.vxlan(DEV, netns=ns) is None
    assert host.run(["ip", "link", "show", DEV], check=False).returncode != 0


async def refusals(port: OverlayPort, netns: str | None, local: str) -> list[int | None]:
    """The same mistakes on any port; returns the errnos (None: accepted)."""
    flood, uni = FdbEntry(FLOOD_MAC, PEER2), FdbEntry(MAC_A, PEER2)
    await make_vxlan(port, netns, local, bridge=False)
    return [
        await errno_of(port, AddVxlan(DEV, vni=VNI, port=6784,
                                      local=ipaddress.IPv4Address(local), mtu=MTU, netns=netns)),
        await errno_of(port, AddVxlan("vxlan-other", vni=VNI, port=6784,
                                      local=ipaddress.IPv4Address(local), mtu=MTU, netns=netns)),
        await errno_of(port, AddFdb(DEV, flood, netns=netns)),
        await errno_of(port, AddFdb(DEV, flood, netns=netns)),  # append again: accepted
        await errno_of(port, AddFdb(DEV, uni, netns=netns)),
        await errno_of(port, AddFdb(DEV, FdbEntry(MAC_A, PEER3), netns=netns)),
        await errno_of(port, DeleteFdb(DEV, FdbEntry(FLOOD_MAC, PEER3), netns=netns)),
        await errno_of(port, DeleteFdb(DEV, FdbEntry("02:00:00:00:0b:0b", PEER2), netns=netns)),
        await errno_of(port, AddFdb("lo", flood, netns=netns)),
        await errno_of(port, AddFdb("nosuchdev", flood, netns=netns)),
        await errno_of(port, SetMtu(DEV, 65536, netns=netns)),
    ]


async def test_fake_and_kernel_refuse_alike(port: NetlinkPort, make_mesh: MeshFactory) -> None:
    mesh: Mesh = make_mesh(1)
    [host] = mesh.hosts
    kernel = await refusals(port, path(host), host.ip)
    fake_port = FakeKernel()
    fake = await refusals(fake_port, None, host.ip)
    assert kernel == [errno.EEXIST, errno.EEXIST, None, None, None, errno.EEXIST, None,
                      errno.ENOENT, errno.EOPNOTSUPP, errno.ENODEV, errno.EINVAL]
    assert fake == kernel
    real, faked = await port.vxlan(DEV, netns=path(host)), await fake_port.vxlan(DEV)
    assert real is not None and faked is not None and real.fdb == faked.fdb
    with pytest.raises(KernelError) as info:
        await port.vxlan("lo", netns=path(host))
    assert info.value.errno == errno.EOPNOTSUPP


def ping(container: Any, ip: str) -> tuple[bool, str]:
    proc = container.run(["ping", "-c", "1", "-W", "1", ip], check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr


async def test_two_hosts_carry_a_ping_through_their_vxlan_devices(
        port: NetlinkPort, make_mesh: MeshFactory) -> None:
    mesh: Mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    containers = []
    for i, host in enumerate((h1, h2), start=1):
        ns = path(host)
        await execute(port, bridge_plan(await port.snapshot(ns), mtu=MTU))
        await make_vxlan(port, ns, host.ip)
        c = mesh.add_container(host)
        host.run(["ip", "link", "set", c.host_veth, "mtu", str(MTU), "master", "weave", "up"])
        c.run(["ip", "link", "set", "ethwe", "mtu", str(MTU), "up"])
        c.run(["ip", "addr", "add", f"10.32.0.{i}/12", "dev", "ethwe"])
        containers.append(c)
    c1, c2 = containers
    ok, seen = ping(c1, "10.32.0.2")
    assert not ok, f"reached c2 before any FDB entry existed: {seen}"

    for host, other in ((h1, h2), (h2, h1)):
        entry = FdbEntry(FLOOD_MAC, ipaddress.IPv4Address(other.ip))
        await port.apply([AddFdb(DEV, entry, netns=path(host))])
    deadline = time.monotonic() + 20.0
    while not (result := ping(c1, "10.32.0.2"))[0]:
        assert time.monotonic() < deadline, f"no ping through VXLAN: {result[1]}"
    ok, seen = ping(c2, "10.32.0.1")
    assert ok, seen
    stats = json_of(h2, "ip", "-s", "-j", "link", "show", DEV)[0]["stats64"]
    assert stats["rx"]["packets"] > 0 and stats["tx"]["packets"] > 0

    # Host 1's device learned where c2's MAC is (apart from the entries we added), and
    # treats that learned entry as the fake does.
    mac2 = c2.run(["cat", "/sys/class/net/ethwe/address"]).stdout.strip()
    ns1, ip2 = path(h1), ipaddress.IPv4Address(h2.ip)
    device = await port.vxlan(DEV, netns=ns1)
    assert device is not None and device.fdb == {FdbEntry(FLOOD_MAC, ip2)}
    assert FdbEntry(mac2, ip2) in device.learned, device.learned
    fake = FakeKernel()
    await make_vxlan(fake, None, h1.ip, bridge=False)
    await fake.apply([AddFdb(DEV, FdbEntry(FLOOD_MAC, ip2))])
    assert fake.receive_vxlan(DEV, mac2, ip2)

    async def learned_refusals(p: OverlayPort, netns: str | None) -> list[int | None]:
        return [
            await errno_of(p, AddFdb(DEV, FdbEntry(mac2, PEER3), netns=netns)),
            await errno_of(p, DeleteFdb(DEV, FdbEntry(mac2, PEER3), netns=netns)),
            await errno_of(p, DeleteFdb(DEV, FdbEntry(mac2, ip2), netns=netns)),
            await errno_of(p, DeleteFdb(DEV, FdbEntry(mac2, ip2), netns=netns)),
        ]

    kernel_says = await learned_refusals(port, ns1)
    assert kernel_says == [errno.EEXIST, None, None, errno.ENOENT]
    assert kernel_says == await learned_refusals(fake, None)
    device = await port.vxlan(DEV, netns=ns1)
    assert device is not None and FdbEntry(mac2, ip2) not in device.learned


async def test_the_service_programs_and_repairs_the_kernel(
        port: NetlinkPort, make_mesh: MeshFactory) -> None:
    mesh: Mesh = make_mesh(1)
    [host] = mesh.hosts
    ns = path(host)
    await execute(port, bridge_plan(await port.snapshot(ns), mtu=MTU))
    config = LocalConfig(local=ipaddress.IPv4Address(host.ip), mtu=MTU, netns=ns)
    service = FastdpService(port, config, resync=1.0)
    service.set_peers({"b": PEER2, "c": PEER3})
    service.set_macs({MAC_A: "c"})
    want = {(FLOOD_MAC, str(PEER2)), (FLOOD_MAC, str(PEER3)), (MAC_A, str(PEER3))}

    async def until(what: str, probe: Callable[[], bool]) -> None:
        with trio.move_on_after(20.0):
            while not probe():
                await trio.sleep(0.1)
            return
        raise AssertionError(f"timed out waiting for {what}; fdb: {fdb_shown(host)}")

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert fdb_shown(host) == want
        host.run(["ip", "link", "del", DEV])
        await until("the device to be re-created", lambda: fdb_shown_or_none(host) == want)
        [link] = json_of(host, "ip", "-d", "-j", "link", "show", DEV)
        assert link["master"] == "weave" and "UP" in link["flags"]
        host.run(["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", DEV, "dst", str(PEER2)])
        await until("the flood entry to come back", lambda: fdb_shown(host) == want)
        stats = service.statistics()
        assert stats.errors == 0 and stats.repairs >= 3 and stats.device
        nursery.cancel_scope.cancel()
    await service.remove()
    assert host.run(["ip", "link", "show", DEV], check=False).returncode != 0


def fdb_shown_or_none(host: Host) -> set[tuple[str, str]] | None:
    if host.run(["ip", "link", "show", DEV], check=False).returncode != 0:
        return None
    return fdb_shown(host)


def essence(device: VxlanDevice | None) -> tuple[object, ...] | None:
    if device is None:
        return None
    link = device.link
    return (link.name, link.kind, link.mtu, link.up, link.master, device.vni, device.port,
            device.local, device.learning, device.remote, device.fdb)


async def test_plans_converge_alike_on_the_kernel_and_the_fake(
        port: NetlinkPort, make_mesh: MeshFactory) -> None:
    """A sequence of plans (peers come and go, a MAC moves, the MTU and local IP change):
    after each, the kernel and the fake hold the same device and a new diff is empty."""
    mesh: Mesh = make_mesh(1)
    [host] = mesh.hosts
    ns = path(host)
    here, other = ipaddress.IPv4Address(host.ip), ipaddress.IPv4Address("192.0.2.9")
    fake = FakeKernel()
    await execute(port, bridge_plan(await port.snapshot(ns), mtu=MTU))
    await execute(fake, bridge_plan(await fake.snapshot(), mtu=MTU))
    steps = [
        (LocalConfig(local=here, mtu=MTU), {"b": PEER2}, {}),
        (LocalConfig(local=here, mtu=MTU), {"b": PEER2, "c": PEER3}, {MAC_A: "b"}),
        (LocalConfig(local=here, mtu=MTU), {"b": PEER2, "c": PEER3}, {MAC_A: "c"}),
        (LocalConfig(local=here, mtu=1400), {"c": PEER3}, {MAC_A: "c"}),
        (LocalConfig(local=other, mtu=1400), {"c": PEER3}, {MAC_A: "c"}),
        (LocalConfig(local=other, mtu=1400), {}, {}),
    ]
    for config, peers, macs in steps:
        real_config = replace(config, netns=ns)
        want_real, want_fake = desired(real_config, peers, macs), desired(config, peers, macs)
        await port.apply(diff(want_real, await port.vxlan(DEV, netns=ns)))
        await fake.apply(diff(want_fake, await fake.vxlan(DEV)))
        real, faked = await port.vxlan(DEV, netns=ns), await fake.vxlan(DEV)
        assert essence(real) == essence(faked), (config, peers, macs)
        assert diff(want_real, real) == ()
        assert fdb_shown(host) == {(e.mac, str(e.dst)) for e in want_real.fdb}
    await port.apply(teardown(await port.vxlan(DEV, netns=ns), netns=ns))
    assert await port.vxlan(DEV, netns=ns) is None


HB1, HB2 = "02:77:65:00:00:01", "02:77:65:00:00:02"  # heartbeat MACs of host 1 and 2
HB_TYPE = b"\x88\xb5"  # IEEE 802 local experimental ethertype


def read_frames(tap: Any, want: Callable[[bytes], bool], timeout: float) -> list[bytes]:
    """Frames read from ``tap`` (after the virtio-net header) until one passes ``want``."""
    seen: list[bytes] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([tap.fileno()], [], [], 0.1)
        if not ready:
            continue
        with contextlib.suppress(BlockingIOError):
            frame = os.read(tap.fileno(), 65536)[VNET_HDR_LEN:]
            seen.append(frame)
            if want(frame):
                break
    return seen


async def test_a_heartbeat_frame_crosses_tap_vxlan_tap_and_is_pinned(
        port: NetlinkPort, make_mesh: MeshFactory) -> None:
    """The heartbeat path fastdp will use: a frame written into host 1's TAP, addressed to
    host 2's heartbeat MAC (pinned to vxlan-6784 on host 1, to the TAP on host 2, so no
    bridge floods it to containers), crosses to host 2 by its unicast FDB entry over UDP
    6784 (no flood entry exists) and comes out of host 2's TAP. Without the FDB entry it
    does not arrive: it travels through VXLAN, nothing else."""
    mesh: Mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    taps = []
    for host in (h1, h2):
        ns = path(host)
        await execute(port, bridge_plan(await port.snapshot(ns), mtu=MTU))
        tap = await port.open_tap(TAP_NAME, netns=ns)
        taps.append(tap)
        await execute(port, tap_plan(await port.snapshot(ns), mtu=MTU))
        await make_vxlan(port, ns, host.ip)
        os.set_blocking(tap.fileno(), False)
    tap1, tap2 = taps
    try:
        to_h2 = AddFdb(DEV, FdbEntry(HB2, ipaddress.IPv4Address(h2.ip)), netns=path(h1))
        await port.apply([PinMac(DEV, HB2, netns=path(h1)), to_h2,
                          PinMac(TAP_NAME, HB2, netns=path(h2))])
        assert await port.pinned_macs(DEV, netns=path(h1)) == {HB2}
        assert await port.pinned_macs(TAP_NAME, netns=path(h2)) == {HB2}
        shown = json_of(h2, "bridge", "-j", "fdb", "show", "dev", TAP_NAME)
        assert {"mac": HB2, "master": "weave", "state": "static"}.items() <= \
            next(r for r in shown if r["mac"] == HB2).items()

        frame = (bytes.fromhex(HB2.replace(":", "")) + bytes.fromhex(HB1.replace(":", ""))
                 + HB_TYPE + b"weave fastdp heartbeat".ljust(46, b"\0"))

        def is_heartbeat(f: bytes) -> bool:
            return f[:6] == frame[:6] and f[12:14] == HB_TYPE

        arrived: list[bytes] = []
        for _ in range(20):
            os.write(tap1.fileno(), bytes(VNET_HDR_LEN) + frame)
            arrived = read_frames(tap2, is_heartbeat, 0.5)
            if any(is_heartbeat(f) for f in arrived):
                break
        assert any(f[:len(frame)] == frame for f in arrived), [f[:20].hex() for f in arrived]
        stats = json_of(h2, "ip", "-s", "-j", "link", "show", DEV)[0]["stats64"]
        assert stats["rx"]["packets"] > 0

        await port.apply([DeleteFdb(DEV, to_h2.entry, netns=path(h1))])
        os.write(tap1.fileno(), bytes(VNET_HDR_LEN) + frame)
        assert not any(is_heartbeat(f) for f in read_frames(tap2, is_heartbeat, 2.0))

        await port.apply([UnpinMac(TAP_NAME, HB2, netns=path(h2))])
        assert await port.pinned_macs(TAP_NAME, netns=path(h2)) == frozenset()
        assert await errno_of(port, UnpinMac(TAP_NAME, HB2, netns=path(h2))) == errno.ENOENT
        assert await errno_of(port, PinMac(DEV, HB2, netns=path(h1))) is None  # again
        assert await errno_of(port, PinMac("lo", HB2, netns=path(h1))) == errno.EOPNOTSUPP
    finally:
        for tap in taps:
            tap.close()


async def test_a_pin_takes_over_what_the_bridge_learned(
        port: NetlinkPort, make_mesh: MeshFactory) -> None:
    """A peer's heartbeat can arrive before we pin its MAC: the bridge then has a learned
    entry for it, and the pin must replace it (an add is EEXIST, on every pass), in the
    kernel and the fake alike; a pin moves a MAC between ports of the bridge."""
    mesh: Mesh = make_mesh(1)
    [host] = mesh.hosts
    ns = path(host)
    await execute(port, bridge_plan(await port.snapshot(ns), mtu=MTU))
    tap = await port.open_tap(TAP_NAME, netns=ns)
    try:
        await execute(port, tap_plan(await port.snapshot(ns), mtu=MTU))
        await make_vxlan(port, ns, host.ip)
        frame = (bytes.fromhex("ffffffffffff") + bytes.fromhex(HB2.replace(":", ""))
                 + HB_TYPE + b"a heartbeat that came first".ljust(46, b"\0"))
        os.write(tap.fileno(), bytes(VNET_HDR_LEN) + frame)  # the bridge learns HB2 on it

        def learned() -> list[dict[str, Any]]:
            return [r for r in json_of(host, "bridge", "-j", "fdb", "show", "br", "weave")
                    if r["mac"] == HB2]

        for _ in range(50):
            if learned():
                break
            time.sleep(0.05)
        [entry] = learned()
        assert (entry["ifname"], entry.get("state", "")) == (TAP_NAME, ""), entry  # learned
        await port.apply([PinMac(DEV, HB2, netns=ns)])
        assert await port.pinned_macs(DEV, netns=ns) == {HB2}
        [entry] = learned()
        assert (entry["ifname"], entry.get("state")) == (DEV, "static"), entry
        await port.apply([PinMac(TAP_NAME, HB2, netns=ns)])  # moved, as in the fake
        assert await port.pinned_macs(TAP_NAME, netns=ns) == {HB2}
        assert await port.pinned_macs(DEV, netns=ns) == frozenset()
    finally:
        tap.close()
    fake = FakeKernel()
    await execute(fake, bridge_plan(await fake.snapshot(), mtu=MTU))
    fake_tap = await fake.open_tap(TAP_NAME)
    await execute(fake, tap_plan(await fake.snapshot(), mtu=MTU))
    await make_vxlan(fake, None, host.ip)
    await fake.apply([PinMac(DEV, HB2), PinMac(TAP_NAME, HB2)])
    assert (await fake.pinned_macs(TAP_NAME), await fake.pinned_macs(DEV)) == ({HB2}, set())
    fake_tap.close()


async def test_a_ports_entries_are_read_alone_beside_many_others(
        port: NetlinkPort, make_mesh: MeshFactory) -> None:
    """The pins of vxlan-6784 and its own entries, read with the kernel filtering by port
    (a strict socket), are exactly what ``bridge fdb show dev`` lists, beside 500 entries
    of another port of the bridge that the router must not read one by one."""
    mesh: Mesh = make_mesh(1)
    [host] = mesh.hosts
    ns = path(host)
    await execute(port, bridge_plan(await port.snapshot(ns), mtu=MTU))
    await make_vxlan(port, ns, host.ip)
    host.run(["ip", "link", "add", "wrp0", "type", "veth", "peer", "name", "wrp1"])
    host.run(["ip", "link", "set", "wrp0", "master", "weave", "up"])
    batch = "".join(f"fdb add 02:00:00:00:{i // 256:02x}:{i % 256:02x} dev wrp0 master static\n"
                    for i in range(500))
    host.run(["bridge", "-batch", "-"], input=batch)
    peer = FdbEntry(FLOOD_MAC, ipaddress.IPv4Address("192.0.2.7"))
    await port.apply([PinMac(DEV, HB1, netns=ns), PinMac(DEV, HB2, netns=ns),
                      AddFdb(DEV, peer, netns=ns)])
    assert await port.pinned_macs(DEV, netns=ns) == {HB1, HB2}
    device = await port.vxlan(DEV, netns=ns)
    assert device is not None and device.fdb == {peer}
    shown = json_of(host, "bridge", "-j", "fdb", "show", "dev", DEV)
    assert {r["mac"] for r in shown if r.get("state") == "static"} == {HB1, HB2}
    assert {r["mac"] for r in shown if r.get("dst")} == {FLOOD_MAC}
    assert len(json_of(host, "bridge", "-j", "fdb", "show", "br", "weave")) > 500


async def test_two_services_program_the_heartbeat_path(
        port: NetlinkPort, make_mesh: MeshFactory) -> None:
    """Each host's FastdpService, told to probe the other (no peer on fastdp yet), lets
    heartbeat frames written into one TAP come out of the other's, both ways, so that each
    side's HeartbeatEcho proves the path both ways."""
    mesh: Mesh = make_mesh(2)
    hosts = mesh.hosts
    names = ["aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"]
    taps, services = [], []
    for host, name in zip(hosts, names, strict=True):
        ns = path(host)
        await execute(port, bridge_plan(await port.snapshot(ns), mtu=MTU))
        tap = await port.open_tap(TAP_NAME, netns=ns)
        taps.append(tap)
        await execute(port, tap_plan(await port.snapshot(ns), mtu=MTU))
        os.set_blocking(tap.fileno(), False)
        config = LocalConfig(local=ipaddress.IPv4Address(host.ip), mtu=MTU, netns=ns,
                             peer_name=name)
        services.append(FastdpService(port, config))
    echoes = [HeartbeatEcho(names[i], names[1 - i], heartbeat_mac(names[i]),
                            heartbeat_mac(names[1 - i])) for i in (0, 1)]
    try:
        for i, service in enumerate(services):
            other = 1 - i
            service.set_heartbeats({names[other]: ipaddress.IPv4Address(hosts[other].ip)})
            assert await service.converge()
        assert fdb_shown(hosts[0]) == {(heartbeat_mac(names[1]), hosts[1].ip)}
        proved = [False, False]
        deadline = time.monotonic() + 20.0
        while not all(proved):
            assert time.monotonic() < deadline, f"heartbeats proved only {proved}"
            for i in (0, 1):
                os.write(taps[i].fileno(), bytes(VNET_HDR_LEN) + echoes[i].next_frame())
            for i in (0, 1):
                for frame in read_frames(taps[i], lambda f: False, 0.3):
                    with contextlib.suppress(DecodeError):
                        heard = echoes[i].receive(decode_heartbeat_untrusted(frame))
                        proved[i] = proved[i] or heard is Heard.BOTH_WAYS
    finally:
        for tap in taps:
            tap.close()
