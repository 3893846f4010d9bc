"""Electing the ring's seeds: the allocator's side of :mod:`router.ipam.consensus` (sans-IO).

With ``--ipalloc-init=consensus[=N]`` nothing happens until the first request needs a
ring; then the peer starts *awaiting* one: it proposes itself (Paxos over gossip) and
keeps proposing every tick until the electors agree on a set of seeds, which the
allocator turns into the ring. An ``observer`` has no Paxos: while awaiting it only
asks electors (by broadcasting its empty state) to run the election for it.

The quorum is ``N`` if given, else derived from the number of command-line targets
(:func:`~router.ipam.consensus.quorum_for`); it follows ``set_target_count``. The
election state is persisted (``Paxos.persistent``) so a restarted elector keeps its
promises; an unreadable record is ignored with a start-up note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.errors import DecodeError
from router.ipam import Consensus, InitMode, Observer
from router.ipam.consensus import Claims, Paxos, quorum_for
from router.mesh.names import PeerName


class Election:
    """Whether we await a ring, and the Paxos that elects its seeds (None: observer)."""

    def __init__(self, ourself: PeerName, mode: InitMode, target_count: int) -> None:
        self._ourself = ourself
        self._count = mode.count if isinstance(mode, Consensus) else None
        self._target_count = target_count
        self.paxos: Paxos | None = None
        if not isinstance(mode, Observer):
            self.paxos = Paxos(ourself, self.quorum())
        self.awaiting = False  # a request needs a ring and none is known yet

    def quorum(self) -> int:
        """Electors that must agree (``consensus=N``, else from the target count)."""
        return quorum_for(self._count, self._target_count)

    def set_target_count(self, count: int) -> None:
        """The number of command-line targets changed (it sets the quorum)."""
        self._target_count = count
        if self.paxos is not None:
            self.paxos.set_quorum(self.quorum())

    def restore(self, data: bytes | None, notes: list[str]) -> None:
        """Take up the persisted election state (a note if it is unreadable)."""
        if data is None or self.paxos is None:
            return
        try:
            self.paxos = Paxos.restore(self._ourself, self.quorum(), data)
        except DecodeError as exc:
            notes.append(f"ignoring unreadable persisted consensus state: {exc}")

    def start(self) -> bool:
        """Start awaiting a ring; False if we already are (nothing to do)."""
        if self.awaiting:
            return False
        self.awaiting = True
        if self.paxos is not None:
            self.paxos.set_quorum(self.quorum())
        return True

    def propose(self) -> bool:
        """Propose (again); True if the election state changed (persist it)."""
        if self.paxos is None:
            return False
        self.paxos.propose()
        return True

    def receive(self, state: Mapping[PeerName, Claims]) -> tuple[bool, bool]:
        """Merge a peer's election state: (changed: persist it, ours changed: announce)."""
        if self.paxos is None:
            return False, False
        learned = self.paxos.update(state)  # may include our own old claims
        if self.paxos.think():  # our claims changed: say so (as Weave does)
            return True, True
        return learned, False

    def consensus(self) -> tuple[PeerName, ...] | None:
        """The agreed seeds, once there is a quorum for them."""
        return self.paxos.consensus() if self.paxos is not None else None

    def to_wire(self) -> list[Any] | None:
        """Our election state for a ``state`` payload (None from an observer)."""
        return self.paxos.to_wire() if self.paxos is not None else None

    def persistent(self) -> bytes | None:
        """The bytes to store (None from an observer)."""
        return self.paxos.persistent() if self.paxos is not None else None
