"""The per-peer overlay choice: fastdp (the kernel's VXLAN device) or sleeve, and why.

Sans-IO, like aioquic's connection: events come in with ``now`` (seconds, any monotonic
clock), the core says when it next needs the clock (:meth:`OverlaySwitch.deadline`,
:meth:`OverlaySwitch.handle_timer`), which peers to send a fastdp heartbeat to
(:meth:`OverlaySwitch.heartbeats_to_send`) and which choices changed
(:meth:`OverlaySwitch.changes`). It never sleeps and never reads a clock.

A peer is on fastdp when all of these hold, checked in this order (the first that fails is
the REASON it is on sleeve):

=====================  =================================================  ==================
condition              event                                              reason (when not)
=====================  =================================================  ==================
fastdp enabled here    ``OverlaySwitch(fastdp_enabled=False)``            disabled by flag
no encryption needed   :meth:`~OverlaySwitch.encryption_required`         encryption required
peer offers fastdp     :meth:`~OverlaySwitch.peer_offers`                 no fastdp offered
path proved            :meth:`~OverlaySwitch.heartbeat_heard` in timeout  heartbeats lost since T
=====================  =================================================  ==================

(Before the first heartbeat the reason is "waiting for fastdp heartbeats".)

The path's health, per peer (heartbeats travel through the VXLAN device, as traffic does)::

    WAITING --heard--> UP --no heartbeat for `timeout`--> LOST --heard--> HOLD
                        ^                                   ^              |
                        +------- heard for `hold` ----------+-- timeout ---+

* UP and HOLD send a heartbeat every ``interval``; WAITING and LOST keep probing forever,
  the gap doubling from ``interval`` up to ``retry_max``, so a fallback never sticks
  (Weave's weave#3252, #3993): once the path works again, the other side hears a probe
  within ``retry_max``, both go to HOLD and send fast, and after ``hold`` the peer is back
  on fastdp: at most ``retry_max + interval + hold`` seconds (31 with the defaults).
* Leaving HOLD on a timeout keeps the episode's "lost since" time and counts a flap.

The sleeve's own state per peer comes from its driver (``SleeveService`` polls the
connection's ``HeartbeatPath`` after every heartbeat and timer, never per packet):
:meth:`~OverlaySwitch.sleeve_heard`, :meth:`~OverlaySwitch.sleeve_established` (with its
path MTU), :meth:`~OverlaySwitch.sleeve_path_mtu`, :meth:`~OverlaySwitch.sleeve_failed`.
The choice carries it (``Choice.sleeve``, ``Choice.sleeve_mtu``) for status, and uses it
once: a peer on fastdp whose heartbeats are lost stays on fastdp while its sleeve is not
established (``Choice.held``; "heartbeats lost since T; sleeve not established"): the
sleeve would carry nothing either, and the kernel path may come back. It moves to the
sleeve the moment the sleeve is established.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace


class Overlay(enum.Enum):
    """Which overlay carries a peer's traffic."""

    FASTDP = "fastdp"
    SLEEVE = "sleeve"


class Reason(enum.Enum):
    """Why a peer is on sleeve (the wording of ``report``)."""

    DISABLED = "disabled by flag"
    ENCRYPTION = "encryption required"
    NOT_OFFERED = "no fastdp offered"
    WAITING = "waiting for fastdp heartbeats"
    LOST = "heartbeats lost since"


class SleeveState(enum.Enum):
    """The sleeve's UDP path to one peer, as its heartbeats show it (``forwarder.py``)."""

    PENDING = "pending"  # nothing heard yet
    HEARD = "heard"  # its heartbeats reach us; not yet known to reach it
    ESTABLISHED = "established"  # both ways
    FAILED = "failed"  # timed out (the mesh closes the connection)


class Health(enum.Enum):
    """The fastdp path to one peer, as its heartbeats show it."""

    WAITING = "waiting"  # never heard
    UP = "up"
    LOST = "lost"
    HOLD = "hold"  # heard again after a loss; back UP after `hold` seconds of heartbeats


@dataclass(frozen=True)
class SwitchConfig:
    """Timers, in seconds."""

    interval: float = 1.0  # heartbeat gap while UP or HOLD
    timeout: float = 5.0  # no heartbeat for this long: LOST
    hold: float = 10.0  # heartbeats heard for this long after a loss: UP again
    retry_max: float = 20.0  # longest gap between probes while WAITING or LOST

    def __post_init__(self) -> None:
        if not 0 < self.interval < self.timeout or self.retry_max < self.interval:
            raise ValueError(f"inconsistent fastdp timers: {self}")


