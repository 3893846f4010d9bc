"""The IPAM allocator: ring, space, consensus and requests together (sans-IO).

One :class:`Allocator` per router. It is fed requests (``allocate``, ``claim``,
``free``, ``prime``, ``rmpeer``, ``reset``), gossip payloads (it is the
:class:`~router.mesh.gossip.Gossiper` of channel ``"ipam"``), the set of reachable
peers and ``now``; it never sends, stores or sleeps itself. After **every** call the
driver (``router/ipam/service.py``) does, in this order:

1. ``take_persistence()``: write the returned :class:`PersistBatch` (if any) in one
   sqlite transaction. Nothing below may happen before it is durable.
2. answer the call (its return value) and every :meth:`Allocator.completions` entry
   (requests that were :class:`Pending` and are now done);
3. send :meth:`Allocator.messages_to_send`: :class:`Unicast` ->
   ``channel.send_unicast``, :class:`Broadcast` -> ``channel.broadcast``,
   :class:`GossipNow` -> ``channel.gossip_update(allocator.gossip())``;
4. sleep until :meth:`Allocator.deadline` and call :meth:`Allocator.handle_timer`.

``completions()`` and ``messages_to_send()`` refuse (LocalProtocolError) while a batch is
waiting to be taken, so step 1 cannot be skipped. The driver also wraps the gossiper
calls the gossip router makes (``on_gossip*``) the same way.

News spreads three ways: ownership we change ourselves is pushed to every neighbour
(:class:`GossipNow`); ownership changes learnt from gossip go on as the delta
``on_gossip`` returns (our state), relayed along the origin's broadcast tree; and our
state is relayed on after every broadcast we receive.

Initialisation (``--ipalloc-init``): ``seed=NAMES`` divides the range among NAMES at
once; ``consensus[=N]`` and ``observer`` elect the seeds when the first allocation or
claim arrives (:mod:`router.ipam.election`). A peer that restarts with a persisted ring
uses it (ignoring its seed), so it never starts a new one
(:mod:`router.ipam.persistence`).

Requests are tried at once and otherwise wait (:mod:`router.ipam.requests`); they are
retried every ``tick_interval`` seconds and whenever the ring or the reachable peers
change (:mod:`router.ipam.fulfil`, which also describes the claim grace). Space moves
on demand, by space requests answered with a donation or a denial
(:mod:`router.ipam.space_requests`).

Payloads (``state``, ``space-request``, ``space-denied``) are laid out and decoded in
:mod:`router.ipam.payloads`; ``paxos`` is ``null`` from observers and once a ring
exists. A malformed payload is a :class:`~router.errors.DecodeError`; a ring that cannot
be merged (other range, other seeds, a conflict) is a RemoteProtocolError with Weave's
message: the connection to that neighbour is dropped and both routers live on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from router.errors import ClosedError, RemoteProtocolError
from router.ipam import (
    COUNTERS,
    MIN_SUBNET_SIZE,
    AllocatorConfig,
    Broadcast,
    Completion,
    GossipNow,
    IpamError,
    IpamStatistics,
    Message,
    Pending,
    PersistBatch,
    PersistedState,
    Seed,
    Unicast,
)
from router.ipam.election import Election
from router.ipam.fulfil import Fulfiller
from router.ipam.payloads import IpamMessage, decode_payload_untrusted, encode_state, space_message
from router.ipam.peers import PeerBook
from router.ipam.persistence import Unsaved, restore_memory, restore_owned, restored_ring
from router.ipam.requests import CLAIM_GRACE, MAX_IDENT, NO_CONTAINER_ID, Request, check_ident
from router.ipam.ring import (
    DifferentRangeError,
    DifferentSeedsError,
    Ring,
    range_text,
    subtract_ranges,
)
from router.ipam.space import Holdings, Space
from router.ipam.space_requests import donation
from router.ipam.statistics import (
    STATUS_IDLE,
    STATUS_PRIMING,
    STATUS_READY,
    STATUS_UNREACHABLE,
    STATUS_WAITING,
    snapshot,
    status_line,
)
from router.mesh.gossip import GossipData
from router.mesh.names import PeerName
from router.wire.constants import MAX_NICKNAME_LEN

__all__ = [  # the names others import from here
    "CHANNEL", "CLAIM_GRACE", "MAX_IDENT", "NO_CONTAINER_ID", "STATUS_IDLE", "STATUS_PRIMING",
    "STATUS_READY", "STATUS_UNREACHABLE", "STATUS_WAITING", "Allocator", "IpamGossip",
]

CHANNEL = "ipam"


class IpamGossip:
    """Gossip data of channel ``"ipam"``: always the allocator's latest state."""

    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    def encode(self) -> list[bytes]:
        """One payload: the current state."""
        return [self.allocator.state_payload()]

    def merge(self, other: GossipData) -> GossipData:
        """Latest state wins, and that is us."""
        return self


