"""Space moving between peers on demand: asking for it and giving it (sans-IO).

An allocation that finds no free address of its subnet here asks one reachable peer
that reports free space there, chosen at random weighted by that free space
(:meth:`~router.ipam.ring.Ring.choose_peers_to_ask_for_space`); a claim of an address
another peer owns asks that owner for the one address. The request is a
``space-request`` unicast of the wanted range ``[start, end)``
(:func:`~router.ipam.payloads.space_message`).

Each (peer, range) is asked at most once until the ring or the reachable peers change
or the retry timer fires (:meth:`SpaceRequests.clear`), so retries never flood a peer.
The owner gives a CIDR-aligned block of its free space in the range (:func:`donation`)
or answers ``space-denied``.
"""

from __future__ import annotations

import random

from router.ipam import Unicast
from router.ipam.payloads import space_message
from router.ipam.ring import Ring
from router.ipam.space import Space
from router.mesh.names import PeerName

Range = tuple[int, int]  # [start, end) as integer addresses


class SpaceRequests:
    """The space requests sent since the last :meth:`clear` (each sent once)."""

    def __init__(self, counts: dict[str, int], rng: random.Random) -> None:
        """``counts``: the allocator's counters (``space_requests_sent`` is counted here)."""
        self._counts = counts
        self._rng = rng
        self._asked: set[tuple[PeerName, int, int]] = set()
        # not cleared by clear(): what each peer was asked and has not answered yet; a
        # donation is taken as solicited only inside one of these (router.ipam.merge)
        self.outstanding: dict[PeerName, set[Range]] = {}

    def clear(self) -> None:
        """Forget what was asked: the next attempt asks again."""
        self._asked.clear()

    def ask_anyone(
        self, ring: Ring, reachable: frozenset[PeerName], start: int, end: int
    ) -> Unicast | None:
        """Ask a reachable peer with free space in ``[start, end)`` (None: nobody to ask,
        or already asked)."""
        for donor in ring.choose_peers_to_ask_for_space(start, end, self._rng):
            if donor in reachable:
                return self.ask(donor, start, end)
        return None

    def ask(self, dst: PeerName, start: int, end: int) -> Unicast | None:
        """The request to send ``dst`` for ``[start, end)`` (None if already asked)."""
        if (dst, start, end) in self._asked:
            return None
        self._asked.add((dst, start, end))
        self.outstanding.setdefault(dst, set()).add((start, end))
        self._counts["space_requests_sent"] += 1
        return Unicast(dst, space_message("space-request", start, end))


    def answered(self, peer: PeerName) -> list[Range]:
        """``peer`` answered (its ring, or a denial): the ranges we had asked it for."""
        return sorted(self.outstanding.pop(peer, ()))


def donation(space: Space, universe: Range, start: int, end: int) -> Range | None:
    """The block to give a peer asking for ``[start, end)`` (clipped to the range), or
    None: we have no free space there (answer ``space-denied``)."""
    lo, hi = max(start, universe[0]), min(end, universe[1])
    return space.donate(lo, hi) if lo < hi else None
