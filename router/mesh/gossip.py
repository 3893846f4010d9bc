"""The gossip layer: named channels over the mesh that IPAM, DNS and the topology use.

Interfaces (as in Weave's mesh):

* :class:`GossipData`: a mergeable piece of state; ``encode()`` gives the payloads.
* :class:`Gossiper`: the receiving side of one channel (IPAM, DNS, topology).
* :class:`GossipChannel`: the sending side handed out by :meth:`GossipRouter.register`.

Three kinds of message, each an event dataclass here (the driver translates them to and
from the wire's ``GossipUnicast``/``GossipBroadcast``/``Gossip``):

1. **unicast** ``(channel, src, dst, payload)``: delivered to ``dst``'s gossiper;
   peers on the way relay it to the next hop of ``unicast_all`` (all symmetric
   connections, so it works before the UDP data path is up).
2. **broadcast** ``(channel, src, payload)``: delivered to every peer once, along the
   broadcast tree of ``src`` (``broadcast_all[src]``); a peer relays what its gossiper
   returns from ``on_gossip_broadcast`` (nothing, if it returns None).
3. **gossip** ``(channel, src, payload)``: ``src`` is the peer the gossip started from.
   The gossiper merges it and returns what was new; that delta is relayed, still under
   ``src``, along ``src``'s broadcast tree (``broadcast_all[src]``), so one piece of
   news costs one message per peer rather than one per connection, and it stops where
   it is no longer new. A peer's own gossip (``gossip_update``) goes to all neighbours.
   Every ``interval`` seconds each channel's complete state (``gossip()``) goes to
   ``fanout`` random neighbours, and a new neighbour gets every channel's complete
   state at once: together these repair any loss. A gossiper that is a
   :class:`NeighbourGossiper` says per neighbour what that is instead
   (``gossip_to_neighbour``: the topology sends a digest to peers that speak digests),
   and may gossip to one neighbour (:meth:`GossipChannel.gossip_to`).

Pending output is kept per neighbour: unicasts and our own broadcasts in FIFO order,
gossip and broadcast relays merged per (channel, source), encoded only when
:meth:`GossipRouter.messages_to_send` is called. The driver pulls each neighbour's
output when that connection can write, so news arriving meanwhile merges into what is
already pending instead of queueing behind it. Each neighbour's pending
items are bounded (``max_queue_per_neighbour``); overflow, messages for a channel we
do not run and unroutable unicasts are counted drops (a unicast for another peer is
relayed whatever its channel: routing needs no gossiper). A unicast whose next hop is
the neighbour it came from is dropped rather than bounced. A gossiper raising
:class:`~router.errors.RemoteProtocolError` (DecodeError included), or any other
``Exception`` while it handles a peer's payload (IPAM's ``BrokenError``, a bug), makes
:meth:`GossipRouter.receive` raise RemoteProtocolError (the cause chained): whatever a
peer's gossip provokes is that peer's fault, so the driver drops that neighbour and the
router lives on. ``BaseException`` (trio's Cancelled, KeyboardInterrupt) passes through.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from router.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from router.mesh.names import PeerName
from router.mesh.routes import Routes, random_neighbours
from router.wire.constants import MAX_CHANNEL_LEN

DEFAULT_INTERVAL = 30.0  # seconds between periodic gossip rounds
DEFAULT_FANOUT = 3  # neighbours per channel per periodic round
DEFAULT_MAX_QUEUE = 1024  # pending items per neighbour
MAX_CHANNEL_NAME = MAX_CHANNEL_LEN  # characters, as the wire allows


class GossipData(Protocol):
    """Mergeable state: what a channel sends."""

    def encode(self) -> list[bytes]:
        """The payloads that carry this data (possibly none)."""
        ...

    def merge(self, other: GossipData) -> GossipData:
        """A new value combining this and ``other`` (same channel); modifies neither.

        The router hands one value to several neighbours' queues and merges there, so
        mutating either operand would corrupt the other queues.
        """
        ...


class Gossiper(Protocol):
    """The receiving side of a channel; payloads are untrusted bytes.

    Raise :class:`~router.errors.DecodeError` (or another RemoteProtocolError) for a
    payload that is malformed or wrong: the sending neighbour is then dropped.
    """

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        """A unicast from ``src`` to us."""
        ...

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        """A broadcast from ``src``; returns what to relay on (None: stop here)."""
        ...

    def gossip(self) -> GossipData | None:
        """Our complete state, for periodic gossip (None: nothing to say)."""
        ...

    def on_gossip(self, payload: bytes) -> GossipData | None:
        """Merge gossip; returns what was new to us (None: nothing), passed on."""
        ...


@runtime_checkable
class NeighbourGossiper(Gossiper, Protocol):
    """A gossiper whose periodic and new-neighbour gossip depends on the neighbour."""

    def gossip_to_neighbour(self, neighbour: PeerName, *, new: bool) -> GossipData | None:
        """What periodic gossip (``new``: a new neighbour) sends ``neighbour`` (None:
        nothing)."""
        ...


@dataclass(frozen=True)
class UnicastIn:
    """A unicast received from a neighbour (maybe for someone else)."""

    channel: str
    src: PeerName
    dst: PeerName
    payload: bytes


@dataclass(frozen=True)
class BroadcastIn:
    """A broadcast from ``src`` received from a neighbour."""

    channel: str
    src: PeerName
    payload: bytes


@dataclass(frozen=True)
class GossipIn:
    """Gossip received from neighbour ``src``."""

    channel: str
    src: PeerName
    payload: bytes


@dataclass(frozen=True)
class UnicastOut:
    """A unicast to send to a neighbour (ours, or relayed)."""

    channel: str
    src: PeerName
    dst: PeerName
    payload: bytes


@dataclass(frozen=True)
class BroadcastOut:
    """A broadcast from ``src`` to send to a neighbour (ours, or relayed)."""

    channel: str
    src: PeerName
    payload: bytes


@dataclass(frozen=True)
class GossipOut:
    """Gossip to send to a neighbour (``src`` is always ourself)."""

    channel: str
    src: PeerName
    payload: bytes


InEvent = UnicastIn | BroadcastIn | GossipIn
OutEvent = UnicastOut | BroadcastOut | GossipOut


@dataclass(frozen=True)
class GossipStatistics:
    """Counters of the gossip router (messages, not payload bytes)."""

    channels: int
    neighbours: int
    queued: int  # pending items over all neighbours
    unicasts_delivered: int
    unicasts_relayed: int
    broadcasts_delivered: int
    broadcasts_relayed: int
    gossip_delivered: int
    gossip_forwarded: int  # deltas queued to other neighbours
    periodic_rounds: int
    messages_sent: int
    dropped_unknown_channel: int
    dropped_unroutable: int
    dropped_queue_full: int
    dropped_looped: int  # our own broadcast came back
    dropped_neighbour_gone: int  # pending items of a neighbour that went away
    bad_payloads: int  # gossiper rejected a payload; the neighbour is dropped


class _Outbox:
    """Pending output for one neighbour."""

    def __init__(self) -> None:
        self.raw: deque[UnicastOut | BroadcastOut] = deque()
        self.gossip: dict[tuple[str, PeerName], GossipData] = {}
        self.relays: dict[tuple[str, PeerName], GossipData] = {}

    def __len__(self) -> int:
        return len(self.raw) + len(self.gossip) + len(self.relays)


class GossipChannel:
    """The sending side of one channel; obtained from :meth:`GossipRouter.register`."""

    def __init__(self, router: GossipRouter, name: str, gossiper: Gossiper) -> None:
        self._router = router
        self.name = name
        self.gossiper = gossiper

    def send_unicast(self, dst: PeerName, payload: bytes) -> bool:
        """Send ``payload`` to peer ``dst``; False if unroutable (a counted drop)."""
        if dst == self._router.ourself:
            raise LocalProtocolError("gossip unicast to ourself")
        return self._router._route_unicast(
            UnicastOut(self.name, self._router.ourself, dst, payload), came_from=None
        )

    def broadcast(self, payload: bytes) -> None:
        """Send ``payload`` to every reachable peer, once each."""
        router = self._router
        event = BroadcastOut(self.name, router.ourself, payload)
        for hop in sorted(router.routes.broadcast_all.get(router.ourself, frozenset())):
            router._enqueue_raw(hop, event)

    @property
    def sender(self) -> PeerName | None:
        """The neighbour that delivered the message being handled (see GossipRouter)."""
        return self._router.sender

    def gossip_update(self, data: GossipData) -> None:
        """Send ``data`` as gossip to all neighbours now."""
        for neighbour in sorted(self._router.neighbours):
            self._router._enqueue_gossip(neighbour, self.name, data)

    def gossip_to(self, neighbour: PeerName, data: GossipData) -> bool:
        """Send ``data`` as gossip to one neighbour (merged with what is pending for it);
        False (a counted drop) if it is not a neighbour or its queue is full."""
        return self._router._enqueue_gossip(neighbour, self.name, data)


class GossipRouter:
    """Channels, relaying and periodic gossip for one peer (sans-IO, see module doc)."""

    def __init__(
        self,
        ourself: PeerName,
        *,
        now: float,
        interval: float = DEFAULT_INTERVAL,
        fanout: int = DEFAULT_FANOUT,
        rng: random.Random | None = None,
        max_queue_per_neighbour: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        if interval <= 0 or fanout < 1 or max_queue_per_neighbour < 1:
            raise LocalProtocolError("gossip interval, fanout and queue bound must be positive")
        self.ourself = ourself
        self._interval = interval
        self._fanout = fanout
        self._rng = rng if rng is not None else random.Random()
        self._max_queue = max_queue_per_neighbour
        self._next_round = now + interval
        self._channels: dict[str, GossipChannel] = {}
        self._outboxes: dict[PeerName, _Outbox] = {}
        self._waiting: set[PeerName] = set()  # neighbours whose outbox is not empty
        self._routes = Routes.empty(ourself)
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._sender: PeerName | None = None

    @property
    def routes(self) -> Routes:
        """The routes given to the last :meth:`set_routes`."""
        return self._routes

    @property
    def neighbours(self) -> frozenset[PeerName]:
        """The neighbours given to the last :meth:`set_routes`."""
        return frozenset(self._outboxes)

    def register(self, channel: str, gossiper: Gossiper) -> GossipChannel:
        """Attach ``gossiper`` to ``channel`` (one gossiper per channel name)."""
        if not channel or len(channel) > MAX_CHANNEL_NAME:
            raise LocalProtocolError(f"channel name must be 1..{MAX_CHANNEL_NAME} characters")
        if channel in self._channels:
            raise LocalProtocolError(f"gossip channel {channel!r} registered twice")
        handle = GossipChannel(self, channel, gossiper)
        self._channels[channel] = handle
        return handle

    def set_routes(self, routes: Routes, neighbours: frozenset[PeerName]) -> None:
        """New routes and the set of neighbours we have a live connection to.

        Pending output for neighbours that went away is dropped (counted); each new
        neighbour is sent every channel's complete state.
        """
        if routes.ourself != self.ourself:
            raise LocalProtocolError("routes computed for another peer")
        self._routes = routes
        for gone in set(self._outboxes) - neighbours:
            self._counts["dropped_neighbour_gone"] += len(self._outboxes.pop(gone))
            self._waiting.discard(gone)
        for new in sorted(neighbours - set(self._outboxes)):
            self._outboxes[new] = _Outbox()
            for name in sorted(self._channels):
                gossiper = self._channels[name].gossiper
                data = (gossiper.gossip_to_neighbour(new, new=True)
                        if isinstance(gossiper, NeighbourGossiper) else gossiper.gossip())
                if data is not None:
                    self._enqueue_gossip(new, name, data)

    # -- input ------------------------------------------------------------------------------

    def receive(self, neighbour: PeerName, event: InEvent) -> None:
        """Handle one message from ``neighbour``; RemoteProtocolError: drop that neighbour."""
        self._sender = neighbour
        try:
            if isinstance(event, UnicastIn):
                self._receive_unicast(neighbour, event)
            elif isinstance(event, BroadcastIn):
                self._receive_broadcast(neighbour, event)
            else:
                self._receive_gossip(neighbour, event)
        finally:
            self._sender = None

    @property
    def sender(self) -> PeerName | None:
        """While a gossiper handles a message: the neighbour whose (authenticated)
        connection delivered it (``src`` is only what the message claims); else None."""
        return self._sender

    def _receive_unicast(self, neighbour: PeerName, event: UnicastIn) -> None:
        if event.dst != self.ourself:
            out = UnicastOut(event.channel, event.src, event.dst, event.payload)
            if self._route_unicast(out, came_from=neighbour):
                self._counts["unicasts_relayed"] += 1
            return
        channel = self._channel(event.channel)
        if channel is not None:
            with self._guard(event.channel):
                channel.gossiper.on_gossip_unicast(event.src, event.payload)
            self._counts["unicasts_delivered"] += 1

    def _receive_broadcast(self, neighbour: PeerName, event: BroadcastIn) -> None:
        if event.src == self.ourself:
            self._counts["dropped_looped"] += 1
            return
        channel = self._channel(event.channel)
        if channel is None:
            return
        with self._guard(event.channel):
            data = channel.gossiper.on_gossip_broadcast(event.src, event.payload)
        self._counts["broadcasts_delivered"] += 1
        if data is None:
            return
        for hop in sorted(self._routes.broadcast_all.get(event.src, frozenset())):
            if hop != neighbour and self._enqueue_relay(hop, event.channel, event.src, data):
                self._counts["broadcasts_relayed"] += 1

    def _receive_gossip(self, neighbour: PeerName, event: GossipIn) -> None:
        channel = self._channel(event.channel)
        if channel is None:
            return
        with self._guard(event.channel):
            delta = channel.gossiper.on_gossip(event.payload)
        self._counts["gossip_delivered"] += 1
        if delta is None:
            return
        # A source our routes do not know yet (its record is news in this very delta) has
        # no tree here: pass the news to every other neighbour rather than drop it.
        tree = self._routes.broadcast_all.get(event.src)
        hops = tree if tree is not None else frozenset(self._outboxes)
        for hop in sorted(hops):
            if hop != neighbour and self._enqueue_gossip(hop, event.channel, delta, event.src):
                self._counts["gossip_forwarded"] += 1

    def _channel(self, name: str) -> GossipChannel | None:
        channel = self._channels.get(name)
        if channel is None:
            self._counts["dropped_unknown_channel"] += 1
        return channel

    @contextmanager
    def _guard(self, channel: str) -> Iterator[None]:
        try:
            yield
        except DecodeError as exc:  # bytes we cannot read: say where they came in
            self._counts["bad_payloads"] += 1
            raise DecodeError(f"gossip channel {channel!r}: {exc}") from exc
        except RemoteProtocolError:  # the gossiper's own words (Weave's, for IPAM): as they are
            self._counts["bad_payloads"] += 1
            raise
        except Exception as exc:  # anything else a peer's gossip provoked: still its fault
            self._counts["bad_payloads"] += 1
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise RemoteProtocolError(f"gossip channel {channel!r}: {what}") from exc

    # -- timers -----------------------------------------------------------------------------

    def deadline(self) -> float:
        """When :meth:`handle_timer` wants to run next (absolute seconds)."""
        return self._next_round if self._channels else math.inf

    def handle_timer(self, now: float) -> None:
        """Periodic gossip: each channel's complete state to ``fanout`` random neighbours."""
        if now < self._next_round:
            return
        self._next_round = now + self._interval
        self._counts["periodic_rounds"] += 1
        for name in sorted(self._channels):
            gossiper = self._channels[name].gossiper
            if isinstance(gossiper, NeighbourGossiper):
                for neighbour in random_neighbours(self._outboxes, self._fanout, self._rng):
                    data = gossiper.gossip_to_neighbour(neighbour, new=False)
                    if data is not None:
                        self._enqueue_gossip(neighbour, name, data)
                continue
            data = gossiper.gossip()
            if data is None:
                continue
            for neighbour in random_neighbours(self._outboxes, self._fanout, self._rng):
                self._enqueue_gossip(neighbour, name, data)

    # -- output -----------------------------------------------------------------------------

    def messages_to_send(self) -> list[tuple[PeerName, OutEvent]]:
        """Everything pending, per neighbour in name order, encoding gossip data now."""
        return [(n, event) for n in sorted(self._outboxes) for event in self.messages_for(n)]

    def messages_for(self, neighbour: PeerName) -> list[OutEvent]:
        """What is pending for one neighbour (encoded now); empty if nothing or unknown."""
        box = self._outboxes.get(neighbour)
        if box is None or not box:
            return []
        out: list[OutEvent] = list(box.raw)
        for (name, src), data in box.gossip.items():
            out.extend(GossipOut(name, src, p) for p in data.encode())
        for (name, src), data in box.relays.items():
            out.extend(BroadcastOut(name, src, p) for p in data.encode())
        self._outboxes[neighbour] = _Outbox()
        self._waiting.discard(neighbour)
        self._counts["messages_sent"] += len(out)
        return out

    def pending(self) -> frozenset[PeerName]:
        """Neighbours with output waiting to be pulled (kept as items are queued: this is
        asked after every message, so it must not walk every neighbour)."""
        return frozenset(self._waiting)

    def statistics(self) -> GossipStatistics:
        """Frozen counters."""
        return GossipStatistics(
            channels=len(self._channels),
            neighbours=len(self._outboxes),
            queued=sum(len(box) for box in self._outboxes.values()),
            **self._counts,
        )

    # -- queueing (also used by GossipChannel) ----------------------------------------------

    def _route_unicast(self, event: UnicastOut, *, came_from: PeerName | None) -> bool:
        """Queue a unicast to its next hop; False (counted) when there is none."""
        hop = event.dst if event.dst in self._outboxes else self._routes.unicast_all.get(event.dst)
        if hop is None or hop == came_from:
            self._counts["dropped_unroutable"] += 1
            return False
        return self._enqueue_raw(hop, event)

    def _enqueue_raw(self, neighbour: PeerName, event: UnicastOut | BroadcastOut) -> bool:
        box = self._outboxes.get(neighbour)
        if not self._room(box, merging=False):
            return False
        assert box is not None
        box.raw.append(event)
        self._waiting.add(neighbour)
        return True

    def _enqueue_gossip(self, neighbour: PeerName, channel: str, data: GossipData,
                        src: PeerName | None = None) -> bool:
        box = self._outboxes.get(neighbour)
        key = (channel, self.ourself if src is None else src)
        if not self._room(box, merging=box is not None and key in box.gossip):
            return False
        assert box is not None
        pending = box.gossip.get(key)
        box.gossip[key] = data if pending is None else pending.merge(data)
        self._waiting.add(neighbour)
        return True

    def _enqueue_relay(
        self, neighbour: PeerName, channel: str, src: PeerName, data: GossipData
    ) -> bool:
        box = self._outboxes.get(neighbour)
        key = (channel, src)
        if not self._room(box, merging=box is not None and key in box.relays):
            return False
        assert box is not None
        pending = box.relays.get(key)
        box.relays[key] = data if pending is None else pending.merge(data)
        self._waiting.add(neighbour)
        return True

    def _room(self, box: _Outbox | None, *, merging: bool) -> bool:
        """Whether an item fits: merging into a pending item always does (counted if not)."""
        if box is None:
            self._counts["dropped_unroutable"] += 1
            return False
        if not merging and len(box) >= self._max_queue:
            self._counts["dropped_queue_full"] += 1
            return False
        return True


_COUNTERS = (
    "unicasts_delivered",
    "unicasts_relayed",
    "broadcasts_delivered",
    "broadcasts_relayed",
    "gossip_delivered",
    "gossip_forwarded",
    "periodic_rounds",
    "messages_sent",
    "dropped_unknown_channel",
    "dropped_unroutable",
    "dropped_queue_full",
    "dropped_looped",
    "dropped_neighbour_gone",
    "bad_payloads",
)
