"""The IPAM token ring: who owns which part of the allocation range (a CRDT, sans-IO).

The allocation range ``[start, end)`` (addresses as ints) is cut by *tokens*. Each
:class:`Entry` says: peer ``peer`` owns every address from ``token`` up to the next
token (the last entry up to ``end``), believes about ``free`` of them are free, and
this is version ``version`` of that statement. A non-empty ring always has a token at
``start``, so ranges never wrap.

Rules:

* Only the owner of a range changes it: it splits its range (inserting tokens), gives
  parts away (:meth:`Ring.grant`), or reports its free count; each change bumps the
  version of the entries it touches. Tokens are never removed.
* Merge (:meth:`Ring.merge`) is per token: for a token both sides know the greater
  ``(version, free, peer)`` is a candidate, and :mod:`router.ipam.merge` decides whether
  it is taken, from who delivered the ring (the authenticated ``author``): a range of
  ours is never taken away (we re-assert it above the incoming version), a range becomes
  ours only when its owner delivers that and its earlier owners confirmed they let it
  go (custody; :meth:`unconfirmed`), a gift is quarantined (:meth:`quarantined`) and
  given back to its donor if another peer claims it meanwhile, and versions at or above
  :data:`VERSION_LIMIT` are refused (:class:`RingVersionError`; nothing is merged).
  What the ring remembers beyond its entries (:meth:`memory`) is persisted with it
  (:mod:`router.ipam.persistence`).
* Rings over different ranges, or seeded by different peers, never merge:
  :class:`DifferentRangeError`, :class:`DifferentSeedsError`.
* :meth:`Ring.transfer` (``rmpeer``, hand-over on ``reset``) re-assigns every entry of
  a peer with the version raised by :data:`TRANSFER_VERSION_BUMP`, so the transfer
  wins over the old owner's last updates; ranges we take are remembered
  (:attr:`Ring.taken`) and given back if their old owner, alive after all, re-asserts
  them while we hold no allocations there (:class:`RingConflictError` if we do).

Wire and storage format (CBOR through :mod:`router.wire.cbor`)::

    {"start": uint32, "end": uint (<= 2**32), "seeds": [uint48, ...],
     "entries": [[token: uint32, peer: uint48, version: uint, free: uint], ...]}

with ``start < end``, seeds sorted and unique (at most :data:`MAX_SEEDS`), entries
sorted by token, unique, inside ``[start, end)``, the first at ``start`` (if any), free
no more than the entry's size, versions below ``MAX_VERSION``, at most
:data:`MAX_ENTRIES` entries. Anything else is a :class:`~router.errors.DecodeError`.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from collections.abc import Callable, Iterable, Sequence, Set
from dataclasses import dataclass, replace
from typing import Any

from router.errors import BrokenError, DecodeError, LocalProtocolError, RemoteProtocolError
from router.ipam.merge import NOBODY, Custody, MergeInput, merge_entries
from router.ipam.ring_entry import MAX_VERSION, VERSION_LIMIT, Entry, bumped
from router.mesh.names import NAME_BITS, PeerName
from router.wire import cbor

Range = tuple[int, int]  # [start, end)

MAX_ENTRIES = 65536  # tokens in one ring
MAX_SEEDS = 10_000  # peers a ring can be seeded with
ADDRESS_SPACE = 1 << 32  # IPv4
TRANSFER_VERSION_BUMP = 100  # a transfer outranks this many updates by the old owner
MAX_RING_BYTES = 4 * 1024 * 1024


class RingConflictError(RemoteProtocolError):
    """Incoming ring data contradicts a range of ours that holds allocations."""


class RingVersionError(RemoteProtocolError):
    """An incoming entry's version is at or above :data:`VERSION_LIMIT`."""


class DifferentSeedsError(RemoteProtocolError):
    """The incoming ring was seeded by other peers than ours."""

    def __init__(self, received: tuple[PeerName, ...], ours: tuple[PeerName, ...]) -> None:
        super().__init__("Received ring was seeded differently from ours")
        self.received = received
        self.ours = ours


class DifferentRangeError(RemoteProtocolError):
    """The incoming ring covers another allocation range."""

    def __init__(self, received: Range, ours: Range) -> None:
        super().__init__("Received range differs from ours")
        self.received = received
        self.ours = ours


