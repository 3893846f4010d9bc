"""The fastdp service (router.overlay.fastdp.service) on the fake kernel port, under trio's
autojump MockClock: changes are applied at once, a periodic resync repairs what someone
else deleted, and a kernel refusal is counted and retried, never raised."""

from __future__ import annotations

import errno
import ipaddress
import socket

import trio
import trio.testing

from router.kernel.bridge_filter import TABLE
from router.kernel.fake import FakeKernel
from router.kernel.nft_events import SAFETY_INTERVAL, NftEvents
from router.kernel.nft_fake import FakeNft
from router.kernel.port import (
    FLOOD_MAC,
    AddBridge,
    DeleteFdb,
    DeleteLink,
    FdbEntry,
    PinMac,
    SetMaster,
    SetMtu,
    UnpinMac,
)
from router.kernel.vxlan_guard import TABLE as GUARD
from router.kernel.vxlan_guard import guard_commands
from router.overlay.fastdp.plan import LocalConfig, heartbeat_mac
from router.overlay.fastdp.service import FastdpService, FastdpStatistics

LOCAL = ipaddress.IPv4Address("192.168.1.1")
PEER_B = ipaddress.IPv4Address("192.168.1.2")
PEER_C = ipaddress.IPv4Address("192.168.1.3")
MAC = "02:00:00:00:00:0b"
DEV = "vxlan-6784"


async def kernel_with_bridge() -> FakeKernel:
    kernel = FakeKernel()
    await kernel.apply([AddBridge("weave", mtu=1376)])
    return kernel


async def entries(kernel: FakeKernel) -> set[FdbEntry]:
    device = await kernel.vxlan(DEV)
    assert device is not None
    return set(device.fdb)


