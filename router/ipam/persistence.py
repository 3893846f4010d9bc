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
* ``owned``: the current record of every ident whose addresses changed.

At start :func:`restored_ring` and :func:`restore_owned` take up what the driver loaded
(:class:`~router.ipam.PersistedState`), keeping only data of this peer and range and
only addresses that are still ours; every thing dropped leaves a start-up note.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Network

from router.errors import ConfigError, DecodeError, LocalProtocolError
from router.ipam import OwnedRecord, PersistBatch, PersistedState
from router.ipam.consensus import Paxos
from router.ipam.election import Election
from router.ipam.ring import Ring, range_text
from router.ipam.space import Holdings, Space
from router.mesh.names import PeerName


class UnreadableData(ConfigError):
    """Stored IPAM data that cannot be read back: the router refuses to start (the
    driver names the file); nothing is deleted."""


def unreadable_problem(persisted: PersistedState) -> str | None:
    """Why the stored ring or consensus state cannot be taken up (None: it can)."""
    checks = (("ring", persisted.ring, lambda b: Ring.decode_untrusted(b, persisted.peer_name)),
              ("consensus", persisted.paxos, lambda b: Paxos.restore(persisted.peer_name, 1, b)))
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
        self, ourself: PeerName, ring: Ring, election: Election, held: Holdings
    ) -> PersistBatch | None:
        """The batch of everything marked (None if nothing was), and start afresh."""
        if not self:
            return None
        batch = PersistBatch(
            peer_name=ourself,
            reset=self.reset,
            ring=ring.encode() if self.ring or (self.reset and not ring.empty()) else None,
            paxos=election.persistent() if self.paxos else None,
            owned={i: held.record(i) for i in sorted(self.owned)},
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
