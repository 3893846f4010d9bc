"""Single-decree Paxos over gossip: agree once which peers seed the IPAM ring (sans-IO).

Weave's scheme. Every electing peer (not observers) keeps what it knows of every
elector's *claims*: the highest proposal it promised, the proposal it accepted and that
proposal's value. Peers gossip that whole table; merging keeps the greater promise and
the greater accepted proposal per peer, so loss, duplication and reordering of messages
never matter (only whether news eventually arrives).

1. **Propose** (:meth:`Paxos.propose`): promise a proposal id ``(round, us)`` above every
   round we know of.
2. **Promise** (:meth:`Paxos.think`): adopt the highest promise we know of.
3. **Accept request**: if our promise is our own proposal and a quorum promised it,
   accept it, with the value of the highest proposal any of them accepted, or if none,
   every elector we know of.
4. **Accepted**: if someone accepted the proposal we promised, accept it too.
5. **Decided** (:meth:`Paxos.consensus`): a quorum accepted values of the same origin.

Quorum is ``floor(n / 2) + 1`` of the number of peers expected (:func:`quorum_for`):
``--ipalloc-init consensus=N``, otherwise the peers given on the command line plus us.

Restarts: electors are identified by peer name, so a restarted peer must keep its
promises and must never reuse a proposal id for another value. :meth:`Paxos.persistent`
gives our claims and the highest round we proposed (the driver stores them before
anything we said is sent); :meth:`Paxos.restore` takes them back.

Wire format (a value inside the IPAM gossip payload)::

    [[elector: uint48, promise, accepted, origin, [uint48, ...]], ...]
    promise, accepted, origin = [round: uint, proposer: uint48]     ([0, 0]: none)

Persistent format (CBOR bytes): ``{"round": uint, "claims": [same five fields]}``.
At most :data:`MAX_ELECTORS` electors, each value at most :data:`MAX_ELECTORS` names,
rounds below :data:`MAX_ROUND`; anything else is a :class:`~router.errors.DecodeError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import NAME_BITS, PeerName
from router.wire import cbor

MAX_ELECTORS = 10_000
MAX_ROUND = 1 << 62
MAX_STATE_BYTES = 4 * 1024 * 1024


def quorum_for(init_peer_count: int | None, target_count: int) -> int:
    """Weave's quorum: ``consensus=N`` gives ``N // 2 + 1``, else ``(targets + 1) // 2 + 1``."""
    if init_peer_count is not None:
        if init_peer_count < 1:
            raise LocalProtocolError("the initial peer count must be at least 1")
        return init_peer_count // 2 + 1
    return (max(target_count, 0) + 1) // 2 + 1


@dataclass(frozen=True, order=True)
class ProposalId:
    """``(round, proposer)``, ordered; round 0 means "none" and precedes every proposal."""

    round: int = 0
    proposer: int = 0

    def valid(self) -> bool:
        """Whether this names a real proposal."""
        return self.round > 0


NO_PROPOSAL = ProposalId()


@dataclass(frozen=True)
class Claims:
    """What one elector promised and accepted."""

    promise: ProposalId = NO_PROPOSAL
    accepted: ProposalId = NO_PROPOSAL
    origin: ProposalId = NO_PROPOSAL  # the proposal that first chose ``value``
    value: tuple[PeerName, ...] = field(default=())


