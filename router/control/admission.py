"""Which API connections the server keeps: lanes, a per-client cap, and eviction.

Pure bookkeeping (time comes in as ``now``); ``server.py`` acts on its decisions.

Every connection belongs to one **lane**, by how it arrived (``server.py`` decides):
``unix`` (the root-only unix socket the CLI uses), ``root`` (TCP from a socket owned by
uid 0, e.g. Weave's own script: curl run by root) and ``general`` (everyone else). Each
lane has its own capacity, so clients of one lane can never take the slots of another:
no TCP client, however many, can keep the CLI on the unix socket from being served.

Within a lane, a connection is **reading** (waiting for, or receiving, a request) or
**busy** (a request is being handled or answered). A newcomer is admitted like this:

1. its client (a uid, or a remote address) already has ``per_client`` connections in
   the lane, or
2. the lane is full:

then a newcomer whose request head is all there already (a **quick** request) evicts the
client's (case 1) or the lane's (case 2) connection that has been reading longest, among
those the server has read from; failing that, the oldest one not read from yet whose
head was not all there either. Any other newcomer is refused (``server.py`` gives one
that was accepted a moment before its request arrived a second look).

So quick requests are served before slow ones: a well-behaved client sends its request
as it connects, a slow client (slowloris) or an idle keep-alive connection is the
longest-reading one. Slow clients, however many and however fast they reconnect, cannot
keep a quick request out, and they cannot push each other out either (that churn would
cost the router a task per reconnect): a slow newcomer waits for a free slot. Busy
connections are never evicted: a request that waits (an allocation awaiting consensus)
keeps its slot until it is answered; with every slot busy, a newcomer is refused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

LANES = ("unix", "root", "general")


@dataclass(frozen=True)
class LaneLimit:
    """Connections at once in one lane, and of one client in it."""

    capacity: int
    per_client: int


@dataclass(eq=False)
class Slot:
    """One admitted connection."""

    ident: int
    lane: str
    client: str
    busy: bool = False
    since: float = 0.0  # when it entered its current phase
    evicted: bool = False
    fresh: bool = True  # admitted, but not read from yet (see settled)
    ready: bool = False  # its whole request head had arrived when it was admitted


@dataclass(frozen=True)
class Admitted:
    """The newcomer got ``slot``; close the connections in ``evict`` first."""

    slot: Slot
    evict: tuple[Slot, ...] = ()


@dataclass(frozen=True)
class Refused:
    """No room: answer 503 with ``reason`` (one line)."""

    reason: str


@dataclass
class Admission:
    """The connections of every lane (module doc)."""

    limits: dict[str, LaneLimit]
    _slots: dict[str, list[Slot]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    counts: dict[str, int] = field(
        default_factory=lambda: {"admitted": 0, "evicted": 0, "refused": 0})

    def admit(self, lane: str, client: str, now: float, *,
              ready: bool = False) -> Admitted | Refused:
        """Admit a new connection of ``client`` in ``lane`` (it starts reading); ``ready``:
        its whole request head has arrived already."""
        limit = self.limits[lane]
        slots = self._slots.setdefault(lane, [])
        evict: list[Slot] = []
        own = [s for s in slots if s.client == client]
        if limit.per_client < limit.capacity and len(own) >= limit.per_client:
            victim = _victim(own, ready)
            if victim is None:
                return self._refuse(f"too many API requests in progress from {client} "
                                    f"(limit {limit.per_client})")
            evict.append(victim)
        elif len(slots) >= limit.capacity:
            victim = _victim(slots, ready)
            if victim is None:
                return self._refuse(f"too many API requests in progress "
                                    f"(limit {limit.capacity})")
            evict.append(victim)
        for victim in evict:
            self.release(victim)
            victim.evicted = True
            self.counts["evicted"] += 1
        slot = Slot(next(self._ids), lane, client, since=now, ready=ready)
        slots.append(slot)
        self.counts["admitted"] += 1
        return Admitted(slot, tuple(evict))

    def settled(self, slot: Slot) -> None:
        """``slot``'s connection was read from once: from now on it may be evicted. (A
        newcomer is never evicted before the server had a chance to read its request, or
        a storm of newcomers could push out a quick request before it is read.)"""
        slot.fresh = False

    def reading(self, slot: Slot, now: float) -> None:
        """``slot`` waits for its next request."""
        slot.busy, slot.since = False, now

    def busy(self, slot: Slot, now: float) -> None:
        """``slot`` got a whole request: it is not evicted until it reads again."""
        slot.busy, slot.since = True, now

    def release(self, slot: Slot) -> None:
        """``slot``'s connection ended (a no-op if it was evicted already)."""
        slots = self._slots.get(slot.lane, [])
        if slot in slots:
            slots.remove(slot)

    def connected(self, lane: str) -> int:
        """Connections in ``lane`` now."""
        return len(self._slots.get(lane, []))

    def statistics(self) -> dict[str, int]:
        """Counters, and the connections of each lane now."""
        return {**self.counts, **{f"{lane}_connected": self.connected(lane) for lane in LANES}}

    def _refuse(self, reason: str) -> Refused:
        self.counts["refused"] += 1
        return Refused(reason)


def _victim(slots: list[Slot], newcomer_ready: bool) -> Slot | None:
    """For a quick newcomer: the longest-reading connection that was read from; failing
    that, the oldest one not yet read from whose request was not all there. For any other
    newcomer: none."""
    if not newcomer_ready:
        return None
    settled = [s for s in slots if not s.busy and not s.fresh]
    if settled:
        return min(settled, key=lambda s: (s.since, s.ident))
    waiting = [s for s in slots if not s.busy and s.fresh and not s.ready]
    return min(waiting, key=lambda s: (s.since, s.ident), default=None)
