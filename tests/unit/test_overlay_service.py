"""The overlay service (``router/overlay/service.py``) of two routers back to back: each
one's TAP writes (its heartbeats) reach the other's ``heartbeat_frame`` unless the "VXLAN
path" is blocked. On trio's MockClock: fastdp once proved, sleeve with "heartbeats lost
since" after a block, back to fastdp after the unblock, the data plane told each time,
the 30 s grace after a connection closes, and the reasons when fastdp is off."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

import trio
import trio.testing

from router.mesh.handshake import HandshakeResult
from router.mesh.names import PeerName
from router.overlay.fastdp.offer import offer_overlays
from router.overlay.fastdp.plan import LocalConfig
from router.overlay.service import GRACE, OverlayService
from router.overlay.switch import OverlaySwitch, SleeveState

NAMES = (PeerName.parse("aa:00:00:00:00:01"), PeerName.parse("aa:00:00:00:00:02"))
IPS = ("10.1.0.1", "10.1.0.2")


class Wire:
    """The VXLAN path between the two: blocked or not."""

    def __init__(self) -> None:
        self.blocked = False
        self.ends: list[OverlayService] = []


class FakeDataplane:
    def __init__(self, wire: Wire, index: int) -> None:
        self.wire, self.index = wire, index
        self.kernel: frozenset[PeerName] = frozenset()
        self.sink: Callable[[bytes], None] | None = None

    def set_heartbeats(self, mac: bytes | None, sink: Callable[[bytes], None] | None) -> None:
        self.sink = sink

    def set_kernel_peers(self, names: Iterable[PeerName]) -> None:
        self.kernel = frozenset(names)

    def write_tap(self, frame: bytes) -> bool:
        if not self.wire.blocked:
            self.wire.ends[1 - self.index].heartbeat_frame(frame)
        return True


def _result(i: int, *, offered: bool = True, encrypted: bool = False) -> HandshakeResult:
    config = _config(1 - i) if offered else None
    return HandshakeResult(
        version=2, outbound=i == 0, remote_name=NAMES[1 - i], remote_nickname=f"h{2 - i}",
        remote_uid=1, remote_short_id=1, remote_overlays=offer_overlays(config), conn_id=7,
        encrypted=encrypted, key=None, sender_high=i == 1, overlay_encrypted=encrypted)


def _config(i: int) -> LocalConfig:
    return LocalConfig(local=ipaddress.IPv4Address(IPS[i]), mtu=1376, peer_name=str(NAMES[i]))


def _pair(wire: Wire) -> tuple[list[OverlayService], list[FakeDataplane]]:
    dps = [FakeDataplane(wire, i) for i in (0, 1)]
    services = [OverlayService(OverlaySwitch(), ourself=NAMES[i], config=_config(i),
                               service=None, dataplane=dps[i]) for i in (0, 1)]
    wire.ends = services
    return services, dps


def _overlays(services: list[OverlayService]) -> list[str | None]:
    return [s.overlay_name(NAMES[1 - i]) for i, s in enumerate(services)]


def test_fastdp_falls_back_and_returns_and_tells_the_data_plane() -> None:
    async def main() -> None:
        wire = Wire()
        services, dps = _pair(wire)
        async with trio.open_nursery() as nursery:
            for s in services:
                await nursery.start(s.run)
            for i, s in enumerate(services):
                s.connection_added(_result(i), IPS[1 - i])
                s.sleeve_changed(NAMES[1 - i], SleeveState.ESTABLISHED, 1500)
            await trio.sleep(3)
            assert _overlays(services) == ["fastdp", "fastdp"]
            assert dps[0].kernel == {NAMES[1]} and dps[1].kernel == {NAMES[0]}
            assert services[0].overlay_mtu(NAMES[1]) == 1376

            wire.blocked = True
            await trio.sleep(8)
            assert _overlays(services) == ["sleeve", "sleeve"]
            assert dps[0].kernel == frozenset()
            peer = services[0].peer_overlays()[str(NAMES[1])]
            assert peer.reason.startswith("heartbeats lost since "), peer
            assert peer.address == IPS[1]

            wire.blocked = False
            await trio.sleep(35)  # retry_max + interval + hold, at most
            assert _overlays(services) == ["fastdp", "fastdp"]
            stats = services[0].statistics()
            assert stats["to_sleeve"] == 1 and stats["to_fastdp"] == 2

            services[0].connection_removed(NAMES[1])  # e.g. host2's router stops
            await trio.sleep(2)
            assert dps[0].kernel == {NAMES[1]}  # kept for the grace
            await trio.sleep(GRACE)
            assert dps[0].kernel == frozenset()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_reasons_when_fastdp_is_off() -> None:
    async def main() -> None:
        wire = Wire()
        dp = FakeDataplane(wire, 0)
        off = OverlayService(OverlaySwitch(fastdp_enabled=False), ourself=NAMES[0],
                             config=None, service=None, dataplane=dp,
                             reason_off="--no-fastdp")
        off.connection_added(_result(0), IPS[1])
        enc = OverlayService(OverlaySwitch(), ourself=NAMES[0], config=None, service=None,
                             dataplane=dp, reason_off="--password")
        enc.connection_added(_result(0, encrypted=True), IPS[1])
        plain = OverlayService(OverlaySwitch(), ourself=NAMES[0], config=_config(0),
                               service=None, dataplane=dp)
        plain.connection_added(_result(0, offered=False), IPS[1])
        got = [s.peer_overlays()[str(NAMES[1])] for s in (off, enc, plain)]
        assert [p.overlay for p in got] == ["sleeve"] * 3
        assert [p.reason for p in got] == ["disabled by flag (--no-fastdp)",
                                           "encryption required", "no fastdp offered"]
        assert off.statistics()["disabled_reason"] == "--no-fastdp"

    trio.run(main)


def test_the_sleeve_state_reaches_the_report_and_holds_fastdp() -> None:
    """The sleeve's events (``SleeveService`` calls ``sleeve_changed``) are in the
    report; with no established sleeve a lost fastdp path is not given up."""
    async def main() -> None:
        wire = Wire()
        services, _dps = _pair(wire)
        async with trio.open_nursery() as nursery:
            for s in services:
                await nursery.start(s.run)
            for i, s in enumerate(services):
                s.connection_added(_result(i), IPS[1 - i])
            services[0].sleeve_changed(NAMES[1], SleeveState.HEARD, 0)
            await trio.sleep(3)
            assert _overlays(services) == ["fastdp", "fastdp"]
            peer = services[0].peer_overlays()[str(NAMES[1])]
            assert (peer.sleeve, peer.sleeve_mtu) == ("heard", 0)
            wire.blocked = True
            await trio.sleep(8)
            assert _overlays(services) == ["fastdp", "fastdp"]  # nowhere better to go
            stats = services[0].statistics()
            assert stats["held_on_fastdp"] == 1
            entry = stats["peers"][str(NAMES[1])]  # type: ignore[index]
            assert entry["reason"].endswith("; sleeve not established"), entry
            assert entry["overlay"] == "fastdp" and entry["sleeve"] == "heard"
            services[0].sleeve_changed(NAMES[1], SleeveState.ESTABLISHED, 1440)
            await trio.sleep(0.1)
            assert _overlays(services) == ["sleeve", "fastdp"]
            peer = services[0].peer_overlays()[str(NAMES[1])]
            assert (peer.sleeve, peer.sleeve_mtu) == ("established", 1440)
            services[0].sleeve_changed(NAMES[1], SleeveState.PENDING, 1400)  # MTU only
            assert services[0].peer_overlays()[str(NAMES[1])].sleeve_mtu == 1400
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
