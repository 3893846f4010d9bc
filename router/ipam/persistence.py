"""What of the allocator's state must be stored, and taking it up again at start (sans-IO).

The allocator never writes itself: it marks what changed in :class:`Unsaved` and the
driver takes one :class:`~router.ipam.PersistBatch` after every call and stores it in
one transaction before anything is answered or sent (see :mod:`router.ipam.allocator`).
A batch holds:

* ``reset``: the stored data was not usable (none, another peer name, another range):
  delete it all first. Unreadable data is never deleted: :class:`UnreadableData`, and
  the router refuses to start (``Store.open`` checks it first);
* ``ring``: the ring's bytes, when ownership moved (or after a reset, if we have one);
* ``paxos``: the election state, when it changed;
* ``owned``: the current record of every ident whose addresses changed;
* ``custody``: with every ``ring``, what the ring remembers beyond its entries and the
  donors we suspect (:func:`encode_memory`). Without it a restart would forget which gifts
  are held (``rmpeer --force`` of a live peer, unsolicited gifts), which earlier owners
  have not confirmed they let a range go, and which gifts are still quarantined: the
  restarted peer could allocate from a range another honest peer allocates from.
  Confirmations (custody shrinking) do not move the ring and are not written at once: a
  restart then remembers a larger set of unconfirmed owners, which only delays a gift.
  A quarantine that ended is written (the ring is marked), so a restart never
  quarantines a range we allocate from; one still running starts again from the restart.

Layout of ``custody`` (CBOR)::

    {"taken": [[token, peer], ...], "custody": [[token, [peer, ...]], ...],
     "quarantine": [[start, end, donor], ...], "suspects": [peer, ...],
     "gifted": [token, ...]}      (tokens of "taken" that were gifts, not rmpeer)

At start :func:`restored_ring` and :func:`restore_owned` take up what the driver loaded
(:class:`~router.ipam.PersistedState`), keeping only data of this peer and range and
only addresses that are still ours; every thing dropped leaves a start-up note.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Network
from typing import Any

from router.errors import ConfigError, DecodeError, LocalProtocolError
from router.ipam import OwnedRecord, PersistBatch, PersistedState
from router.ipam.consensus import Paxos
from router.ipam.election import Election
from router.ipam.ring import ADDRESS_SPACE, MAX_ENTRIES, Ring, range_text
from router.ipam.space import Holdings, Space
from router.mesh.names import NAME_BITS, PeerName
from router.wire import cbor

MAX_MEMORY_BYTES = 8 * 1024 * 1024


class UnreadableData(ConfigError):
    """Stored IPAM data that cannot be read back: the router refuses to start (the
    driver names the file); nothing is deleted."""


def unreadable_problem(persisted: PersistedState) -> str | None:
    """Why the stored ring or consensus state cannot be taken up (None: it can)."""
    checks = (("ring", persisted.ring, lambda b: Ring.decode_untrusted(b, persisted.peer_name)),
              ("consensus", persisted.paxos, lambda b: Paxos.restore(persisted.peer_name, 1, b)),
              ("custody", persisted.custody, decode_memory))
    for what, blob, decode in checks:
        if blob is None:
            continue
        try:
            decode(blob)
        except DecodeError as exc:
            return f"the stored IPAM {what} state is unreadable ({exc})"
    return None


class Unsaved:
    """What changed since the last :meth:`take` (the next batch's contents)."""

    def __init__(self) -> None:
        self.reset = False  # delete every stored record first
        self.ring = False  # ring ownership moved
        self.paxos = False  # the election state changed
        self.owned: set[str] = set()  # idents whose addresses changed

    def _clear(self) -> None:
        self.reset = self.ring = self.paxos = False
        self.owned = set()

    def __bool__(self) -> bool:
        return self.reset or self.ring or self.paxos or bool(self.owned)

    def restore(self, batch: PersistBatch) -> None:
        """Mark again what ``batch`` held: the store refused it, so it is still unsaved
        (the next :meth:`take` writes it, with whatever changed since)."""
        self.reset = self.reset or batch.reset
        self.ring = self.ring or batch.ring is not None
        self.paxos = self.paxos or batch.paxos is not None
        self.owned |= set(batch.owned)

    def check_saved(self) -> None:
        """LocalProtocolError while a batch waits to be taken (it must be durable first)."""
        if self:
            raise LocalProtocolError("take_persistence() first: state must be durable")

    def take(
        self, ourself: PeerName, ring: Ring, election: Election, held: Holdings,
        suspects: Iterable[PeerName] = (),
    ) -> PersistBatch | None:
        """The batch of everything marked (None if nothing was), and start afresh."""
        if not self:
            return None
        with_ring = self.ring or (self.reset and not ring.empty())
        batch = PersistBatch(
            peer_name=ourself,
            reset=self.reset,
            ring=ring.encode() if with_ring else None,
            paxos=election.persistent() if self.paxos else None,
            owned={i: held.record(i) for i in sorted(self.owned)},
            custody=encode_memory(ring, suspects) if with_ring else None,
        )
        self._clear()
        return batch


def restored_ring(
    persisted: PersistedState | None, ourself: PeerName, universe: IPv4Network, notes: list[str]
) -> Ring | None:
    """The persisted ring if the data is ours and for ``universe`` (an empty ring if none
    was stored yet); None, with a note saying why, if it must be deleted."""
    if persisted is None:
        return None
    first = int(universe.network_address)
    span = (first, first + universe.num_addresses)
    if persisted.peer_name != ourself:
        notes.append(f"deleting persisted IPAM data for peername {persisted.peer_name}")
        return None
    if persisted.ring is None:
        return Ring(*span, ourself)
    try:
        ring = Ring.decode_untrusted(persisted.ring, ourself)
    except DecodeError as exc:  # Store.open checks this: never delete what is unreadable
        raise UnreadableData(f"the stored IPAM ring state is unreadable ({exc})") from exc
    if (ring.start, ring.end) != span:
        notes.append(
            f"deleting persisted data for IPAM range {range_text(ring.start, ring.end)}; "
            f"our range is {universe}"
        )
        return None
    return ring


def restore_owned(
    owned: Mapping[str, OwnedRecord], ring: Ring, space: Space, held: Holdings, notes: list[str]
) -> set[str]:
    """Record the persisted addresses that are still ours in ``held`` (claimed in
    ``space`` when the ring says we own them); the idents that lost addresses, whose
    stored records must be rewritten (deleted when nothing is left), so the same note
    does not come back at every start."""
    rewrite: set[str] = set()
    for ident, record in sorted(owned.items()):
        dropped = False
        for cidr in record.cidrs:
            addr = int(cidr.ip)
            if held.holder(addr) is not None or (ring.contains(addr) and not space.claim(addr)):
                notes.append(f"persisted address {cidr.ip} is not ours; dropped")
                dropped = True
                continue
            held.add(ident, cidr, record.is_container)
        if dropped:
            rewrite.add(ident)
    return rewrite


Memory = tuple[dict[int, PeerName], dict[int, frozenset[PeerName]],
               list[tuple[int, int, PeerName]], set[PeerName], set[int]]


def encode_memory(ring: Ring, suspects: Iterable[PeerName]) -> bytes:
    """The ``custody`` blob (module doc): the ring's memory and the suspect donors."""
    taken, custody, quarantine, gifted = ring.memory()
    return cbor.encode({
        "taken": [[t, int(p)] for t, p in sorted(taken.items())],
        "custody": [[t, sorted(int(p) for p in peers)] for t, peers in sorted(custody.items())],
        "quarantine": [[lo, hi, int(donor)] for lo, hi, donor in quarantine],
        "suspects": sorted(int(p) for p in suspects),
        "gifted": sorted(gifted),
    })


def decode_memory(data: bytes) -> Memory:
    """Read :func:`encode_memory`'s bytes back; DecodeError if they are not that."""
    raw = cbor.decode_untrusted(data, max_size=MAX_MEMORY_BYTES)
    if not isinstance(raw, dict) or set(raw) != {"taken", "custody", "quarantine", "suspects",
                                                  "gifted"}:
        raise DecodeError("custody: expected a map with taken, custody, quarantine, suspects,"
                          " gifted")
    taken = {_uint(t, ADDRESS_SPACE - 1): _peer(p) for t, p in _rows(raw["taken"], 2)}
    custody = {_uint(t, ADDRESS_SPACE - 1): frozenset(_peer(p) for p in _items(peers))
               for t, peers in _rows(raw["custody"], 2)}
    quarantine = [(_uint(lo, ADDRESS_SPACE), _uint(hi, ADDRESS_SPACE), _peer(d))
                  for lo, hi, d in _rows(raw["quarantine"], 3)]
    gifted = {_uint(t, ADDRESS_SPACE - 1) for t in _items(raw["gifted"])}
    return taken, custody, quarantine, {_peer(p) for p in _items(raw["suspects"])}, gifted


def restore_memory(persisted: PersistedState | None, ring: Ring,
                   owned: Iterable[int], now: float) -> set[PeerName]:
    """Take up the persisted ``custody`` blob into ``ring`` (a quarantine holding a
    persisted address is over: it was allocated from); returns the suspect donors."""
    if persisted is None or persisted.custody is None:
        return set()
    taken, custody, quarantine, suspects, gifted = decode_memory(persisted.custody)
    used = sorted(owned)
    quarantine = [(lo, hi, d) for lo, hi, d in quarantine
                  if not any(lo <= a < hi for a in used)]
    ring.restore_memory(taken, custody, quarantine, gifted, now)
    return suspects


def _items(value: Any) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise DecodeError(f"custody: expected a list of at most {MAX_ENTRIES} items")
    return value


def _rows(value: Any, width: int) -> list[list[Any]]:
    rows = _items(value)
    if not all(isinstance(r, list) and len(r) == width for r in rows):
        raise DecodeError(f"custody: expected rows of {width} items")
    return rows


def _uint(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise DecodeError(f"custody: expected an integer in 0..{limit}")
    return value


def _peer(value: Any) -> PeerName:
    return PeerName(_uint(value, (1 << NAME_BITS) - 1))