@dataclass(frozen=True)
class MergeResult:
    """What a merge did: ``changed`` anything, ``moved`` ownership (new tokens/owners)."""

    changed: bool
    moved: bool
    reasserted: bool = False  # we raised versions of ours above incoming ones: spread them
    refused_gifts: int = 0  # entries naming us owner that did not come from the old owner
    disputed: tuple[PeerName, ...] = ()  # donors of quarantined gifts claimed by another


def range_text(start: int, end: int) -> str:
    """``10.32.0.0/12`` when ``[start, end)`` is one CIDR block, else ``first-last``."""
    size = end - start
    if size > 0 and size & (size - 1) == 0 and start % size == 0:
        return str(ipaddress.IPv4Network((start, 32 - size.bit_length() + 1)))
    return f"{ipaddress.IPv4Address(start)}-{ipaddress.IPv4Address(end - 1)}"


class Ring:
    """One peer's replica of the ring (see module doc). ``ourself`` is that peer."""

    def __init__(
        self,
        start: int,
        end: int,
        ourself: PeerName,
        *,
        seeds: Iterable[PeerName] = (),
        entries: Iterable[Entry] = (),
    ) -> None:
        if not 0 <= start < end <= ADDRESS_SPACE:
            raise LocalProtocolError(f"bad ring range [{start}, {end})")
        self.start = start
        self.end = end
        self.ourself = ourself
        self._seeds: tuple[PeerName, ...] = tuple(seeds)
        self._entries: list[Entry] = list(entries)
        # persisted with the ring (router.ipam.persistence; rules in router.ipam.merge):
        # ranges we took over by rmpeer (or were given unasked), by token, with the peer
        # we took them from
        self.taken: dict[int, PeerName] = {}
        self.gifted: set[int] = set()  # tokens of taken that were gifts we did not ask for
        self._custody: Custody = {}  # token -> unconfirmed earlier owners (merge.py)
        # gifts not allocated from yet: (start, end) -> (donor, when it was taken)
        self._quarantine: dict[Range, tuple[PeerName, float]] = {}
        # bumped by every change of the entries or seeds: callers cache encodings by it
        self.revision = 0
        self._encoded: tuple[int, bytes] | None = None
        problem = _entries_problem(start, end, self._entries)
        if problem:
            raise LocalProtocolError(f"bad ring entries: {problem}")

    # -- views ----------------------------------------------------------------------------

    @property
    def seeds(self) -> tuple[PeerName, ...]:
        """The peers this ring was first divided among (sorted)."""
        return self._seeds

    @property
    def entries(self) -> tuple[Entry, ...]:
        """All entries, sorted by token."""
        return tuple(self._entries)

    def empty(self) -> bool:
        """True until the ring is seeded (or merged with a seeded one)."""
        return not self._entries

    def size(self) -> int:
        """Addresses in the whole range."""
        return self.end - self.start

    def contains(self, addr: int) -> bool:
        """Whether ``addr`` is inside the allocation range."""
        return self.start <= addr < self.end

    def _next_token(self, i: int) -> int:
        return self._entries[i + 1].token if i + 1 < len(self._entries) else self.end

    def ranges(self) -> list[tuple[Entry, int, int]]:
        """Every entry with the range ``[start, end)`` it covers."""
        return [(e, e.token, self._next_token(i)) for i, e in enumerate(self._entries)]

    def owner(self, addr: int) -> PeerName | None:
        """The peer owning ``addr`` (None if the ring is empty or ``addr`` is outside)."""
        if not self._entries or not self.contains(addr):
            return None
        i = bisect.bisect_right(self._entries, addr, key=lambda e: e.token) - 1
        return self._entries[i].peer

    def owned_ranges(self, peer: PeerName | None = None) -> list[Range]:
        """The ranges ``peer`` (default: ourself) owns, lowest first, adjacent ones joined."""
        who = self.ourself if peer is None else peer
        out: list[Range] = []
        for entry, start, end in self.ranges():
            if entry.peer != who:
                continue
            if out and out[-1][1] == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out

    def unconfirmed(self, addr: int) -> frozenset[PeerName]:
        """Earlier owners of ``addr``'s range that have not confirmed they let it go
        (:mod:`router.ipam.merge`); while any are left it is never given to us."""
        if not self._entries or not self.contains(addr):
            return NOBODY
        i = bisect.bisect_right(self._entries, addr, key=lambda e: e.token) - 1
        return self._custody.get(self._entries[i].token, NOBODY)

    def quarantined(self) -> list[tuple[int, int, PeerName]]:
        """Gifts not allocated from yet (``start, end, donor``), lowest first: a donation
        is held until its quarantine has passed with no other claim to it (merge.py)."""
        return [(lo, hi, donor) for (lo, hi), (donor, _t) in sorted(self._quarantine.items())]

    def quarantine_since(self) -> float | None:
        """When the oldest quarantined gift was taken (None: there is none)."""
        return min((t for _d, t in self._quarantine.values()), default=None)

    def end_quarantine(self, now: float, length: float,
                       reachable: Set[PeerName]) -> list[Range]:
        """Release the gifts taken at least ``length`` seconds before ``now`` (the test is
        ``taken + length <= now``, as the deadline is computed), and those whose donor is
        the only peer we reach (there is nobody it could have given them to as well whom
        the quarantine would hear from): they become usable."""
        done = [span for span, (donor, t) in self._quarantine.items()
                if t + length <= now or not reachable - {donor}]
        for span in done:
            del self._quarantine[span]
        return sorted(done)

    def memory(self) -> tuple[dict[int, PeerName], Custody, list[tuple[int, int, PeerName]],
                              set[int]]:
        """What the ring remembers beyond its entries, to persist: :attr:`taken`, custody
        (token -> unconfirmed earlier owners), the quarantined gifts and :attr:`gifted`."""
        return dict(self.taken), dict(self._custody), self.quarantined(), set(self.gifted)

    def restore_memory(self, taken: dict[int, PeerName], custody: Custody,
                       quarantine: Iterable[tuple[int, int, PeerName]],
                       gifted: Iterable[int], now: float) -> None:
        """Take up persisted :meth:`memory` (after a restart): only what still fits the
        entries is kept; quarantined gifts start their quarantine again at ``now``."""
        ours = {e.token for e in self._entries if e.peer == self.ourself}
        others = {e.token for e in self._entries if e.peer != self.ourself}
        self.taken = {t: p for t, p in taken.items() if t in ours}
        self.gifted = {t for t in gifted if t in self.taken}
        self._custody = {t: peers for t, peers in custody.items() if t in others and peers}
        self._quarantine = {(lo, hi): (donor, now) for lo, hi, donor in quarantine}
        self._prune_quarantine()

    def _prune_quarantine(self) -> None:
        """Forget quarantined gifts that are no longer all ours (handed over on reset)."""
        owned = self.owned_ranges()
        for lo, hi in list(self._quarantine):
            if not any(a <= lo and hi <= b for a, b in owned):
                del self._quarantine[(lo, hi)]

    def peers(self) -> frozenset[PeerName]:
        """Every peer owning at least one range."""
        return frozenset(e.peer for e in self._entries)

    def shares(self) -> dict[PeerName, int]:
        """Addresses owned per peer."""
        out: dict[PeerName, int] = {}
        for entry, start, end in self.ranges():
            out[entry.peer] = out.get(entry.peer, 0) + end - start
        return out

    # -- changes by the owner -------------------------------------------------------------

    def claim_for_peers(self, peers: Iterable[PeerName]) -> None:
        """Seed an empty ring: the range split evenly among ``peers`` (sorted, unique)."""
        if self._entries:
            raise LocalProtocolError("only an empty ring can be seeded")
        seeds = sorted(set(peers))
        if not seeds or len(seeds) > min(MAX_SEEDS, self.size()):
            raise LocalProtocolError(f"cannot seed a ring of {self.size()} with {len(seeds)}")
        size, count = self.size(), len(seeds)
        bounds = [self.start + size * i // count for i in range(count + 1)]
        self._entries = [
            Entry(bounds[i], peer, 0, bounds[i + 1] - bounds[i]) for i, peer in enumerate(seeds)
        ]
        self._seeds = tuple(seeds)
        self._check()

    def grant(self, start: int, end: int, peer: PeerName) -> None:
        """Give ``[start, end)``, which we own entirely, to ``peer`` (a donation)."""
        if not self.start <= start < end <= self.end:
            raise LocalProtocolError(f"grant of [{start}, {end}) outside the ring")
        for entry, lo, hi in self.ranges():
            if lo < end and start < hi and entry.peer != self.ourself:
                raise LocalProtocolError(f"grant of [{start}, {end}): not all ours")
        self._split_at(start)
        self._split_at(end)
        for i, entry in enumerate(self._entries):
            if start <= entry.token < end:
                size = self._next_token(i) - entry.token
                self._entries[i] = Entry(entry.token, peer, bumped(entry.version), size)
                self.taken.pop(entry.token, None)
                self.gifted.discard(entry.token)
                self._custody.pop(entry.token, None)
        self._check()

    def _split_at(self, token: int) -> None:
        """Make ``token`` a token (inside a range of ours); the old range keeps its owner."""
        if token >= self.end:
            return
        i = bisect.bisect_right(self._entries, token, key=lambda e: e.token) - 1
        entry = self._entries[i]
        if entry.token == token:
            return
        end = self._next_token(i)
        self._entries[i] = Entry(
            entry.token, entry.peer, bumped(entry.version), min(entry.free, token - entry.token)
        )
        self._entries.insert(i + 1, Entry(token, entry.peer, 0, min(entry.free, end - token)))
        if entry.token in self.taken:
            self.taken[token] = self.taken[entry.token]
            if entry.token in self.gifted:
                self.gifted.add(token)

    def report_free(self, free: Callable[[int, int], int]) -> bool:
        """Refresh the free counts of our entries from ``free(start, end)``; True if changed."""
        changed = False
        for i, (entry, start, end) in enumerate(self.ranges()):
            if entry.peer != self.ourself:
                continue
            count = free(start, end)
            if count != entry.free:
                self._entries[i] = replace(entry, version=bumped(entry.version), free=count)
                changed = True
        if changed:
            self.revision += 1
        return changed

    def transfer(self, from_peer: PeerName, to_peer: PeerName) -> list[Range]:
        """Give every range of ``from_peer`` to ``to_peer``; returns the ranges moved."""
        moved: list[Range] = []
        for i, (entry, start, end) in enumerate(self.ranges()):
            if entry.peer == from_peer:
                self._entries[i] = replace(
                    entry, peer=to_peer, version=bumped(entry.version, TRANSFER_VERSION_BUMP)
                )
                moved.append((start, end))
                self._custody.pop(entry.token, None)
                self.gifted.discard(entry.token)
                if to_peer == self.ourself:
                    self.taken[entry.token] = from_peer
                else:
                    self.taken.pop(entry.token, None)
        self._prune_quarantine()
        self._check()
        return moved

    # -- choosing peers -------------------------------------------------------------------

    def choose_peers_to_ask_for_space(
        self, start: int, end: int, rng: random.Random
    ) -> list[PeerName]:
        """Other peers with free space in ``[start, end)``, in weighted-random order."""
        totals: dict[PeerName, int] = {}
        for entry, lo, hi in self.ranges():
            if hi <= start or lo >= end or entry.free == 0 or entry.peer == self.ourself:
                continue
            totals[entry.peer] = totals.get(entry.peer, 0) + entry.free
        weighted = sorted(
            ((free * rng.random(), peer) for peer, free in sorted(totals.items())), reverse=True
        )
        return [peer for _weight, peer in weighted]

    def pick_peer_for_transfer(self, is_valid: Callable[[PeerName], bool]) -> PeerName | None:
        """The first other peer owning a range for which ``is_valid`` holds."""
        for entry in self._entries:
            if entry.peer != self.ourself and is_valid(entry.peer):
                return entry.peer
        return None

    # -- merge ----------------------------------------------------------------------------

    def merge(
        self,
        other: Ring,
        has_allocations: Callable[[int, int], bool],
        *,
        author: PeerName | None = None,
        reachable: Set[PeerName] = frozenset(),
        solicited: Sequence[Range] = (),
        now: float = 0.0,
    ) -> MergeResult:
        """Merge ``other``, delivered by neighbour ``author``, into this ring.

        See the module doc and :mod:`router.ipam.merge` (who may change which entry);
        ``reachable``: the peers we reach now; ``solicited``: the ranges we asked
        ``author`` for (this ring is its answer); ``now``: when (gifts taken now are
        quarantined from then, :meth:`quarantined`). RemoteProtocolError (nothing merged) for
        another range or seeds, or versions at or above :data:`VERSION_LIMIT`.
        """
        if (other.start, other.end) != (self.start, self.end):
            raise DifferentRangeError((other.start, other.end), (self.start, self.end))
        if other._seeds and self._seeds and other._seeds != self._seeds:
            raise DifferentSeedsError(other._seeds, self._seeds)
        for entry in other._entries:
            if entry.version >= VERSION_LIMIT:
                raise RingVersionError(
                    f"Ring entry for {_ip(entry.token)} (owner {entry.peer}) has version "
                    f"{entry.version}, at or above the limit {VERSION_LIMIT}"
                )
        if not self._entries:  # nothing is ours yet: a new ring is taken as it is
            return self._adopt(other)
        if other._entries == self._entries and not any(
            author in peers for peers in self._custody.values()
        ):  # the commonest gossip: our own ring back, nothing to confirm
            return MergeResult(changed=False, moved=False)
        view = MergeInput(self.ourself, self.end, self._entries, self.taken, self._custody,
                          author, reachable, solicited,
                          {span: donor for span, (donor, _t) in self._quarantine.items()},
                          frozenset(self.gifted))
        out = merge_entries(view, other._entries, has_allocations=has_allocations)
        if out.conflict is not None:
            raise RingConflictError(self._conflict_message(other, out.conflict))
        merged = _clamp_free(out.entries, self.end)
        new = Ring(self.start, self.end, self.ourself, entries=merged)
        lost = subtract_ranges(self.owned_ranges(), new.owned_ranges())
        if any(has_allocations(start, end) for start, end in lost):  # pragma: no cover
            raise BrokenError("merge would drop allocated addresses")
        changed = new._entries != self._entries
        moved = [(e.token, e.peer) for e in new._entries] != [
            (e.token, e.peer) for e in self._entries
        ]
        self._entries = new._entries
        for token in out.yielded:
            self.taken.pop(token, None)
        self.taken.update(out.unsolicited)
        self.gifted = (self.gifted | set(out.unsolicited)) & set(self.taken)
        self._custody = out.custody
        for span in out.disputed:
            del self._quarantine[span]
        for lo, hi, donor in out.gifts:
            self._quarantine[(lo, hi)] = (donor, now)
        self._prune_quarantine()
        if changed:
            self._check()
        return MergeResult(changed=changed, moved=moved, reasserted=out.reasserted,
                           refused_gifts=out.refused_gifts,
                           disputed=tuple(sorted(set(out.disputed.values()))))

    def _adopt(self, other: Ring) -> MergeResult:
        if not other._entries and (self._seeds or not other._seeds):
            return MergeResult(changed=False, moved=False)
        self._entries = list(other._entries)
        self._seeds = self._seeds or other._seeds
        self._check()
        return MergeResult(changed=True, moved=bool(self._entries))

    def _conflict_message(self, other: Ring, token: int) -> str:
        i = bisect.bisect_right(other._entries, token, key=lambda e: e.token) - 1
        theirs = other._entries[i] if i >= 0 else None
        mine = next((e for e in self._entries if theirs and e.token == theirs.token), None)
        if theirs is None:
            return f"Merge of incoming data would take {_ip(token)} from us"
        if mine is None:
            return (
                f"Peer {theirs.peer} says it owns the IP range from {_ip(theirs.token)}, "
                "which I think I own"
            )
        if mine.version == theirs.version:
            return (
                f"Inconsistent entries for {_ip(mine.token)}: owned by {mine.peer} but "
                f"incoming message says {theirs.peer}"
            )
        return (
            f"Received update for IP range I own at {_ip(mine.token)} v{mine.version}: "
            f"incoming message says owner {theirs.peer} v{theirs.version}"
        )

    def _check(self) -> None:
        self.revision += 1
        problem = _entries_problem(self.start, self.end, self._entries)
        if problem:
            raise BrokenError(f"ring invariant broken: {problem}")

    # -- codec ----------------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """The CBOR-ready value of the module doc's format."""
        return {
            "start": self.start,
            "end": self.end,
            "seeds": [int(s) for s in self._seeds],
            "entries": [[e.token, int(e.peer), e.version, e.free] for e in self._entries],
        }

    def encode(self) -> bytes:
        """The ring as CBOR (for persistence); encoded once per :attr:`revision`."""
        if self._encoded is None or self._encoded[0] != self.revision:
            self._encoded = (self.revision, cbor.encode(self.to_wire()))
        return self._encoded[1]

    @classmethod
    def from_wire(cls, raw: Any, ourself: PeerName) -> Ring:
        """Check and build a ring from a decoded CBOR value; DecodeError if malformed."""
        if not isinstance(raw, dict) or set(raw) != {"start", "end", "seeds", "entries"}:
            raise DecodeError("ring: expected a map with start, end, seeds, entries")
        start = _uint(raw["start"], ADDRESS_SPACE - 1, "ring start")
        end = _uint(raw["end"], ADDRESS_SPACE, "ring end")
        if start >= end:
            raise DecodeError("ring: empty range")
        seeds = [_name(s) for s in _list(raw["seeds"], MAX_SEEDS, "ring seeds")]
        if seeds != sorted(set(seeds)):
            raise DecodeError("ring: seeds not sorted and unique")
        entries = [_entry(e) for e in _list(raw["entries"], MAX_ENTRIES, "ring entries")]
        problem = _entries_problem(start, end, entries)
        if problem:
            raise DecodeError(f"ring: {problem}")
        return cls(start, end, ourself, seeds=seeds, entries=entries)

    @classmethod
    def decode_untrusted(cls, data: bytes, ourself: PeerName) -> Ring:
        """Decode :meth:`encode`'s output; DecodeError on anything else."""
        return cls.from_wire(cbor.decode_untrusted(data, max_size=MAX_RING_BYTES), ourself)

    def __repr__(self) -> str:
        return f"Ring({range_text(self.start, self.end)}, {len(self._entries)} entries)"


def _entries_problem(start: int, end: int, entries: Sequence[Entry]) -> str:
    """Why ``entries`` is not a valid ring over ``[start, end)`` ("" if it is)."""
    if not entries:
        return ""
    if len(entries) > MAX_ENTRIES:
        return f"more than {MAX_ENTRIES} tokens"
    if entries[0].token != start:
        return "Token is out of range" if entries[0].token < start else "no token at range start"
    for i, entry in enumerate(entries):
        nxt = entries[i + 1].token if i + 1 < len(entries) else end
        if entry.token >= end:
            return "Token is out of range"
        if nxt < entry.token:
            return "Ring not sorted"
        if nxt == entry.token:
            return "Token appears twice in ring"
        if entry.free > nxt - entry.token:
            return (
                f"Entry {_ip(entry.token)}-{_ip(nxt)} reporting too much free space: "
                f"{entry.free} > {nxt - entry.token}"
            )
        if entry.version >= MAX_VERSION:
            return "version out of range"
    return ""


def _clamp_free(entries: list[Entry], end: int) -> list[Entry]:
    """``entries`` with every free count cut to its range's size (free is only a hint).

    New tokens from one side can split a range whose entry still carries the other
    side's older, larger free count.
    """
    for i, entry in enumerate(entries):
        size = (entries[i + 1].token if i + 1 < len(entries) else end) - entry.token
        if entry.free > size:
            entries[i] = replace(entry, free=size)
    return entries


def subtract_ranges(ranges: Iterable[Range], minus: Sequence[Range]) -> list[Range]:
    """``ranges`` minus ``minus`` (both sorted, disjoint)."""
    out: list[Range] = []
    for start, end in ranges:
        pos = start
        for lo, hi in minus:
            if hi <= pos or lo >= end:
                continue
            if lo > pos:
                out.append((pos, lo))
            pos = max(pos, hi)
        if pos < end:
            out.append((pos, end))
    return out


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value % ADDRESS_SPACE))


def _uint(value: Any, limit: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise DecodeError(f"{what}: expected an integer in 0..{limit}")
    return value


def _name(value: Any) -> PeerName:
    return PeerName(_uint(value, (1 << NAME_BITS) - 1, "peer name"))


def _list(value: Any, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise DecodeError(f"{what}: expected a list of at most {limit} items")
    return value


def _entry(raw: Any) -> Entry:
    if not isinstance(raw, list) or len(raw) != 4:
        raise DecodeError("ring entry: expected [token, peer, version, free]")
    return Entry(
        _uint(raw[0], ADDRESS_SPACE - 1, "ring token"),
        _name(raw[1]),
        _uint(raw[2], MAX_VERSION - 1, "ring version"),
        _uint(raw[3], ADDRESS_SPACE, "ring free count"),
    )

