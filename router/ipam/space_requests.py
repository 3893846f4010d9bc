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

What was asked of whom is remembered apart from that (:attr:`SpaceRequests.outstanding`):
a ring naming us owner is taken as a solicited gift only inside a range we asked its
author for (:mod:`router.ipam.merge`). A request stays outstanding until its answer: a
denial of that range, a ring from the peer that gives us space in it, or
:data:`ANSWER_WINDOW` seconds. Any other ring from the peer is not an answer: a peer's
rings cross our requests (its reply to our broadcast, its periodic gossip), and one of
those taken as the answer would make the donation that follows look unasked, so it would
be held back while the giver lives and the claim waiting for it would never finish.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from router.ipam import Unicast
from router.ipam.payloads import space_message
from router.ipam.ring import Ring
from router.ipam.space import Space
from router.mesh.names import PeerName

Range = tuple[int, int]  # [start, end) as integer addresses

ANSWER_WINDOW = 30.0  # seconds a space request waits for its answer (a gift or a denial)
MAX_OUTSTANDING = 256  # requests remembered per peer (the oldest are forgotten first)


class SpaceRequests:
    """The space requests sent since the last :meth:`clear` (each sent once)."""

    def __init__(self, counts: dict[str, int], rng: random.Random) -> None:
        """``counts``: the allocator's counters (``space_requests_sent`` is counted here)."""
        self._counts = counts
        self._rng = rng
        self._asked: set[tuple[PeerName, int, int]] = set()
        # not cleared by clear(): what each peer was asked (and when) and has not answered
        # yet; a donation is taken as solicited only inside one of these (router.ipam.merge)
        self.outstanding: dict[PeerName, dict[Range, float]] = {}
        # donors caught giving one range to two peers (router.ipam.merge): asked last
        self.suspects: set[PeerName] = set()

    def clear(self) -> None:
        """Forget what was asked: the next attempt asks again."""
        self._asked.clear()

    def ask_anyone(
        self, ring: Ring, reachable: frozenset[PeerName], start: int, end: int, now: float
    ) -> Unicast | None:
        """Ask a reachable peer with free space in ``[start, end)`` (None: nobody to ask,
        or already asked); a suspect donor only when nobody else has space there."""
        donors = ring.choose_peers_to_ask_for_space(start, end, self._rng)
        for donor in sorted(donors, key=lambda d: d in self.suspects):  # stable
            if donor in reachable:
                return self.ask(donor, start, end, now)
        return None

    def ask(self, dst: PeerName, start: int, end: int, now: float) -> Unicast | None:
        """The request to send ``dst`` for ``[start, end)`` (None if already asked)."""
        if (dst, start, end) in self._asked:
            return None
        self._asked.add((dst, start, end))
        asked = self.outstanding.setdefault(dst, {})
        asked.pop((start, end), None)  # asked again: it moves to the end, as the newest
        asked[(start, end)] = now
        while len(asked) > MAX_OUTSTANDING:
            del asked[next(iter(asked))]
        self._counts["space_requests_sent"] += 1
        return Unicast(dst, space_message("space-request", start, end))

    def solicited(self, peer: PeerName, now: float) -> list[Range]:
        """The ranges ``peer`` was asked for and has not answered (unexpired), sorted."""
        self._forget(peer, lambda wanted, at: now - at > ANSWER_WINDOW)
        return sorted(self.outstanding.get(peer, ()))

    def answered(self, peer: PeerName, gained: list[Range]) -> None:
        """``peer``'s ring gave us ``gained``: the requests it overlaps are answered."""
        self._forget(peer, lambda wanted, _at: _overlaps(wanted, gained))

    def denied(self, peer: PeerName, start: int, end: int) -> None:
        """``peer`` answered ``space-denied`` for ``[start, end)``."""
        self._forget(peer, lambda wanted, _at: wanted == (start, end))

    def _forget(self, peer: PeerName, done: Callable[[Range, float], bool]) -> None:
        """Drop ``peer``'s outstanding requests that are ``done(range, asked_at)``."""
        asked = self.outstanding.get(peer)
        if asked is None:
            return
        for wanted in [r for r, at in asked.items() if done(r, at)]:
            del asked[wanted]
        if not asked:
            del self.outstanding[peer]


def _overlaps(wanted: Range, ranges: list[Range]) -> bool:
    return any(lo < wanted[1] and wanted[0] < hi for lo, hi in ranges)


def donation(space: Space, universe: Range, start: int, end: int) -> Range | None:
    """The block to give a peer asking for ``[start, end)`` (clipped to the range), or
    None: we have no free space there (answer ``space-denied``)."""
    lo, hi = max(start, universe[0]), min(end, universe[1])
    return space.donate(lo, hi) if lo < hi else None
