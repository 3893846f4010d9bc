"""fastdp in the router: the switch, the heartbeats and the plan, driven together.

A thin trio driver that joins the sans-IO pieces:

* the sleeve tells it of every connection (:meth:`OverlayService.connection_added`,
  ``connection_removed``): the peer's Hello offer (``offer.offered_by``) and whether the
  data plane must seal (``overlay_encrypted``: a password, outside trusted subnets) go to
  :class:`~router.overlay.switch.OverlaySwitch`; the peer's underlay IP is where its
  heartbeats (and, once on fastdp, its flood entry) point;
* the data plane hands up the heartbeat frames it reads from the TAP
  (:meth:`OverlayService.heartbeat_frame`): decoded, checked by the peer's
  :class:`~router.overlay.fastdp.heartbeat.HeartbeatEcho`; one that proves both ways is
  ``heartbeat_heard``, one that proves one way is answered at once;
* its loop sleeps until the switch's deadline, writes the heartbeats due into the TAP
  (``DataplaneService.write_tap``: the bridge's pins send them into ``vxlan-6784``),
  and applies the switch's changes: the fastdp peers to the plan
  (``FastdpService.set_peers``: flood entries) and to the data plane
  (``set_kernel_peers``: their sleeve frames are relayed, not delivered), each change
  logged with its reason.

Before the service starts, the bridge filter (``router/kernel/bridge_filter.py``) keeps
frames from crossing between the TAP and the VXLAN device; without it (no ``nft``)
fastdp is not offered and every peer stays on sleeve.
With ``--password`` (and ``--trusted-subnets``: without them no device is made) only
connections trusted at both ends are not ``overlay_encrypted`` and so may leave the
sleeve; the others stay there ("encryption required"), and the daemon's VXLAN guard
(``router/kernel/vxlan_guard.py``) keeps untrusted hosts out of the VXLAN port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from router.errors import DecodeError
from router.mesh.handshake import HandshakeResult
from router.mesh.names import PeerName
from router.overlay.fastdp.heartbeat import Heard, HeartbeatEcho, decode_heartbeat_untrusted
from router.overlay.fastdp.offer import offered_by
from router.overlay.fastdp.plan import LocalConfig, heartbeat_mac
from router.overlay.fastdp.service import FastdpService
from router.overlay.switch import Choice, Overlay, OverlaySwitch, Reason, SleeveState

log = logging.getLogger("weave-router.fastdp")

IDLE = 1.0  # seconds the loop sleeps at most (the switch's deadline is usually sooner)
GRACE = 30.0  # seconds a peer on fastdp keeps its kernel path after its connection closed


class HeartbeatPort(Protocol):
    """What the runner needs of the data plane (``DataplaneService`` has these)."""

    def set_heartbeats(self, mac: bytes | None, sink: Callable[[bytes], None] | None
                       ) -> None: ...

    def set_kernel_peers(self, names: Iterable[PeerName]) -> None: ...

    def write_tap(self, frame: bytes) -> bool: ...


@dataclass
class _Peer:
    name: PeerName
    ip: ipaddress.IPv4Address | None
    echo: HeartbeatEcho
    probe: bool  # it offers fastdp and needs no encryption: heartbeats go to it


@dataclass(frozen=True)
class PeerOverlay:
    """One peer's overlay for ``report`` (``OverlayDiagnostics.fastdp.peers``)."""

    overlay: str  # "fastdp" or "sleeve"
    reason: str  # "" on fastdp; else "no fastdp offered", "heartbeats lost since TIME", ...
    since: str  # UTC, when the overlay last changed (LOST: the last heartbeat heard)
    address: str  # the underlay IP heartbeats go to
    sleeve: str = "pending"  # the sleeve's UDP path: pending, heard, established, failed
    sleeve_mtu: int = 0  # its underlay path MTU once established