@dataclass(frozen=True)
class Choice:
    """One peer's overlay, why (when sleeve), and since when (``now`` of the switch)."""

    peer: str
    overlay: Overlay
    reason: Reason | None
    since: float  # when the overlay last changed (for LOST: the last heartbeat heard)
    sleeve: SleeveState = SleeveState.PENDING
    sleeve_mtu: int = 0  # the sleeve's verified path MTU (0: not established)
    held: bool = False  # on fastdp with its heartbeats lost: the sleeve is not established

    @property
    def sleeve_up(self) -> bool:
        return self.sleeve is SleeveState.ESTABLISHED

    def describe(self, when: Callable[[float], str] = lambda t: f"{t:.3f}") -> str:
        """``fastdp``, ``sleeve (REASON)`` or, held, ``fastdp (heartbeats lost since T;
        sleeve not established)``; ``when`` renders a time for "lost since"."""
        if self.reason is None:
            return self.overlay.value
        text = self.reason.value
        if self.reason is Reason.LOST:
            text += f" {when(self.since)}"
        if self.held:
            text += "; sleeve not established"
        return f"{self.overlay.value} ({text})"


@dataclass
class _Peer:
    name: str
    offers: bool = False
    encrypted: bool = False
    sleeve: SleeveState = SleeveState.PENDING
    sleeve_mtu: int = 0
    health: Health = Health.WAITING
    last_heard: float = -math.inf
    lost_since: float = 0.0
    hold_from: float = 0.0
    next_probe: float = 0.0
    gap: float = 0.0
    flaps: int = 0
    choice: Choice | None = None


@dataclass(frozen=True)
class SwitchStatistics:
    """Counters of an :class:`OverlaySwitch`."""

    peers: int = 0
    on_fastdp: int = 0
    to_sleeve: int = 0  # times a peer left fastdp
    to_fastdp: int = 0  # times a peer came (back) to fastdp
    flaps: int = 0  # HOLD ended by a timeout
    held: int = 0  # peers kept on fastdp with lost heartbeats: no established sleeve
    heartbeats_heard: int = 0
    heartbeats_sent: int = 0


@dataclass
class _Counts:
    to_sleeve: int = 0
    to_fastdp: int = 0
    flaps: int = 0
    heard: int = 0
    sent: int = 0
    changed: dict[str, Choice] = field(default_factory=dict)