class Allocator:
    """IP address management for one peer (see module doc).

    It owns its parts and wires them together: the :class:`~router.ipam.ring.Ring`, our
    :class:`~router.ipam.space.Space`, the :class:`~router.ipam.space.Holdings` of our
    containers, the :class:`~router.ipam.election.Election`, the
    :class:`~router.ipam.peers.PeerBook`, the :class:`~router.ipam.fulfil.Fulfiller`
    (which owns the queue of waiting requests and the space requests sent) and the
    :class:`~router.ipam.persistence.Unsaved` changes. It keeps the ring's evolution
    (election, merges, donations, hand-overs) and the outputs itself.
    """

    def __init__(
        self,
        config: AllocatorConfig,
        *,
        now: float,
        persisted: PersistedState | None = None,
        rng: random.Random | None = None,
        claim_grace: float = CLAIM_GRACE,
    ) -> None:
        """``claim_grace``: seconds a claim of an address owned by an unreachable peer
        waits (retried whenever the reachable peers change) before it fails."""
        self.config = config
        self.ourself = config.ourself
        first = int(config.universe.network_address)
        self._range = (first, first + config.universe.num_addresses)
        self._now = now
        self._next_tick = math.inf
        self.startup_notes: list[str] = []
        ring = restored_ring(persisted, self.ourself, config.universe, self.startup_notes)
        self._ring = ring if ring is not None else Ring(*self._range, self.ourself)
        self._space = Space()
        self._held = Holdings()
        self._election = Election(self.ourself, config.mode, config.target_count)
        self._peers = PeerBook(self.ourself, config.nickname)
        self._counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._messages: list[Message] = []
        self._gossip_queued = False
        self._unsaved = Unsaved()
        self._closed = False
        self._state_cache: tuple[tuple[int, tuple[tuple[PeerName, str], ...]], bytes] | None = None
        self._requests = Fulfiller(
            ring=self._ring, space=self._space, held=self._held, peers=self._peers,
            unsaved=self._unsaved, counts=self._counts, send=self._send,
            rng=rng if rng is not None else random.Random(),
            max_pending=config.max_pending, claim_grace=claim_grace,
        )
        self._load(persisted, ring is not None)

    def _load(self, persisted: PersistedState | None, usable: bool) -> None:
        """Use persisted data if it is ours and for our range (``usable``); otherwise
        start clean."""
        notes, ring = self.startup_notes, self._ring
        if persisted is not None and usable:
            addresses = [int(c.ip) for r in persisted.owned.values() for c in r.cidrs]
            self._requests.space_requests.suspects |= restore_memory(
                persisted, ring, addresses, self._now)
            self._space.set_ranges(self._usable_ranges())
            if isinstance(self.config.mode, Seed) and not ring.empty():
                notes.append("found persisted IPAM data, ignoring supplied seed")
            self._unsaved.owned |= restore_owned(
                persisted.owned, ring, self._space, self._held, notes
            )
            if ring.empty():
                self._election.restore(persisted.paxos, notes)
        else:
            self._unsaved.reset = True
        if self._ring.empty() and isinstance(self.config.mode, Seed):
            notes.append("initialising with supplied IPAM seed")
            self._create_ring(self.config.mode.peers)

    # -- requests -------------------------------------------------------------------------

    def allocate(
        self, ident: str, subnet: IPv4Network | None, now: float, *, is_container: bool = True
    ) -> IPv4Interface | Pending:
        """An address for ``ident`` in ``subnet`` (default subnet if None): now, or later.

        An ident that already holds an address in the subnet gets that one again.
        IpamError for a bad ident, a subnet outside the range, too many pending requests.
        """
        self._enter(now)
        net = subnet if subnet is not None else self.default_subnet
        check_ident(ident)
        if net.num_addresses < MIN_SUBNET_SIZE:
            raise IpamError(f"invalid subnet - smaller than minimum size 4: {net}")
        if not net.overlaps(self.config.universe):
            raise IpamError(f"range {net} out of bounds: {self.config.universe}")
        request = Request("allocate", ident, net, is_container=is_container)
        return self._start(request) or request.result()

    def claim(
        self,
        ident: str,
        cidr: IPv4Interface,
        now: float,
        *,
        is_container: bool = True,
        no_error_on_unknown: bool = False,
    ) -> IPv4Interface | Pending:
        """Give ``ident`` exactly ``cidr``: now, or once its owner is known or has given it.

        ConflictError if another container here holds it or its owner (another peer)
        refuses or is unreachable. With ``no_error_on_unknown`` a claim made before the
        ring is known is answered at once and completed in the background (re-claiming
        addresses of running containers after a restart).
        """
        self._enter(now)
        check_ident(ident)
        request = Request("claim", ident, cidr=cidr, is_container=is_container)
        if no_error_on_unknown and self._ring.empty() and self._ring.contains(int(cidr.ip)):
            request.answered = True
            self._start(request)
            return cidr
        return self._start(request) or request.result()

    def prime(self, now: float) -> Pending | None:
        """Start the election if needed; Pending until the ring is known."""
        self._enter(now)
        request = Request("prime")
        pending = self._start(request)
        if pending is None and request.error is not None:  # pragma: no cover - cannot fail
            raise request.error
        return pending

    def _start(self, request: Request) -> Pending | None:
        """Try ``request``; None when done (result or error in it), else Pending."""
        if request.cidr is None or self._ring.contains(int(request.cidr.ip)):
            self._establish_ring()
        pending = self._requests.start(request, self._now)
        if pending is not None:
            self._schedule()
        return pending

    def lookup(self, ident: str, subnet: IPv4Network | None = None) -> list[IPv4Interface]:
        """The addresses ``ident`` holds (in ``subnet`` if given)."""
        return self._held.lookup(ident, subnet)

    def idents(self, *, containers_only: bool = True) -> list[str]:
        """Every ident holding an address (containers' only, unless told), sorted."""
        return self._held.idents(containers_only=containers_only)

    def free(self, ident: str, address: IPv4Address | None = None) -> list[IPv4Interface]:
        """Release one address of ``ident``, or all of them (and its pending requests)."""
        self._check_open()
        return self._requests.release(ident, address, self._now)

    def prune_owned(self, live: Iterable[str]) -> list[str]:
        """Release every container's addresses unless its ident is in ``live``."""
        gone = [i for i in self._held.idents(containers_only=True) if i not in set(live)]
        for ident in gone:
            self.free(ident)
        return gone

    def cancel(self, ticket: int) -> bool:
        """Give up a pending request (its caller went away); True if it was pending."""
        return bool(self._requests.queue.cancel_where(
            lambda r: r.ticket == ticket and not r.answered, complete=False
        ))

    def rmpeer(self, peer: str, now: float, *, force: bool = False) -> int:
        """Take over every range of the dead peer ``peer`` (name or nickname).

        Returns the number of addresses taken over (``N IPs taken over from NAME``).
        NotFoundError for a peer the ring and the mesh do not know, IpamError for ourself
        and, unless ``force``, for a peer we reach now. Ranges taken from a peer we reach
        are not allocated from while it stays reachable, and are given back when it
        re-asserts them (see :mod:`router.ipam.merge`).
        """
        self._enter(now)
        name = self._peers.resolve(peer, self._ring.peers())
        if name == self.ourself:
            raise IpamError(f"rmpeer: {peer} is this peer; cannot take over our own space")
        if name in self._peers.reachable and not force:
            raise IpamError(
                f"rmpeer: peer {self._peers.describe(name)} is reachable now: rmpeer is for "
                "peers that are gone for good (force it with --force)"
            )
        before = self._space.num_free()
        moved = self._ring.transfer(name, self.ourself)
        if moved:
            self._ring_changed(moved=True)
            self._messages.append(Broadcast(self.state_payload()))
        self._counts["rmpeer_ips"] += self._space.num_free() - before
        return self._space.num_free() - before

    def reset(self, now: float) -> PeerName | None:
        """Hand all our space to another peer and stop (``weave-router reset``).

        Pending requests are cancelled. Returns the heir (None if there is nobody).
        Every later request raises ClosedError.
        """
        self._enter(now)
        self._requests.queue.cancel_where(lambda r: True)
        heir = self._peers.pick_heir(self._ring)
        if heir is not None and self._ring.transfer(self.ourself, heir):
            self._unsaved.ring = True
            self._space.clear()
            self._messages.append(Broadcast(self.state_payload()))
        self._closed = True
        return heir

    # -- the mesh -------------------------------------------------------------------------

    def set_peers(self, peers: Mapping[PeerName, str], now: float) -> None:
        """The peers we can reach now, with their nicknames (from the topology)."""
        self._now = max(self._now, now)
        reachable = frozenset(p for p in peers if p != self.ourself)
        for name, nickname in peers.items():
            self._peers.learn(name, nickname[:MAX_NICKNAME_LEN])
        if self._peers.set_reachable(reachable):
            self._peers.prune(self._ring.peers())
            if not self._closed:
                self._space.set_ranges(self._usable_ranges())
                self._requests.retry(self._now, ask_again=True)

    def set_target_count(self, count: int) -> None:
        """The number of command-line targets changed (it sets the quorum)."""
        self.config = replace(self.config, target_count=count)
        self._election.set_target_count(count)

    def on_gossip_unicast(
        self, src: PeerName, payload: bytes, *, via: PeerName | None = None,
        now: float | None = None,
    ) -> None:
        """A ring sent to us, a space request, or a space denial.

        ``src`` is the sender the message names; ``via`` the neighbour whose (authenticated)
        connection delivered it, None if unknown. Space is donated only to ``via``: a
        request naming another sender (relayed, or forged) is denied. A ring is taken as
        written by ``via`` (see :mod:`router.ipam.merge`). ``now``: when it arrived (a gift
        in it is quarantined from then; default: the latest time we were given).
        """
        if self._closed:
            return
        self._advance(now)
        _check_sender(src, self.ourself)
        msg = decode_payload_untrusted(payload, self.ourself)
        if msg.kind == "state":
            self._receive_state(src, msg, via)
        elif msg.kind == "space-request":
            self._donate(src, msg.start, msg.end, verified=src == via)
        else:
            if src == via and via is not None:
                self._requests.space_requests.denied(via, msg.start, msg.end)
            self._requests.denied(src, msg.start, msg.end)

    def on_gossip_broadcast(
        self, src: PeerName, payload: bytes, *, via: PeerName | None = None,
        now: float | None = None,
    ) -> GossipData | None:
        """A peer's state (a proposal, a new ring, a ring request); relays ours on.

        ``via``: the neighbour that delivered it (the author of the ring it carries)."""
        if self._closed:
            return None
        self._advance(now)
        _check_sender(src, self.ourself)
        self._receive_state(src, self._decode_state(payload), via)
        return IpamGossip(self)

    def gossip(self) -> GossipData | None:
        """Our complete state."""
        return None if self._closed else IpamGossip(self)

    def on_gossip(self, payload: bytes, *, via: PeerName | None = None,
                  now: float | None = None) -> GossipData | None:
        """Merge gossip from neighbour ``via``; if ownership moved, our state is relayed on
        (instead of GossipNow)."""
        if self._closed:
            return None
        self._advance(now)
        msg = self._decode_state(payload)
        already = self._gossip_queued
        self._gossip_queued = True  # a move found here travels as the relayed delta
        try:
            moved = self._receive_state(None, msg, via)
        finally:
            self._gossip_queued = already
        return IpamGossip(self) if moved else None

    # -- output ---------------------------------------------------------------------------

    def take_persistence(self) -> PersistBatch | None:
        """What must be stored (one transaction) before anything else happens; see doc."""
        return self._unsaved.take(self.ourself, self._ring, self._election, self._held,
                                  self._requests.space_requests.suspects)

    def persistence_failed(self, batch: PersistBatch) -> None:
        """The store refused ``batch``: keep it unsaved (nothing may be answered or sent
        until a later :meth:`take_persistence` batch is durable)."""
        self._unsaved.restore(batch)

    def completions(self) -> list[Completion]:
        """Requests answered :class:`Pending` that are now done (drained)."""
        self._unsaved.check_saved()
        return self._requests.queue.take_completions()

    def messages_to_send(self) -> list[Message]:
        """Gossip to send (drained); see module doc."""
        self._unsaved.check_saved()
        out = list(self._messages)
        self._messages.clear()
        self._gossip_queued = False
        return out

    def deadline(self) -> float:
        """When :meth:`handle_timer` wants to run (inf: nothing to retry)."""
        if self._closed:
            return math.inf
        since = self._ring.quarantine_since()
        released = math.inf if since is None else since + self.config.gift_quarantine
        if not (self._election.awaiting or len(self._requests.queue)):
            return released
        return min(self._next_tick, self._requests.queue.grace_deadline(), released)

    def handle_timer(self, now: float) -> None:
        """Retry: propose again while awaiting consensus, else re-ask for space; fail
        claims whose owner stayed unreachable past the grace."""
        self._now = max(self._now, now)
        if self._closed:
            return
        self._release_gifts()
        if now < self._next_tick:
            if now >= self._requests.queue.grace_deadline():
                self._requests.retry(self._now, ask_again=False)
            return
        self._next_tick = now + self.config.tick_interval
        if self._election.awaiting:
            self._requests.space_requests.clear()
            self._propose()
        else:
            self._requests.retry(self._now, ask_again=True)

    def state_payload(self) -> bytes:
        """Our state as a ``"state"`` payload (free counts refreshed first); with a ring,
        encoded once per ring revision and set of nicknames."""
        nicknames = self._peers.nicknames()
        if self._ring.empty():
            return encode_state(nicknames, None, self._election.to_wire())
        self._ring.report_free(self._space.num_free)
        key = (self._ring.revision, tuple(nicknames))
        if self._state_cache is None or self._state_cache[0] != key:
            self._state_cache = (key, encode_state(nicknames, self._ring.to_wire(), None))
        return self._state_cache[1]

    # -- status ---------------------------------------------------------------------------

    @property
    def default_subnet(self) -> IPv4Network:
        """Where allocations without a subnet go."""
        return self.config.default_subnet or self.config.universe

    @property
    def gift_quarantine(self) -> float:
        """Seconds a gift waits before we allocate from it (see :mod:`router.ipam.merge`)."""
        return self.config.gift_quarantine

    @property
    def ring(self) -> Ring:
        """The ring (read it; only the allocator changes it)."""
        return self._ring

    def status(self) -> str:
        """The ``Status:`` line of ``status`` (Weave's words)."""
        return status_line(self._ring, self._election, self._requests.queue, self._peers)

    def statistics(self) -> IpamStatistics:
        """A frozen snapshot for ``status``, ``status ipam``, the report and metrics."""
        return snapshot(
            self.config, ring=self._ring, space=self._space, election=self._election,
            queue=self._requests.queue, peers=self._peers, counts=self._counts,
            suspects=self._requests.space_requests.suspects,
        )

    # -- the ring -------------------------------------------------------------------------

    def _establish_ring(self) -> None:
        """Make progress towards a ring: start the election (or ask electors to)."""
        if not self._ring.empty() or not self._election.start():
            return
        self._schedule()
        self._propose()

    def _propose(self) -> None:
        if self._election.propose():
            self._unsaved.paxos = True
        self._messages.append(Broadcast(self.state_payload()))
        self._check_consensus()

    def _check_consensus(self) -> None:
        value = self._election.consensus()
        if value is not None and self._ring.empty():
            self._create_ring(value)

    def _create_ring(self, peers: Iterable[PeerName]) -> None:
        self._ring.claim_for_peers(peers)
        self._ring_changed(moved=True)
        self._messages.append(Broadcast(self.state_payload()))

    def _ring_changed(self, *, moved: bool) -> None:
        """The ring changed: persist it, resize our space, tell neighbours, retry requests."""
        self._election.awaiting = False
        if moved:
            self._unsaved.ring = True
            if not self._gossip_queued:
                self._messages.append(GossipNow())
                self._gossip_queued = True
        self._space.set_ranges(self._usable_ranges())
        self._peers.prune(self._ring.peers())
        self._requests.retry(self._now, ask_again=True)

    def _usable_ranges(self) -> list[tuple[int, int]]:
        """What we own minus ranges taken (``rmpeer --force``) from a peer we still reach
        (unless they hold allocations): not allocated from until it is gone or re-asserts;
        and minus gifts still in quarantine."""
        held = [
            (start, end) for entry, start, end in self._ring.ranges()
            if entry.peer == self.ourself and self._ring.taken.get(entry.token)
            in self._peers.reachable and not self._space.has_allocations(start, end)
        ]
        held += [(lo, hi) for lo, hi, _donor in self._ring.quarantined()]
        return subtract_ranges(self._ring.owned_ranges(), sorted(held))

    def _advance(self, now: float | None) -> None:
        """Time moved on to ``now`` (None: not known): release gifts whose quarantine
        has passed."""
        if now is not None:
            self._now = max(self._now, now)
        if not self._closed:
            self._release_gifts()

    def _release_gifts(self) -> None:
        if self._end_quarantines():
            self._space.set_ranges(self._usable_ranges())
            self._requests.retry(self._now, ask_again=False)

    def _end_quarantines(self) -> bool:
        """End the quarantines that are over (:meth:`Ring.end_quarantine`); True if any
        did (marked: persisted with the ring, router.ipam.persistence)."""
        if not self._ring.end_quarantine(self._now, self.config.gift_quarantine,
                                         self._peers.reachable):
            return False
        self._unsaved.ring = True
        return True

    def _receive_state(
        self, sender: PeerName | None, msg: IpamMessage, via: PeerName | None
    ) -> bool:
        """Act on a peer's state; True if ring ownership moved (or we re-asserted ours)."""
        for name, nickname in msg.nicknames:
            self._peers.learn(name, nickname)
        if msg.ring is not None:
            return self._merge(msg.ring, via)
        if not self._ring.empty():
            if sender is not None:
                self._messages.append(Unicast(sender, self.state_payload()))
        elif msg.paxos is not None:
            changed, announce = self._election.receive(msg.paxos)
            if changed:
                self._unsaved.paxos = True
            if announce:
                self._messages.append(Broadcast(self.state_payload()))
            self._check_consensus()
        elif self._election.paxos is not None and sender is not None:
            self._establish_ring()  # an observer asked for a ring
        return False

    def _merge(self, other: Ring, via: PeerName | None) -> bool:
        requests = self._requests.space_requests
        asked = requests.solicited(via, self._now) if via is not None else []
        before = self._ring.owned_ranges() if asked else []
        try:
            result = self._ring.merge(
                other, self._space.has_allocations, author=via,
                reachable=self._peers.reachable, solicited=asked, now=self._now,
            )
        except DifferentSeedsError as exc:
            raise RemoteProtocolError(
                "IP allocation was seeded by different peers "
                f"(received: {self._peers.names(exc.received)}, "
                f"ours: {self._peers.names(exc.ours)})"
            ) from None
        except DifferentRangeError as exc:
            raise RemoteProtocolError(
                f"Incompatible IP allocation ranges (received: {range_text(*exc.received)}, "
                f"ours: {range_text(*exc.ours)})"
            ) from None
        if asked and via is not None and result.moved:  # gifts answer the requests they meet
            requests.answered(via, subtract_ranges(self._ring.owned_ranges(), before))
        self._counts["ring_gifts_refused"] += result.refused_gifts
        if result.disputed:  # a donor gave one range to two peers: it goes back to it
            self._counts["ring_gifts_disputed"] += 1
            self._requests.space_requests.suspects.update(result.disputed)
        if result.reasserted:
            self._counts["ring_reassertions"] += 1
        if result.moved:
            self._end_quarantines()  # a gift from the only peer we reach is usable at once
        if result.changed:
            self._ring_changed(moved=result.moved or result.reasserted)
        if result.reasserted and not any(isinstance(m, GossipNow) for m in self._messages):
            self._messages.append(GossipNow())  # the sender too must hear ours is ours
        return result.moved or result.reasserted

    def _donate(self, src: PeerName, start: int, end: int, *, verified: bool) -> None:
        """A peer asked for space in ``[start, end)``: give some, or say no; send our ring.

        Only a ``verified`` requester (the neighbour that delivered the request) gets any."""
        if self._ring.empty():
            return  # it will ask again
        chunk = donation(self._space, self._range, start, end) if verified else None
        if chunk is None:
            self._counts["space_requests_denied"] += 1
            self._messages.append(Unicast(src, space_message("space-denied", start, end)))
        else:
            self._counts["donations"] += 1
            self._ring.grant(*chunk, src)
            self._ring_changed(moved=True)
        self._messages.append(Unicast(src, self.state_payload()))

    # -- helpers --------------------------------------------------------------------------

    def _decode_state(self, payload: bytes) -> IpamMessage:
        msg = decode_payload_untrusted(payload, self.ourself)
        if msg.kind != "state":
            raise RemoteProtocolError(f"ipam: {msg.kind} must be unicast")
        return msg

    def _send(self, message: Message) -> None:
        self._messages.append(message)

    def _enter(self, now: float) -> None:
        self._check_open()
        self._advance(now)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the allocator handed its space over and stopped")

    def _schedule(self) -> None:
        if self._next_tick == math.inf or self._next_tick < self._now:
            self._next_tick = self._now + self.config.tick_interval



def _check_sender(src: PeerName, ourself: PeerName) -> None:
    """A message naming us as its sender is forged (we would answer ourself)."""
    if src == ourself:
        raise RemoteProtocolError(f"ipam: a message claiming to come from us ({ourself})")