def _utc(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class OverlayService:
    """See the module docstring. ``config`` None: fastdp off (``--no-fastdp``, a
    password without ``--trusted-subnets``, no nft): the switch still runs, so
    ``report`` says why per peer."""

    def __init__(self, switch: OverlaySwitch, *, ourself: PeerName,
                 config: LocalConfig | None, service: FastdpService | None,
                 dataplane: HeartbeatPort | None, reason_off: str = "") -> None:
        self._switch = switch
        self._ourself = ourself
        self._config = config
        self._service = service
        self._dataplane = dataplane
        self.reason_off = reason_off  # why fastdp is off here, for status ("" when on)
        self._peers: dict[str, _Peer] = {}
        self._wake = trio.Event()
        self._fastdp: frozenset[str] = frozenset()
        self._answer: set[str] = set()  # peers whose one-way heartbeat wants an answer
        self._frames_sent = 0
        self._bad_frames = 0
        self._clock_offset = time.time() - trio.current_time()
        self._listeners: list[Callable[[], None]] = []
        # Peers that were on fastdp when their connection closed: their flood entries stay
        # for GRACE seconds (a router restart keeps the containers talking), name -> end.
        self._departed: dict[str, tuple[_Peer, float]] = {}

    @property
    def config(self) -> LocalConfig | None:
        return self._config

    def enable(self, config: LocalConfig, service: FastdpService) -> None:
        """Before :meth:`run`: the device's real configuration and its service."""
        self._config, self._service = config, service

    def disable(self, reason: str) -> None:
        """Before :meth:`run`: fastdp cannot run here after all (peers see no heartbeats)."""
        self._config, self._service = None, None
        self.reason_off = reason

    # --- events from the sleeve and the data plane -------------------------------------

    def connection_added(self, result: HandshakeResult, remote_ip: str) -> None:
        name = result.remote_name
        now = trio.current_time()
        ip: ipaddress.IPv4Address | None = None
        with contextlib.suppress(ValueError):
            ip = ipaddress.IPv4Address(remote_ip)
        echo = HeartbeatEcho(str(self._ourself), str(name), heartbeat_mac(str(self._ourself)),
                             heartbeat_mac(str(name)))
        offers = ip is not None and offered_by(result.remote_overlays, self._config)
        self._peers[str(name)] = _Peer(name, ip, echo,
                                       probe=offers and not result.overlay_encrypted)
        self._departed.pop(str(name), None)
        self._switch.encryption_required(str(name), result.overlay_encrypted, now)
        self._switch.peer_offers(str(name), offers, now)
        self._heartbeat_targets()
        self._wake.set()

    def connection_removed(self, peer: PeerName) -> None:
        gone = self._peers.pop(str(peer), None)
        if gone is not None and str(peer) in self._fastdp:
            self._departed[str(peer)] = (gone, trio.current_time() + GRACE)
        self._switch.peer_gone(str(peer), trio.current_time())
        self._heartbeat_targets()
        self._wake.set()

    def sleeve_changed(self, peer: PeerName, state: SleeveState, path_mtu: int) -> None:
        """The sleeve's path to ``peer`` changed state or path MTU (``SleeveService``
        reads its ``HeartbeatPath`` after each heartbeat and timer: never per frame)."""
        now = trio.current_time()
        name = str(peer)
        if state is SleeveState.ESTABLISHED:
            self._switch.sleeve_established(name, now, path_mtu)
        elif state is SleeveState.HEARD:
            self._switch.sleeve_heard(name, now)
        elif state is SleeveState.FAILED:
            self._switch.sleeve_failed(name, now)
        else:
            self._switch.sleeve_path_mtu(name, path_mtu, now)
        self._wake.set()

    def heartbeat_frame(self, frame: bytes) -> None:
        """A heartbeat frame the data plane read from the TAP."""
        try:
            hb = decode_heartbeat_untrusted(frame)
        except DecodeError:
            self._bad_frames += 1
            return
        peer = self._peers.get(hb.sender)
        if peer is None:
            self._bad_frames += 1
            return
        heard = peer.echo.receive(hb)
        if heard is Heard.BOTH_WAYS:
            self._switch.heartbeat_heard(hb.sender, trio.current_time())
        elif heard is Heard.ONE_WAY and peer.probe:
            self._answer.add(hb.sender)  # our answer lets the peer prove both ways now
        self._wake.set()

    def kernel_peers(self) -> frozenset[PeerName]:
        """The peers on fastdp: the kernel carries our frames to them."""
        return frozenset(p.name for p in self._kernel_path().values())

    def _kernel_path(self) -> dict[str, _Peer]:
        """Peers the kernel carries to: on fastdp, or departed within the grace."""
        out = {n: self._peers[n] for n in self._fastdp if n in self._peers}
        for name, (peer, _end) in self._departed.items():
            out.setdefault(name, peer)
        return out

    def on_kernel_peers_changed(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever :meth:`kernel_peers` changes (the sleeve's routes)."""
        self._listeners.append(listener)

    # --- what status shows ---------------------------------------------------------------

    def overlay_name(self, peer: PeerName) -> str | None:
        choice = self._switch.choice(str(peer))
        return None if choice is None else choice.overlay.value

    def overlay_mtu(self, peer: PeerName) -> int | None:
        choice = self._switch.choice(str(peer))
        if choice is None or choice.overlay is not Overlay.FASTDP or self._config is None:
            return None
        return self._config.mtu

    def peer_overlays(self) -> dict[str, PeerOverlay]:
        out: dict[str, PeerOverlay] = {}
        for name, choice in sorted(self._switch.choices().items()):
            peer = self._peers.get(name)
            out[name] = PeerOverlay(
                overlay=choice.overlay.value,
                reason=self._reason_text(choice),
                since=_utc(choice.since + self._clock_offset),
                address="" if peer is None or peer.ip is None else str(peer.ip),
                sleeve=choice.sleeve.value, sleeve_mtu=choice.sleeve_mtu)
        return out

    def _reason_text(self, choice: Choice) -> str:
        if choice.reason is None:
            return ""
        if choice.reason is Reason.DISABLED and self.reason_off:
            return f"{choice.reason.value} ({self.reason_off})"
        return choice.describe(lambda t: _utc(t + self._clock_offset)).partition(" (")[2][:-1]

    def statistics(self) -> dict[str, object]:
        """``OverlayDiagnostics.fastdp`` of the report (our own field names)."""
        s = self._switch.statistics()
        out: dict[str, object] = {
            "enabled": self._config is not None,
            "disabled_reason": self.reason_off,
            "device": "" if self._config is None else self._config.name,
            "mtu": 0 if self._config is None else self._config.mtu,
            "peers_on_fastdp": s.on_fastdp,
            "to_sleeve": s.to_sleeve,
            "to_fastdp": s.to_fastdp,
            "flaps": s.flaps,
            "held_on_fastdp": s.held,
            "heartbeats_sent": self._frames_sent,
            "heartbeats_heard": s.heartbeats_heard,
            "heartbeats_bad": self._bad_frames,
        }
        if self._service is not None:
            k = self._service.statistics()
            out.update(kernel_passes=k.passes, kernel_errors=k.errors,
                       kernel_last_error=k.last_error or "", flood_entries=k.flood_entries,
                       learned_entries=k.learned_entries, learned_removed=k.learned_removed,
                       filter_checks=k.filter_checks, filter_repairs=k.filter_repairs)
        out["peers"] = {name: {"overlay": p.overlay, "reason": p.reason, "since": p.since,
                               "address": p.address, "sleeve": p.sleeve,
                               "sleeve_mtu": p.sleeve_mtu}
                        for name, p in self.peer_overlays().items()}
        return out

    # --- the loop ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            if self._service is not None:
                await nursery.start(self._service.run)
            if self._dataplane is not None and self._config is not None:
                self._dataplane.set_heartbeats(
                    bytes.fromhex(heartbeat_mac(str(self._ourself)).replace(":", "")),
                    self.heartbeat_frame)
            task_status.started()
            while True:
                self._step(trio.current_time())
                deadline = self._switch.deadline()
                now = trio.current_time()
                wait = IDLE if deadline is None else min(IDLE, max(0.0, deadline - now))
                with trio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _step(self, now: float) -> None:
        self._switch.handle_timer(now)
        due = set(self._switch.heartbeats_to_send(now)) | self._answer
        self._answer = set()
        for name in sorted(due):
            peer = self._peers.get(name)
            if peer is None or not peer.probe or self._dataplane is None:
                continue
            if self._dataplane.write_tap(peer.echo.next_frame()):
                self._frames_sent += 1
        changes = self._switch.changes()
        for choice in changes:
            log.info("overlay to %s: %s", choice.peer,
                     choice.describe(lambda t: _utc(t + self._clock_offset)))
        expired = [n for n, (_p, end) in self._departed.items() if end <= now]
        for name in expired:
            del self._departed[name]
            log.info("fastdp to %s: removed, %g s after its connection closed", name, GRACE)
        on_fastdp = frozenset(n for n, c in self._switch.choices().items()
                              if c.overlay is Overlay.FASTDP)
        if on_fastdp != self._fastdp or expired:
            self._fastdp = on_fastdp
            self._apply_fastdp_peers()

    def _apply_fastdp_peers(self) -> None:
        if self._service is not None:
            self._service.set_peers({n: p.ip for n, p in self._kernel_path().items()
                                     if p.ip is not None})
        if self._dataplane is not None:
            self._dataplane.set_kernel_peers(self.kernel_peers())
        for listener in self._listeners:
            listener()

    def _heartbeat_targets(self) -> None:
        if self._service is not None:
            self._service.set_heartbeats({n: p.ip for n, p in self._peers.items()
                                          if p.probe and p.ip is not None})
