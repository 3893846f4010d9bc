"""Answers to repeated queries, kept for a second: the common query costs a dict lookup.

A resolver asks the same few questions again and again (``c1.weave.local A``, with a new
id each time). :class:`AnswerCache` keeps the answer to each distinct query, keyed by the
query's bytes after its 2-byte id (flags, question and EDNS0 record: everything the answer
depends on besides the zone), and answers a repeat with the new id and the kept bytes.

What is kept, and for how long:

* only answers with at most one record: an answer with several addresses is shuffled
  each time (Weave's load balancing), so it is built anew;
* until the entries change (:attr:`~router.dns.entries.Entries.generation`: an add, a
  tombstone, merged gossip, an expiry drops everything at once), and at most
  ``max_age`` seconds, because whether a peer's entries are visible (the peer is
  reachable) is not an entry change: a peer that left stops being answered within
  ``max_age`` (1 s, Weave's default TTL);
* at most ``max_entries`` answers; past that, answers are built and not kept until the
  next sweep (so a flood of distinct names costs memory once, bounded);
* forwards and drops are never kept (they are not answers).

Sans-IO: the clock is given. :meth:`AnswerCache.kept` only reads, for the UDP thread
(``service.py``) that answers repeats without waking the trio loop. The cached bytes are
exactly what :func:`answer` built for the first query with the new id in front (a test
checks them against the uncached path).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from router.dns.answer import Outcome, Zone, answer

MAX_AGE = 1.0  # seconds an answer is kept at most
MAX_ENTRIES = 4096  # answers kept at most (~2 MiB at the largest UDP answers)
_ID = 2  # bytes of the query id in front of everything the answer depends on


class AnswerCache:
    """:func:`router.dns.answer.answer` with the answers to repeated queries kept."""

    def __init__(self, *, max_age: float = MAX_AGE, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._max_entries = max_entries
        self._clock = clock
        self._kept: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})  # UDP, TCP
        self._generation = -1
        self._since = 0.0
        self.hits = 0

    def answer(self, query: bytes, zone: Zone, *, tcp: bool = False,
               rng: random.Random | None = None) -> Outcome:
        """What :func:`answer` gives for ``query``; never raises."""
        now = self._clock()
        if not self._fresh(zone, now):
            self._sweep(zone.entries.generation, now)
        kept = self._kept[tcp]
        key = query[_ID:]
        hit = kept.get(key)
        if hit is not None and len(query) >= _ID:
            self.hits += 1
            return query[:_ID] + hit
        out = answer(query, zone, tcp=tcp, rng=rng)
        if (isinstance(out, bytes) and len(query) >= _ID and len(out) >= 8
                and out[6:8] in (b"\x00\x00", b"\x00\x01") and len(kept) < self._max_entries):
            kept[key] = out[_ID:]
        return out

    def kept(self, query: bytes, zone: Zone, now: float) -> bytes | None:
        """The kept answer to ``query`` (with its id), or None: nothing kept, or what is
        kept is stale. Only reads, so another thread may call it while the owner's thread
        answers and sweeps (under the GIL each read is whole; a change of the entries
        bumps their generation before anything else, so a stale answer is never given)."""
        if len(query) < _ID or not self._fresh(zone, now):
            return None
        hit = self._kept[False].get(query[_ID:])
        return None if hit is None else query[:_ID] + hit

    def __len__(self) -> int:
        return len(self._kept[0]) + len(self._kept[1])

    def _fresh(self, zone: Zone, now: float) -> bool:
        """Whether what is kept still holds: the same entries, and not ``max_age`` old."""
        return (zone.entries.generation == self._generation
                and 0 <= now - self._since < self._max_age)

    def _sweep(self, generation: int, now: float) -> None:
        for kept in self._kept:
            kept.clear()
        self._generation = generation
        self._since = now
