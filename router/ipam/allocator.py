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
once; ``consensus[=N]`` runs :mod:`router.ipam.consensus` when the first allocation or
claim arrives (deferred until then; any elector that hears a proposal takes part);
``observer`` never votes but asks electors to run the election for it. A peer that
restarts with a persisted ring uses it (ignoring its seed), so it never starts a new one.

Space moves on demand: an allocation that finds no free address in its subnet unicasts a
*space request* (the subnet's range) to a reachable peer that reports free space there,
chosen at random weighted by that free space. The owner donates a CIDR-aligned block
(:meth:`~router.ipam.space.Space.donate`) by granting it in the ring, or answers *space
denied*, and unicasts its ring back either way. A claim of an address another peer
owns is a space request for that one address; if that owner is not reachable (its
connection may only just be coming up), the claim waits up to ``claim_grace`` seconds
for it before failing with ``address A is owned by other peer NAME (nick)``. Pending
requests retry every ``tick_interval`` seconds and whenever the ring or the reachable
peers change.

Payloads (``state``, ``space-request``, ``space-denied``) are laid out and decoded in
:mod:`router.ipam.payloads`; ``paxos`` is ``null`` from observers and once a ring
exists. A malformed payload is a :class:`~router.errors.DecodeError`; a ring that cannot
be merged (other range, other seeds, a conflict) is a RemoteProtocolError with Weave's
message: the connection to that neighbour is dropped and both routers live on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from router.errors import (
    BrokenError,
    ClosedError,
    ConfigError,
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from router.ipam import (
    COUNTERS,
    MIN_SUBNET_SIZE,
    AllocatorConfig,
    Broadcast,
    CancelledError,
    Completion,
    ConflictError,
    Consensus,
    GossipNow,
    IpamError,
    IpamStatistics,
    Message,
    NotFoundError,
    Observer,
    OwnedRecord,
    PeerShare,
    Pending,
    PersistBatch,
    PersistedState,
    Seed,
    Unicast,
)
from router.ipam.consensus import Paxos, quorum_for
from router.ipam.payloads import (
    MAX_NICKNAMES,
    IpamMessage,
    decode_payload_untrusted,
    encode_state,
    space_message,
)
from router.ipam.ring import (
    DifferentRangeError,
    DifferentSeedsError,
    Ring,
    range_text,
)
from router.ipam.space import Holdings, Space
from router.mesh.gossip import GossipData
from router.mesh.names import PeerName
from router.wire.constants import MAX_NICKNAME_LEN

CHANNEL = "ipam"
NO_CONTAINER_ID = "_"  # "I have no unique id": the allocation is filed under its address
MAX_IDENT = 255  # characters of a container id

STATUS_IDLE = "idle"
STATUS_PRIMING = "priming"
STATUS_READY = "ready"
STATUS_WAITING = "waiting for IP(s) to become available"
STATUS_UNREACHABLE = "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"

CLAIM_GRACE = 3.0  # seconds a claim waits for an unreachable owner before it fails


@dataclass(eq=False)
class _Op:
    """A request: done at once, or waiting for the ring, for space, or for a peer."""

    kind: str  # "allocate" | "claim" | "prime"
    ident: str = ""
    subnet: IPv4Network | None = None
    cidr: IPv4Interface | None = None  # claim: the address wanted; allocate: the result
    is_container: bool = True
    answered: bool = False  # a claim with no_error_on_unknown: answered, still to do
    ticket: int = 0
    error: IpamError | None = None
    grace_until: float | None = None  # claim: fail after this if its owner stays unreachable
    owner_unreachable: bool = False  # claim: waiting for its owner to become reachable


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
    """IP address management for one peer (see module doc)."""

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
        self._claim_grace = claim_grace
        self.ourself = config.ourself
        first = int(config.universe.network_address)
        self._range = (first, first + config.universe.num_addresses)
        self._rng = rng if rng is not None else random.Random()
        self._now = now
        self._next_tick = math.inf
        self._ring = Ring(*self._range, self.ourself)
        self._space = Space()
        self._paxos: Paxos | None = None
        if not isinstance(config.mode, Observer):
            self._paxos = Paxos(self.ourself, self._quorum())
        self._awaiting = False
        self._closed = False
        self._held = Holdings()
        self._nicknames: dict[PeerName, str] = {self.ourself: config.nickname}
        self._reachable: frozenset[PeerName] = frozenset()
        self._ops: list[_Op] = []
        self._tickets = 0
        self._asked: set[tuple[PeerName, int, int]] = set()
        self._completions: list[Completion] = []
        self._messages: list[Message] = []
        self._gossip_queued = False
        self._dirty = _Dirty()
        self._counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.startup_notes: list[str] = []
        self._load(persisted)

    # -- start-up -------------------------------------------------------------------------

    def _load(self, persisted: PersistedState | None) -> None:
        """Use persisted data if it is ours and for our range; otherwise start clean."""
        ring = self._restored_ring(persisted)
        if persisted is not None and ring is not None:
            self._ring = ring
            self._space.set_ranges(ring.owned_ranges())
            if isinstance(self.config.mode, Seed) and not ring.empty():
                self.startup_notes.append("found persisted IPAM data, ignoring supplied seed")
            self._restore_owned(persisted.owned)
            self._restore_paxos(persisted.paxos)
        else:
            self._dirty.reset = True
        if self._ring.empty() and isinstance(self.config.mode, Seed):
            self.startup_notes.append("initialising with supplied IPAM seed")
            self._create_ring(self.config.mode.peers)

    def _restored_ring(self, persisted: PersistedState | None) -> Ring | None:
        if persisted is None:
            return None
        if persisted.peer_name != self.ourself:
            self.startup_notes.append(
                f"deleting persisted IPAM data for peername {persisted.peer_name}"
            )
            return None
        if persisted.ring is None:
            return Ring(*self._range, self.ourself)
        try:
            ring = Ring.decode_untrusted(persisted.ring, self.ourself)
        except DecodeError as exc:
            self.startup_notes.append(f"deleting unreadable persisted IPAM ring: {exc}")
            return None
        if (ring.start, ring.end) != self._range:
            self.startup_notes.append(
                f"deleting persisted data for IPAM range {range_text(ring.start, ring.end)}; "
                f"our range is {self.config.universe}"
            )
            return None
        return ring

    def _restore_owned(self, owned: Mapping[str, OwnedRecord]) -> None:
        for ident, record in sorted(owned.items()):
            dropped = False
            for cidr in record.cidrs:
                addr = int(cidr.ip)
                if self._held.holder(addr) is not None or (
                    self._ring.contains(addr) and not self._space.claim(addr)
                ):
                    self.startup_notes.append(f"persisted address {cidr.ip} is not ours; dropped")
                    dropped = True
                    continue
                self._record(ident, cidr, record.is_container)
            if not dropped:
                self._dirty.owned.discard(ident)

    def _restore_paxos(self, data: bytes | None) -> None:
        if data is None or self._paxos is None or not self._ring.empty():
            return
        try:
            self._paxos = Paxos.restore(self.ourself, self._quorum(), data)
        except DecodeError as exc:
            self.startup_notes.append(f"ignoring unreadable persisted consensus state: {exc}")

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
        _check_ident(ident)
        if net.num_addresses < MIN_SUBNET_SIZE:
            raise IpamError(f"invalid subnet - smaller than minimum size 4: {net}")
        if not net.overlaps(self.config.universe):
            raise IpamError(f"range {net} out of bounds: {self.config.universe}")
        op = _Op("allocate", ident, net, is_container=is_container)
        return self._start(op) or self._result(op)

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
        _check_ident(ident)
        op = _Op("claim", ident, cidr=cidr, is_container=is_container)
        if no_error_on_unknown and self._ring.empty() and self._ring.contains(int(cidr.ip)):
            op.answered = True
            self._start(op)
            return cidr
        return self._start(op) or self._result(op)

    def prime(self, now: float) -> Pending | None:
        """Start the election if needed; Pending until the ring is known."""
        self._enter(now)
        op = _Op("prime")
        pending = self._start(op)
        if pending is None and op.error is not None:  # pragma: no cover - prime cannot fail
            raise op.error
        return pending

    def _start(self, op: _Op) -> Pending | None:
        """Try ``op``; None when done (result or error in ``op``), else Pending."""
        if op.cidr is None or self._ring.contains(int(op.cidr.ip)):
            self._establish_ring()
        self._asked.clear()
        if self._try(op):
            return None
        if len(self._ops) >= self.config.max_pending:
            self._counts["pending_overflow"] += 1
            raise IpamError(f"too many pending IPAM requests ({self.config.max_pending})")
        self._tickets += 1
        op.ticket = self._tickets
        self._ops.append(op)
        self._schedule()
        return Pending(op.ticket)

    def lookup(self, ident: str, subnet: IPv4Network | None = None) -> list[IPv4Interface]:
        """The addresses ``ident`` holds (in ``subnet`` if given)."""
        return self._held.lookup(ident, subnet)

    def idents(self, *, containers_only: bool = True) -> list[str]:
        """Every ident holding an address (containers' only, unless told), sorted."""
        return self._held.idents(containers_only=containers_only)

    def free(self, ident: str, address: IPv4Address | None = None) -> list[IPv4Interface]:
        """Release one address of ``ident``, or all of them (and its pending requests)."""
        self._check_open()
        if address is None:
            cancelled = self._cancel_where(lambda op: op.ident == ident)
            released = self._held.lookup(ident)
            if not released and not cancelled:
                raise NotFoundError(f"Delete: no addresses for {ident}")
        else:
            released = [c for c in self._held.lookup(ident) if c.ip == address]
            if not released:
                raise NotFoundError(f"Free: address {address} not found for {ident}")
        for cidr in released:
            self._held.remove(ident, cidr)
            self._dirty.owned.add(ident)
            if self._space.is_allocated(int(cidr.ip)):
                self._space.free(int(cidr.ip))
        self._try_pending()
        return released

    def prune_owned(self, live: Iterable[str]) -> list[str]:
        """Release every container's addresses unless its ident is in ``live``."""
        gone = [i for i in self._held.idents(containers_only=True) if i not in set(live)]
        for ident in gone:
            self.free(ident)
        return gone

    def cancel(self, ticket: int) -> bool:
        """Give up a pending request (its caller went away); True if it was pending."""
        return bool(self._cancel_where(lambda op: op.ticket == ticket and not op.answered,
                                       complete=False))

    def rmpeer(self, peer: str, now: float) -> int:
        """Take over every range of the dead peer ``peer`` (name or nickname).

        Returns the number of addresses taken over (``N IPs taken over from NAME``).
        NotFoundError for a peer the ring and the mesh do not know, IpamError for ourself.
        """
        self._enter(now)
        name = self._resolve_peer(peer)
        if name == self.ourself:
            raise IpamError(f"rmpeer: {peer} is this peer; cannot take over our own space")
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
        self._cancel_where(lambda op: True)
        heir = self._pick_heir()
        if heir is not None and self._ring.transfer(self.ourself, heir):
            self._dirty.ring = True
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
            if name != self.ourself and len(self._nicknames) < MAX_NICKNAMES:
                self._nicknames[name] = nickname[:MAX_NICKNAME_LEN]
        if reachable != self._reachable:
            self._reachable = reachable
            self._prune_nicknames()
            if not self._closed:
                self._asked.clear()
                self._try_pending()

    def set_target_count(self, count: int) -> None:
        """The number of command-line targets changed (it sets the quorum)."""
        self.config = replace(self.config, target_count=count)
        if self._paxos is not None:
            self._paxos.set_quorum(self._quorum())

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        """A ring sent to us, a space request, or a space denial."""
        if self._closed:
            return
        msg = decode_payload_untrusted(payload, self.ourself)
        if msg.kind == "state":
            self._receive_state(src, msg)
        elif msg.kind == "space-request":
            self._donate(src, msg.start, msg.end)
        else:
            self._denied(src, msg.start, msg.end)

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        """A peer's state (a proposal, a new ring, a ring request); relays ours on."""
        if self._closed:
            return None
        msg = decode_payload_untrusted(payload, self.ourself)
        if msg.kind != "state":
            raise RemoteProtocolError(f"ipam: {msg.kind} must be unicast")
        self._receive_state(src, msg)
        return IpamGossip(self)

    def gossip(self) -> GossipData | None:
        """Our complete state."""
        return None if self._closed else IpamGossip(self)

    def on_gossip(self, payload: bytes) -> GossipData | None:
        """Merge gossip; if ownership moved, our state is relayed on (instead of GossipNow)."""
        if self._closed:
            return None
        msg = decode_payload_untrusted(payload, self.ourself)
        if msg.kind != "state":
            raise RemoteProtocolError(f"ipam: {msg.kind} must be unicast")
        already = self._gossip_queued
        self._gossip_queued = True  # a move found here travels as the relayed delta
        try:
            moved = self._receive_state(None, msg)
        finally:
            self._gossip_queued = already
        return IpamGossip(self) if moved else None

    # -- output ---------------------------------------------------------------------------

    def take_persistence(self) -> PersistBatch | None:
        """What must be stored (one transaction) before anything else happens; see doc."""
        d = self._dirty
        if not (d.reset or d.ring or d.paxos or d.owned):
            return None
        batch = PersistBatch(
            peer_name=self.ourself,
            reset=d.reset,
            ring=self._ring.encode() if d.ring or (d.reset and not self._ring.empty()) else None,
            paxos=self._paxos.persistent() if self._paxos is not None and d.paxos else None,
            owned={i: self._held.record(i) for i in sorted(d.owned)},
        )
        self._dirty = _Dirty()
        return batch

    def completions(self) -> list[Completion]:
        """Requests answered :class:`Pending` that are now done (drained)."""
        self._check_persisted()
        out, self._completions = self._completions, []
        return out

    def messages_to_send(self) -> list[Message]:
        """Gossip to send (drained); see module doc."""
        self._check_persisted()
        out, self._messages = self._messages, []
        self._gossip_queued = False
        return out

    def deadline(self) -> float:
        """When :meth:`handle_timer` wants to run (inf: nothing to retry)."""
        if self._closed or not (self._awaiting or self._ops):
            return math.inf
        return min(self._next_tick, self._grace_deadline())

    def _grace_deadline(self) -> float:
        """When the first claim waiting for an unreachable owner gives up (inf: none)."""
        return min(
            (op.grace_until for op in self._ops
             if op.owner_unreachable and op.grace_until is not None),
            default=math.inf,
        )

    def handle_timer(self, now: float) -> None:
        """Retry: propose again while awaiting consensus, else re-ask for space; fail
        claims whose owner stayed unreachable past the grace."""
        self._now = max(self._now, now)
        if self._closed:
            return
        if now < self._next_tick:
            if now >= self._grace_deadline():
                self._try_pending()
            return
        self._next_tick = now + self.config.tick_interval
        self._asked.clear()
        if self._awaiting:
            self._propose()
        else:
            self._try_pending()

    def state_payload(self) -> bytes:
        """Our state as a ``"state"`` payload (free counts refreshed first)."""
        if not self._ring.empty():
            self._ring.report_free(self._space.num_free)
        paxos = None
        if self._ring.empty() and self._paxos is not None:
            paxos = self._paxos.to_wire()
        ring = None if self._ring.empty() else self._ring.to_wire()
        return encode_state(sorted(self._nicknames.items()), ring, paxos)

    # -- status ---------------------------------------------------------------------------

    @property
    def default_subnet(self) -> IPv4Network:
        """Where allocations without a subnet go."""
        return self.config.default_subnet or self.config.universe

    @property
    def ring(self) -> Ring:
        """The ring (read it; only the allocator changes it)."""
        return self._ring

    def status(self) -> str:
        """The ``Status:`` line of ``status`` (Weave's words)."""
        if self._ring.empty():
            if not self._awaiting:
                return STATUS_IDLE
            if self._paxos is None:
                return STATUS_PRIMING
            return (
                f"awaiting consensus (quorum: {self._paxos.quorum}, known: {self._paxos.known})"
            )
        if any(op.kind == "allocate" for op in self._ops):
            others = self._ring.peers() - {self.ourself}
            if not others & self._reachable:
                return STATUS_UNREACHABLE
            return STATUS_WAITING
        return STATUS_READY

    def statistics(self) -> IpamStatistics:
        """A frozen snapshot for ``status``, ``status ipam``, the report and metrics."""
        shares = []
        for name, ips in sorted(self._ring.shares().items()):
            us = name == self.ourself
            shares.append(
                PeerShare(
                    name=str(name),
                    nickname=self._nicknames.get(name, ""),
                    ips=ips,
                    reachable=us or name in self._reachable,
                    active=self._space.num_allocated() if us else None,
                )
            )
        quorum = known = None
        if self._paxos is not None and self._ring.empty():
            quorum, known = self._paxos.quorum, self._paxos.known
        return IpamStatistics(
            status=self.status(),
            range=str(self.config.universe),
            default_subnet=str(self.default_subnet),
            max_ips=self.config.universe.num_addresses,
            ips={"local-used": self._space.num_allocated(), "local-free": self._space.num_free()},
            shares=tuple(shares),
            unreachable_peers=sum(1 for s in shares if not s.reachable),
            pending_allocates=sum(1 for op in self._ops if op.kind == "allocate"),
            pending_claims=sum(1 for op in self._ops if op.kind == "claim"),
            quorum=quorum,
            known=known,
            counters=dict(self._counts),
        )

    # -- the ring -------------------------------------------------------------------------

    def _establish_ring(self) -> None:
        """Make progress towards a ring: start the election (or ask electors to)."""
        if not self._ring.empty() or self._awaiting:
            return
        self._awaiting = True
        self._schedule()
        if self._paxos is not None:
            self._paxos.set_quorum(self._quorum())
        self._propose()

    def _propose(self) -> None:
        if self._paxos is not None:
            self._paxos.propose()
            self._dirty.paxos = True
        self._messages.append(Broadcast(self.state_payload()))
        self._check_consensus()

    def _check_consensus(self) -> None:
        value = self._paxos.consensus() if self._paxos is not None else None
        if value is not None and self._ring.empty():
            self._create_ring(value)

    def _create_ring(self, peers: Iterable[PeerName]) -> None:
        self._ring.claim_for_peers(peers)
        self._ring_changed(moved=True)
        self._messages.append(Broadcast(self.state_payload()))

    def _ring_changed(self, *, moved: bool) -> None:
        """The ring changed: persist it, resize our space, tell neighbours, retry requests."""
        self._awaiting = False
        if moved:
            self._dirty.ring = True
            if not self._gossip_queued:
                self._messages.append(GossipNow())
                self._gossip_queued = True
        self._space.set_ranges(self._ring.owned_ranges())
        self._prune_nicknames()
        self._asked.clear()
        self._try_pending()

    def _receive_state(self, sender: PeerName | None, msg: IpamMessage) -> bool:
        """Act on a peer's state; True if ring ownership moved."""
        for name, nickname in msg.nicknames:
            if name != self.ourself and len(self._nicknames) < MAX_NICKNAMES:
                self._nicknames[name] = nickname
        if msg.ring is not None:
            return self._merge(msg.ring)
        if not self._ring.empty():
            if sender is not None:
                self._messages.append(Unicast(sender, self.state_payload()))
        elif msg.paxos is not None:
            if self._paxos is not None:
                learned = self._paxos.update(msg.paxos)  # may include our own old claims
                if self._paxos.think():  # our claims changed: say so (as Weave does)
                    self._dirty.paxos = True
                    self._messages.append(Broadcast(self.state_payload()))
                elif learned:
                    self._dirty.paxos = True
                self._check_consensus()
        elif self._paxos is not None and sender is not None:
            self._establish_ring()  # an observer asked for a ring
        return False

    def _merge(self, other: Ring) -> bool:
        try:
            result = self._ring.merge(other, self._space.has_allocations)
        except DifferentSeedsError as exc:
            raise RemoteProtocolError(
                "IP allocation was seeded by different peers "
                f"(received: {self._names(exc.received)}, ours: {self._names(exc.ours)})"
            ) from None
        except DifferentRangeError as exc:
            raise RemoteProtocolError(
                f"Incompatible IP allocation ranges (received: {range_text(*exc.received)}, "
                f"ours: {range_text(*exc.ours)})"
            ) from None
        if result.changed:
            self._ring_changed(moved=result.moved)
        return result.moved

    def _donate(self, src: PeerName, start: int, end: int) -> None:
        """A peer asked for space in ``[start, end)``: give some, or say no; send our ring."""
        if self._ring.empty():
            return  # it will ask again
        lo, hi = max(start, self._range[0]), min(end, self._range[1])
        chunk = self._space.donate(lo, hi) if lo < hi else None
        if chunk is None:
            self._counts["space_requests_denied"] += 1
            self._messages.append(Unicast(src, space_message("space-denied", start, end)))
        else:
            self._counts["donations"] += 1
            self._ring.grant(*chunk, src)
            self._ring_changed(moved=True)
        self._messages.append(Unicast(src, self.state_payload()))

    def _denied(self, src: PeerName, start: int, end: int) -> None:
        """``src`` has no space for us in ``[start, end)``: claims it owns there fail."""
        for op in list(self._ops):
            if op.kind != "claim" or op.cidr is None or not start <= int(op.cidr.ip) < end:
                continue
            if self._ring.owner(int(op.cidr.ip)) == src:
                self._ops.remove(op)
                op.error = ConflictError(self._owned_by_other(op.cidr.ip, src))
                self._complete(op)

    # -- pending requests -----------------------------------------------------------------

    def _try_pending(self) -> None:
        """Retry every waiting request: primes, then claims, then allocations."""
        for kind in ("prime", "claim", "allocate"):
            for op in [op for op in self._ops if op.kind == kind]:
                if op in self._ops and self._try(op):
                    self._ops.remove(op)
                    self._complete(op)

    def _try(self, op: _Op) -> bool:
        """Do ``op`` if it can be done now; True when finished (result or error in it)."""
        if op.kind == "prime":
            return not self._ring.empty()
        if op.kind == "claim":
            return self._try_claim(op)
        return self._try_allocate(op)

    def _try_allocate(self, op: _Op) -> bool:
        assert op.subnet is not None
        held = self.lookup(op.ident, op.subnet)
        if held:
            op.cidr = held[0]
            return True
        if self._ring.empty():
            return False
        net = op.subnet
        lo = max(int(net.network_address) + 1, self._range[0])
        hi = min(int(net.broadcast_address), self._range[1])
        addr = self._space.allocate(lo, hi) if lo < hi else None
        if addr is not None:
            op.cidr = IPv4Interface((addr, net.prefixlen))
            ident = str(IPv4Address(addr)) if op.ident == NO_CONTAINER_ID else op.ident
            self._record(ident, op.cidr, op.is_container)
            self._counts["allocations"] += 1
            return True
        self._ask_for_space(int(net.network_address), int(net.broadcast_address) + 1)
        return False

    def _try_claim(self, op: _Op) -> bool:
        assert op.cidr is not None
        ip, addr = op.cidr.ip, int(op.cidr.ip)
        holder = self._held.holder(addr)
        if holder == str(ip) and op.ident != holder:
            return self._fail(op, ConflictError(f"address {ip} already in use"))
        if holder is not None and holder != op.ident:
            return self._fail(op, ConflictError(f"address {ip} is already owned by {holder}"))
        if holder is not None:
            return True  # the same container claims its own address again
        ident = str(ip) if op.ident == NO_CONTAINER_ID else op.ident
        if not self._ring.contains(addr):
            self._record(ident, op.cidr, op.is_container)  # outside our range: the user's call
            return True
        owner = self._ring.owner(addr)
        if owner is None:
            return False  # wait for the ring
        if owner == self.ourself:
            if not self._space.claim(addr):  # pragma: no cover - ours and not held means free
                raise BrokenError(f"address {ip} is ours, unheld and not free")
            self._record(ident, op.cidr, op.is_container)
            self._counts["claims"] += 1
            return True
        op.owner_unreachable = owner not in self._reachable
        if op.owner_unreachable:
            # Its connection may only just be coming up: wait a bounded grace, then fail.
            if op.grace_until is None:
                op.grace_until = self._now + self._claim_grace
            if self._now >= op.grace_until:
                return self._fail(op, ConflictError(self._owned_by_other(ip, owner)))
            return False
        self._send_space_request(owner, addr, addr + 1)
        return False

    def _fail(self, op: _Op, error: IpamError) -> bool:
        op.error = error
        return True

    def _ask_for_space(self, start: int, end: int) -> None:
        for donor in self._ring.choose_peers_to_ask_for_space(start, end, self._rng):
            if donor in self._reachable:
                self._send_space_request(donor, start, end)
                return

    def _send_space_request(self, dst: PeerName, start: int, end: int) -> None:
        if (dst, start, end) in self._asked:
            return
        self._asked.add((dst, start, end))
        self._counts["space_requests_sent"] += 1
        self._messages.append(Unicast(dst, space_message("space-request", start, end)))

    def _result(self, op: _Op) -> IPv4Interface:
        """The answer of a request finished at once (raises its error)."""
        if op.error is not None:
            raise op.error
        assert op.cidr is not None
        return op.cidr

    def _complete(self, op: _Op) -> None:
        """A pending request finished: queue its answer (or count a background failure)."""
        if op.answered:
            if op.error is not None:
                self._counts["background_claims_failed"] += 1
            return
        cidr = None if op.error is not None or op.kind == "prime" else op.cidr
        self._completions.append(Completion(op.ticket, cidr, op.error))

    def _cancel_where(self, match: Callable[[_Op], bool], *, complete: bool = True) -> int:
        ops = [op for op in self._ops if match(op)]
        for op in ops:
            self._ops.remove(op)
            what = {"allocate": "Allocate", "claim": "Claim", "prime": "Prime"}[op.kind]
            op.error = CancelledError(f"{what} request for {op.ident or 'ring'} cancelled")
            if complete:
                self._complete(op)
        return len(ops)

    # -- helpers --------------------------------------------------------------------------

    def _enter(self, now: float) -> None:
        self._check_open()
        self._now = max(self._now, now)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the allocator handed its space over and stopped")

    def _check_persisted(self) -> None:
        d = self._dirty
        if d.reset or d.ring or d.paxos or d.owned:
            raise LocalProtocolError("take_persistence() first: state must be durable")

    def _schedule(self) -> None:
        if self._next_tick == math.inf or self._next_tick < self._now:
            self._next_tick = self._now + self.config.tick_interval

    def _quorum(self) -> int:
        mode = self.config.mode
        count = mode.count if isinstance(mode, Consensus) else None
        return quorum_for(count, self.config.target_count)

    def _record(self, ident: str, cidr: IPv4Interface, is_container: bool) -> None:
        self._held.add(ident, cidr, is_container)
        self._dirty.owned.add(ident)

    def _resolve_peer(self, text: str) -> PeerName:
        by_nick = sorted(n for n, nick in self._nicknames.items() if nick == text)
        if len(by_nick) > 1:
            raise IpamError(f"rmpeer: nickname {text!r} is ambiguous; give the peer name")
        if by_nick:
            return by_nick[0]
        try:
            name: PeerName | None = PeerName.parse(text)
        except ConfigError:
            name = None
        known = self._ring.peers() | self._reachable | {self.ourself}
        if name is None or name not in known:
            raise NotFoundError(f"rmpeer: unknown peer {text!r}")
        return name

    def _pick_heir(self) -> PeerName | None:
        reachable = self._ring.pick_peer_for_transfer(lambda p: p in self._reachable)
        if reachable is not None:
            return reachable
        others = sorted(p for p in self._nicknames if p != self.ourself)
        for peer in others:
            if peer in self._reachable:
                return peer
        any_ring = self._ring.pick_peer_for_transfer(lambda p: True)
        return any_ring if any_ring is not None else (others[0] if others else None)

    def _prune_nicknames(self) -> None:
        keep = self._ring.peers() | self._reachable | {self.ourself}
        for name in [n for n in self._nicknames if n not in keep]:
            del self._nicknames[name]

    def _names(self, names: Iterable[PeerName]) -> str:
        return "[" + " ".join(self._describe(n) for n in names) + "]"

    def _describe(self, name: PeerName) -> str:
        nick = self._nicknames.get(name)
        return f"{name}({nick})" if nick else str(name)

    def _owned_by_other(self, ip: IPv4Address, owner: PeerName) -> str:
        nick = self._nicknames.get(owner)
        suffix = f" ({nick})" if nick else ""
        return f"address {ip} is owned by other peer {owner}{suffix}"


@dataclass
class _Dirty:
    """What changed since the last :meth:`Allocator.take_persistence`."""

    reset: bool = False
    ring: bool = False
    paxos: bool = False
    owned: set[str] = field(default_factory=set)


def _check_ident(ident: str) -> None:
    if not ident or len(ident) > MAX_IDENT or any(c.isspace() or c == "/" for c in ident):
        raise IpamError(f"invalid container id {ident[:MAX_IDENT]!r}")