class OverlaySwitch:
    """Per-peer overlay choice; see the module docstring."""

    def __init__(self, *, fastdp_enabled: bool = True,
                 config: SwitchConfig | None = None) -> None:
        self._enabled = fastdp_enabled
        self._config = config or SwitchConfig()
        self._peers: dict[str, _Peer] = {}
        self._counts = _Counts()

    # --- events -------------------------------------------------------------------------------

    def peer_offers(self, peer: str, fastdp: bool, now: float) -> None:
        """The peer's handshake said whether it offers fastdp (a new peer starts here)."""
        p = self._peer(peer, now)
        p.offers = fastdp
        self._decide(p, now)

    def encryption_required(self, peer: str, required: bool, now: float) -> None:
        """Traffic with the peer must be encrypted (a password, outside trusted subnets)."""
        p = self._peer(peer, now)
        p.encrypted = required
        self._decide(p, now)

    def heartbeat_heard(self, peer: str, now: float) -> None:
        """A fastdp heartbeat from ``peer`` arrived through the VXLAN device."""
        p = self._peers.get(peer)
        if p is None:
            return  # not (yet) a peer of ours: nothing to prove
        self._counts.heard += 1
        p.last_heard = now
        if p.health is Health.WAITING:
            self._set_health(p, Health.UP, now)
        elif p.health is Health.LOST:
            p.hold_from = now
            self._set_health(p, Health.HOLD, now)
        self._decide(p, now)

    def sleeve_heard(self, peer: str, now: float) -> None:
        """The sleeve's heartbeats from ``peer`` reach us (not yet known both ways)."""
        self._sleeve(peer, SleeveState.HEARD, None, now)

    def sleeve_established(self, peer: str, now: float, path_mtu: int = 0) -> None:
        """The sleeve to ``peer`` works both ways (``path_mtu``: the underlay's, as the
        sleeve uses it)."""
        self._sleeve(peer, SleeveState.ESTABLISHED, path_mtu, now)

    def sleeve_path_mtu(self, peer: str, path_mtu: int, now: float) -> None:
        """The sleeve verified another path MTU to ``peer``."""
        p = self._peers.get(peer)
        if p is not None:
            self._sleeve(peer, p.sleeve, path_mtu, now)

    def sleeve_failed(self, peer: str, now: float) -> None:
        """The sleeve to ``peer`` stopped working (its heartbeats timed out)."""
        self._sleeve(peer, SleeveState.FAILED, 0, now)

    def peer_gone(self, peer: str, now: float) -> None:
        """The connection to ``peer`` closed: forget it."""
        self._peers.pop(peer, None)
        self._counts.changed.pop(peer, None)

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: heartbeat timeouts and the end of holds."""
        for p in self._peers.values():
            self._tick(p, now)

    # --- outputs ------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When :meth:`handle_timer` or :meth:`heartbeats_to_send` next has work; None: never."""
        times = [t for p in self._peers.values() for t in self._due(p)]
        return min(times) if times else None

    def heartbeats_to_send(self, now: float) -> list[str]:
        """Peers to send a fastdp heartbeat to now (each is scheduled for its next one)."""
        due = [p for p in self._peers.values() if self._probing(p) and p.next_probe <= now]
        for p in due:
            self._counts.sent += 1
            if p.health in (Health.UP, Health.HOLD):
                p.gap = self._config.interval
            else:
                p.gap = min(self._config.retry_max, max(self._config.interval, p.gap * 2))
            p.next_probe = now + p.gap
        return sorted(p.name for p in due)

    def changes(self) -> list[Choice]:
        """Choices that changed since the last call (one per peer, the latest)."""
        changed = sorted(self._counts.changed.values(), key=lambda c: c.peer)
        self._counts.changed = {}
        return changed

    def choice(self, peer: str) -> Choice | None:
        """The current choice for ``peer`` (None: not a peer)."""
        p = self._peers.get(peer)
        return None if p is None else p.choice

    def choices(self) -> dict[str, Choice]:
        """Every peer's current choice."""
        return {name: p.choice for name, p in self._peers.items() if p.choice is not None}

    def health(self, peer: str) -> Health | None:
        """The fastdp path's health to ``peer`` (None: not a peer)."""
        p = self._peers.get(peer)
        return None if p is None else p.health

    def statistics(self) -> SwitchStatistics:
        """A frozen snapshot of the counters."""
        c = self._counts
        return SwitchStatistics(
            peers=len(self._peers),
            on_fastdp=sum(1 for p in self._peers.values()
                          if p.choice is not None and p.choice.overlay is Overlay.FASTDP),
            to_sleeve=c.to_sleeve, to_fastdp=c.to_fastdp, flaps=c.flaps,
            held=sum(1 for p in self._peers.values() if p.choice is not None and p.choice.held),
            heartbeats_heard=c.heard, heartbeats_sent=c.sent)

    # --- internals ----------------------------------------------------------------------------

    def _peer(self, peer: str, now: float) -> _Peer:
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(peer, next_probe=now)
        return p

    def _sleeve(self, peer: str, state: SleeveState, mtu: int | None, now: float) -> None:
        p = self._peer(peer, now)
        p.sleeve = state
        if mtu is not None:
            p.sleeve_mtu = mtu
        self._decide(p, now)

    def _probing(self, p: _Peer) -> bool:
        return self._enabled and p.offers

    def _due(self, p: _Peer) -> list[float]:
        times = [p.next_probe] if self._probing(p) else []
        if p.health in (Health.UP, Health.HOLD):
            times.append(p.last_heard + self._config.timeout)
        if p.health is Health.HOLD:
            times.append(p.hold_from + self._config.hold)
        return times

    def _tick(self, p: _Peer, now: float) -> None:
        cfg = self._config
        if p.health in (Health.UP, Health.HOLD) and now >= p.last_heard + cfg.timeout:
            if p.health is Health.UP:
                p.lost_since = p.last_heard
            else:
                self._counts.flaps += 1
                p.flaps += 1
            self._set_health(p, Health.LOST, now)
        elif p.health is Health.HOLD and now >= p.hold_from + cfg.hold:
            self._set_health(p, Health.UP, now)
        self._decide(p, now)

    def _set_health(self, p: _Peer, health: Health, now: float) -> None:
        p.health = health
        if health in (Health.LOST, Health.WAITING):  # probe at once, then back off
            p.gap = 0.0
            p.next_probe = now
        elif health is Health.HOLD:  # let the other side hear us quickly
            p.gap = self._config.interval
            p.next_probe = min(p.next_probe, now)

    def _reason(self, p: _Peer) -> Reason | None:
        if not self._enabled:
            return Reason.DISABLED
        if p.encrypted:
            return Reason.ENCRYPTION
        if not p.offers:
            return Reason.NOT_OFFERED
        if p.health is Health.WAITING:
            return Reason.WAITING
        if p.health in (Health.LOST, Health.HOLD):
            return Reason.LOST
        return None

    def _decide(self, p: _Peer, now: float) -> None:
        reason = self._reason(p)
        overlay = Overlay.SLEEVE if reason is not None else Overlay.FASTDP
        old = p.choice
        # Lost heartbeats move a peer on fastdp only onto an established sleeve.
        held = (reason is Reason.LOST and p.sleeve is not SleeveState.ESTABLISHED
                and old is not None and old.overlay is Overlay.FASTDP)
        if held:
            overlay = Overlay.FASTDP
        if old is not None and (old.overlay, old.reason, old.held) == (overlay, reason, held):
            if (old.sleeve, old.sleeve_mtu) != (p.sleeve, p.sleeve_mtu):
                p.choice = replace(old, sleeve=p.sleeve, sleeve_mtu=p.sleeve_mtu)
                self._counts.changed[p.name] = p.choice
            return
        if old is not None and old.overlay is not overlay:
            if overlay is Overlay.FASTDP:
                self._counts.to_fastdp += 1
            else:
                self._counts.to_sleeve += 1
        elif old is None and overlay is Overlay.FASTDP:
            self._counts.to_fastdp += 1
        since = p.lost_since if reason is Reason.LOST else now
        p.choice = Choice(p.name, overlay, reason, since, p.sleeve, p.sleeve_mtu, held)
        self._counts.changed[p.name] = p.choice