async def test_changes_are_applied_and_a_resync_repairs(autojump_clock: trio.testing.MockClock
                                                        ) -> None:
    kernel = await kernel_with_bridge()
    service = FastdpService(kernel, LocalConfig(local=LOCAL, mtu=1376), resync=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        device = await kernel.vxlan(DEV)
        assert device is not None and device.link.master == "weave" and device.link.up
        assert device.fdb == frozenset()

        service.set_peers({"b": PEER_B, "c": PEER_C})
        service.set_macs({MAC: "b"})
        await trio.sleep(0.01)
        assert await entries(kernel) == {FdbEntry(FLOOD_MAC, PEER_B),
                                         FdbEntry(FLOOD_MAC, PEER_C), FdbEntry(MAC, PEER_B)}
        service.set_peers({"c": PEER_C})  # b went to sleeve: its entries go
        await trio.sleep(0.01)
        assert await entries(kernel) == {FdbEntry(FLOOD_MAC, PEER_C)}

        start = trio.current_time()
        await kernel.apply([DeleteFdb(DEV, FdbEntry(FLOOD_MAC, PEER_C)), SetMtu(DEV, 9000)])
        await trio.sleep(9.0)
        assert await entries(kernel) == set()  # not yet: nothing told the service
        await trio.sleep(1.5)
        assert await entries(kernel) == {FdbEntry(FLOOD_MAC, PEER_C)}
        assert (await kernel.vxlan(DEV)).link.mtu == 1376  # type: ignore[union-attr]

        await kernel.apply([DeleteLink(DEV)])  # someone deleted the whole device
        await trio.sleep(10.5)
        assert await entries(kernel) == {FdbEntry(FLOOD_MAC, PEER_C)}
        assert trio.current_time() - start < 25.0
        stats = service.statistics()
        assert stats.errors == 0 and stats.device and stats.flood_entries == 1
        assert stats.repairs == 5  # create, 2 changes, 2 repairs
        nursery.cancel_scope.cancel()
    assert await kernel.vxlan(DEV) is not None  # leaving the loop leaves the data path up


async def test_a_kernel_refusal_is_counted_and_retried(autojump_clock: trio.testing.MockClock
                                                       ) -> None:
    kernel = await kernel_with_bridge()
    kernel.fail_when(lambda op: "add fdb" in str(op), errno.ENOBUFS)
    service = FastdpService(kernel, LocalConfig(local=LOCAL, mtu=1376), retry=1.0)
    service.set_peers({"b": PEER_B})
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        stats = service.statistics()
        assert stats.errors == 1 and not stats.device
        assert stats.last_error is not None and "No buffer space" in stats.last_error
        await trio.sleep(1.5)
        assert await entries(kernel) == {FdbEntry(FLOOD_MAC, PEER_B)}
        stats = service.statistics()
        assert stats.device and stats.last_error is None and stats.errors == 1
        nursery.cancel_scope.cancel()


async def test_remove_takes_away_the_device_and_statistics_are_frozen() -> None:
    kernel = await kernel_with_bridge()
    service = FastdpService(kernel, LocalConfig(local=LOCAL, mtu=1376))
    service.set_peers({"b": PEER_B})
    assert await service.converge()
    before = service.statistics()
    await service.remove()
    assert await kernel.vxlan(DEV) is None
    assert isinstance(before, FastdpStatistics) and before.device
    assert not service.statistics().device
    await service.remove()  # nothing left: nothing to do


async def test_heartbeat_entries_and_pins_are_kept(autojump_clock: trio.testing.MockClock
                                                   ) -> None:
    kernel = await kernel_with_bridge()
    tap = await kernel.open_tap("vethwe-pcap")
    await kernel.apply([SetMaster("vethwe-pcap", "weave")])
    own = "aa:bb:cc:00:00:01"
    service = FastdpService(kernel, LocalConfig(local=LOCAL, mtu=1376, peer_name=own),
                            resync=10.0)
    service.set_heartbeats({"b": PEER_B})  # probed while on sleeve: no flood entry
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert await entries(kernel) == {FdbEntry(heartbeat_mac("b"), PEER_B)}
        assert await kernel.pinned_macs(DEV) == {heartbeat_mac("b")}
        assert await kernel.pinned_macs("vethwe-pcap") == {heartbeat_mac(own)}
        await kernel.apply([UnpinMac("vethwe-pcap", heartbeat_mac(own)),
                            SetMaster(DEV, None)])  # pins gone behind the service's back
        await trio.sleep(10.5)
        assert await kernel.pinned_macs("vethwe-pcap") == {heartbeat_mac(own)}
        assert await kernel.pinned_macs(DEV) == {heartbeat_mac("b")}
        nursery.cancel_scope.cancel()
    tap.close()


async def test_learned_entries_of_a_peer_that_leaves_are_deleted() -> None:
    kernel = await kernel_with_bridge()
    service = FastdpService(kernel, LocalConfig(local=LOCAL, mtu=1376))
    service.set_peers({"b": PEER_B, "c": PEER_C})
    assert await service.converge()
    kernel.receive_vxlan(DEV, MAC, PEER_B)
    kernel.receive_vxlan(DEV, "02:00:00:00:00:0c", PEER_C)
    assert await service.converge()
    assert service.statistics().learned_entries == 2
    service.set_peers({"c": PEER_C})  # b falls back to sleeve
    assert await service.converge()
    device = await kernel.vxlan(DEV)
    assert device is not None and device.learned == {FdbEntry("02:00:00:00:00:0c", PEER_C)}
    stats = service.statistics()
    assert stats.learned_removed == 1 and stats.learned_entries == 1 and stats.errors == 0


async def test_the_bridge_filter_is_put_back(autojump_clock: trio.testing.MockClock) -> None:
    kernel, nft = await kernel_with_bridge(), FakeNft()
    config = LocalConfig(local=LOCAL, mtu=1376)
    service = FastdpService(kernel, config, resync=10.0, nft=nft)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert TABLE in nft.tables and nft.replaced == 1  # missing at first: installed
        await trio.sleep(10.5)
        assert nft.replaced == 1  # whole: left alone
        nft.flush_ruleset()
        await trio.sleep(10.0)
        assert TABLE in nft.tables and service.statistics().filter_repairs == 2
        nft.flush_chain(TABLE, "forward")
        await trio.sleep(10.0)
        assert len(nft.tables[TABLE].rules) == 3 and service.statistics().filter_repairs == 3
        nft.fail = True  # nft broken: counted as a kernel error, retried
        await trio.sleep(10.0)
        stats = service.statistics()
        assert stats.errors == 1 and "nft" in (stats.last_error or "")
        nft.fail = False
        await trio.sleep(1.5)
        stats = service.statistics()
        assert stats.last_error is None and stats.filter_checks >= 5
        nursery.cancel_scope.cancel()


async def test_the_vxlan_guard_is_kept_beside_the_filter(
        autojump_clock: trio.testing.MockClock) -> None:
    kernel, nft = await kernel_with_bridge(), FakeNft()
    guard = guard_commands(6784, [ipaddress.IPv4Network("192.0.2.0/24")])
    await nft.replace_table(GUARD, guard)
    service = FastdpService(kernel, LocalConfig(local=LOCAL, mtu=1376), resync=10.0, nft=nft,
                            keep=[(GUARD, guard)])
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert nft.replaced == 2  # the filter was missing; the guard was whole
        nft.flush_ruleset()
        await trio.sleep(10.5)
        assert GUARD in nft.tables and TABLE in nft.tables
        assert service.statistics().filter_repairs == 3
        nursery.cancel_scope.cancel()


async def test_an_op_refused_on_every_pass_keeps_nothing_else_out(
        autojump_clock: trio.testing.MockClock) -> None:
    """A pin the kernel refuses on every pass (as a pin over a learned entry once was)
    is counted each time, while the peer's flood entry and the filter check go on."""
    kernel, nft = await kernel_with_bridge(), FakeNft()
    for _ in range(50):
        kernel.fail_when(lambda op: isinstance(op, PinMac), errno.EEXIST)
    service = FastdpService(kernel, LocalConfig(local=LOCAL, mtu=1376), resync=10.0,
                            retry=1.0, nft=nft)
    service.set_heartbeats({"b": PEER_B, "c": PEER_C})
    service.set_peers({"b": PEER_B})
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(3.5)
        assert FdbEntry(FLOOD_MAC, PEER_B) in await entries(kernel)
        assert await kernel.pinned_macs(DEV) == frozenset()
        stats = service.statistics()
        assert stats.errors >= 3 and "File exists" in (stats.last_error or "")
        assert stats.filter_checks == stats.passes and TABLE in nft.tables
        nursery.cancel_scope.cancel()


async def test_with_nft_events_the_filter_is_read_only_when_nftables_changed(
        autojump_clock: trio.testing.MockClock) -> None:
    """Told of nftables changes (here by a socketpair standing in for the netlink group),
    the service reads the filter when told, at once, and otherwise only every
    SAFETY_INTERVAL seconds: its 10 s passes run no nft."""
    kernel, nft = await kernel_with_bridge(), FakeNft()
    ours, kernels = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    events = NftEvents(ours)
    service = FastdpService(kernel, LocalConfig(local=LOCAL, mtu=1376), resync=10.0, nft=nft,
                            events=events)
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        await nursery.start(service.run)
        assert TABLE in nft.tables and service.statistics().filter_checks == 1
        service.set_peers({"b": PEER_B})
        await trio.sleep(45.0)  # a change and four resyncs: no change of nftables heard
        stats = service.statistics()
        assert stats.passes >= 5 and stats.filter_checks == 1, stats
        nft.flush_ruleset()
        kernels.send(b"notification")
        await trio.sleep(0.01)  # at once, not at the next resync
        stats = service.statistics()
        assert TABLE in nft.tables and stats.filter_repairs == 2 and stats.filter_checks == 2
        await trio.sleep(SAFETY_INTERVAL)  # the safety read comes anyway
        assert service.statistics().filter_checks == 3
        nursery.cancel_scope.cancel()
    kernels.close()