class Paxos:
    """One elector's view of the election (see module doc)."""

    def __init__(self, ourself: PeerName, quorum: int) -> None:
        self.ourself = ourself
        self._quorum = 0
        self.set_quorum(quorum)
        self._round_floor = 0  # highest round we ever proposed (persisted)
        self._knows: dict[PeerName, Claims] = {ourself: Claims()}

    @classmethod
    def restore(cls, ourself: PeerName, quorum: int, data: bytes) -> Paxos:
        """An elector that continues from :meth:`persistent`; DecodeError if malformed."""
        raw = cbor.decode_untrusted(data, max_size=MAX_STATE_BYTES)
        if not isinstance(raw, dict) or set(raw) != {"round", "claims"}:
            raise DecodeError("paxos: expected a map with round and claims")
        node = cls(ourself, quorum)
        node._round_floor = _uint(raw["round"], MAX_ROUND - 1, "paxos round")
        name, claims = _decode_claims(raw["claims"])
        if name != ourself:
            raise DecodeError("paxos: persisted claims are another peer's")
        node._knows[ourself] = claims
        return node

    @property
    def quorum(self) -> int:
        """How many electors must agree."""
        return self._quorum

    def set_quorum(self, quorum: int) -> None:
        """Change the quorum (the number of command-line targets may change)."""
        if quorum < 1:
            raise LocalProtocolError("quorum must be at least 1")
        self._quorum = quorum

    @property
    def known(self) -> int:
        """How many electors we know of (us included)."""
        return len(self._knows)

    @property
    def claims(self) -> Claims:
        """Our own claims."""
        return self._knows[self.ourself]

    def gossip_state(self) -> Mapping[PeerName, Claims]:
        """Everything we know, to gossip."""
        return dict(self._knows)

    def persistent(self) -> bytes:
        """What must survive a restart: our claims and the highest round we proposed."""
        return cbor.encode(
            {"round": self._round_floor, "claims": _encode_claims(self.ourself, self.claims)}
        )

    # -- the algorithm --------------------------------------------------------------------

    def update(self, state: Mapping[PeerName, Claims]) -> bool:
        """Merge another elector's knowledge; True if we learnt something."""
        changed = False
        for name, theirs in state.items():
            mine = self._knows.get(name)
            if mine is None:
                if len(self._knows) >= MAX_ELECTORS:
                    continue
                self._knows[name] = theirs
                changed = True
                continue
            merged = mine
            if mine.promise < theirs.promise:
                merged = Claims(theirs.promise, merged.accepted, merged.origin, merged.value)
            if mine.accepted < theirs.accepted:
                merged = Claims(merged.promise, theirs.accepted, theirs.origin, theirs.value)
            if merged != mine:
                self._knows[name] = merged
                changed = True
        return changed

    def propose(self) -> None:
        """Start a new proposal that supersedes every one we know of."""
        rounds = [c.promise.round for c in self._knows.values()]
        rounds += [c.accepted.round for c in self._knows.values()]
        rnd = max([*rounds, self._round_floor]) + 1
        if rnd >= MAX_ROUND:
            raise LocalProtocolError("paxos round counter exhausted")
        self._round_floor = rnd
        ours = self.claims
        self._knows[self.ourself] = Claims(
            ProposalId(rnd, int(self.ourself)), ours.accepted, ours.origin, ours.value
        )
        self.think()

    def think(self) -> bool:
        """Promise, accept-request and accept steps; True if our claims changed."""
        ours = self.claims
        promise = max(c.promise for c in self._knows.values())
        accepted, origin, value = ours.accepted, ours.origin, ours.value
        if promise.proposer == int(self.ourself) and promise.valid():
            promised = [c for c in self._knows.values() if c.promise == promise]
            if len(promised) >= self._quorum:
                best = max(promised, key=lambda c: c.accepted)
                if best.accepted.valid():
                    origin, value = best.origin, best.value
                else:
                    origin, value = promise, tuple(sorted(self._knows))
                accepted = promise
        for other in self._knows.values():
            if other.accepted == promise and promise.valid():
                accepted, origin, value = other.accepted, other.origin, other.value
                break
        new = Claims(promise, accepted, origin, value)
        if new == ours:
            return False
        self._knows[self.ourself] = new
        return True

    def consensus(self) -> tuple[PeerName, ...] | None:
        """The decided value (sorted, unique peer names), or None while undecided."""
        counts: dict[ProposalId, int] = {}
        for claims in self._knows.values():
            if not claims.accepted.valid():
                continue
            counts[claims.origin] = counts.get(claims.origin, 0) + 1
            if counts[claims.origin] >= self._quorum:
                return tuple(sorted(set(claims.value)))
        return None

    # -- codec ----------------------------------------------------------------------------

    def to_wire(self) -> list[Any]:
        """Our knowledge as the CBOR-ready value of the module doc."""
        return [_encode_claims(name, c) for name, c in sorted(self._knows.items())]


def state_from_wire(raw: Any) -> dict[PeerName, Claims]:
    """Check and decode a gossiped election table; DecodeError if malformed."""
    if not isinstance(raw, list) or len(raw) > MAX_ELECTORS:
        raise DecodeError(f"paxos: expected a list of at most {MAX_ELECTORS} electors")
    out: dict[PeerName, Claims] = {}
    for item in raw:
        name, claims = _decode_claims(item)
        if name in out:
            raise DecodeError(f"paxos: elector {name} listed twice")
        out[name] = claims
    return out


def encode_state(state: Mapping[PeerName, Claims]) -> list[Any]:
    """The wire value of an election table (for tests and tools)."""
    return [_encode_claims(name, c) for name, c in sorted(state.items())]


def _encode_claims(name: PeerName, c: Claims) -> list[Any]:
    return [
        int(name),
        [c.promise.round, c.promise.proposer],
        [c.accepted.round, c.accepted.proposer],
        [c.origin.round, c.origin.proposer],
        [int(v) for v in c.value],
    ]


def _decode_claims(raw: Any) -> tuple[PeerName, Claims]:
    if not isinstance(raw, list) or len(raw) != 5:
        raise DecodeError("paxos: expected [elector, promise, accepted, origin, value]")
    name = _name(raw[0])
    promise, accepted, origin = (_proposal(raw[i]) for i in (1, 2, 3))
    if not isinstance(raw[4], list) or len(raw[4]) > MAX_ELECTORS:
        raise DecodeError("paxos: bad value")
    value = tuple(_name(v) for v in raw[4])
    if accepted.valid() != origin.valid() or accepted.valid() != bool(value):
        raise DecodeError("paxos: accepted proposal, origin and value disagree")
    return name, Claims(promise, accepted, origin, value)


def _proposal(raw: Any) -> ProposalId:
    if not isinstance(raw, list) or len(raw) != 2:
        raise DecodeError("paxos: expected a proposal [round, proposer]")
    return ProposalId(_uint(raw[0], MAX_ROUND - 1, "paxos round"), int(_name(raw[1])))


def _name(raw: Any) -> PeerName:
    return PeerName(_uint(raw, (1 << NAME_BITS) - 1, "peer name"))


def _uint(value: Any, limit: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise DecodeError(f"{what}: expected an integer in 0..{limit}")
    return value


def normalize(value: Iterable[PeerName]) -> tuple[PeerName, ...]:
    """A consensus value as the ring wants it: sorted, without duplicates."""
    return tuple(sorted(set(value)))
