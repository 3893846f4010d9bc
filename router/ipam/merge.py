"""Who may change which ring entry: the per-token rules of :meth:`Ring.merge` (sans-IO).

Gossip carries whole rings, relayed by every peer, so an entry cannot be traced to the
peer that wrote it; what is known is the *author*: the neighbour whose connection (an
authenticated mesh connection) delivered the ring. The rules below make sure that,
whatever a peer sends, an honest peer never gives up a range it allocates from and never
starts allocating from a range another honest peer allocates from. For a token both
rings know, nothing happens unless the incoming entry is greater (``Entry.key``); then,
with *prev* the owner of that token's range in our ring (for a new token: of the range
it falls in):

1. **Ours stays ours.** If prev is ourself, the incoming entry is not taken: we
   *re-assert* ours with the version above it (a new token inside our range is added as
   ours), and our re-assertion spreads like any change. Others take it because its
   version is greater. Exception: a range we took over by ``rmpeer`` from peer P
   (:attr:`Ring.taken`) is given up when a greater entry arrives after the takeover and we
   hold no allocations in it: the peer that still lives wins. If we do hold allocations
   there, both peers allocated from it (``rmpeer`` of a peer that was only cut off) and no
   answer is safe: the merge is refused (:class:`~router.ipam.ring.RingConflictError`).
2. **Gifts come from the giver.** If the incoming entry makes *us* the owner (a donation,
   a ``reset`` hand-over), it is taken only when the author is prev and prev's entry is
   not *suspect* (see 3). Otherwise the token is left as it is in our ring.
3. **Third parties** (neither side is us): the greater entry wins, as in Weave. An entry
   that hands a range to its own author while the old owner is reachable (what a
   ``rmpeer`` of a live peer, or a peer grabbing space, looks like) is taken but marked
   suspect: it cannot then be given on to us.

Versions: incoming versions at or above :data:`VERSION_LIMIT` are refused (the author's
fault); our own bumps saturate below it, so a re-assertion that cannot outrank an entry
keeps ours without a bump.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace

from router.ipam.ring_entry import VERSION_LIMIT, Entry, bumped
from router.mesh.names import PeerName

HasAllocations = Callable[[int, int], bool]


@dataclass
class MergeInput:
    """Our side of a merge: our entries and what we remember about them."""

    ourself: PeerName
    end: int
    mine: Sequence[Entry]
    taken: Mapping[int, PeerName]  # token -> the peer we took that range from (rmpeer)
    suspect: Set[int]
    author: PeerName | None
    reachable: Set[PeerName]


@dataclass
class MergeOutput:
    """The merged entries and what changed about our memory of them."""

    entries: list[Entry]
    reasserted: bool = False
    refused_gifts: int = 0
    yielded: set[int] = field(default_factory=set)  # taken tokens given back
    suspect: set[int] = field(default_factory=set)
    cleared: set[int] = field(default_factory=set)  # tokens no longer suspect
    conflict: int | None = None  # a token we took over and allocated in, claimed back


def merge_entries(ours: MergeInput, theirs: Sequence[Entry], *,
                  has_allocations: HasAllocations) -> MergeOutput:
    """Apply the module doc's rules to every incoming entry."""
    mine = {e.token: e for e in ours.mine}
    tokens = [e.token for e in ours.mine]
    their_next = {e.token: (theirs[i + 1].token if i + 1 < len(theirs) else ours.end)
                  for i, e in enumerate(theirs)}
    out = MergeOutput([])
    merged = dict(mine)
    for entry in theirs:
        current = mine.get(entry.token)
        if current is not None and entry.key() <= current.key():
            continue
        prev = current if current is not None else _covering(ours.mine, tokens, entry.token)
        end = min(their_next[entry.token], _next(tokens, entry.token, ours.end))
        chosen = _decide(ours, entry, prev, current, (has_allocations, end), out)
        if chosen is not None:
            merged[entry.token] = chosen
    out.entries = [merged[t] for t in sorted(merged)]
    return out


def _decide(ours: MergeInput, entry: Entry, prev: Entry, current: Entry | None,
            ctx: tuple[HasAllocations, int], out: MergeOutput) -> Entry | None:
    """The entry to keep at ``entry.token`` (None: leave our ring as it is there)."""
    has_allocations, end = ctx
    if prev.peer == ours.ourself:
        if entry.peer != ours.ourself and prev.token in ours.taken:
            if has_allocations(entry.token, end):
                out.conflict = entry.token  # both peers allocated there: no safe answer
                return None
            out.yielded.add(prev.token)
            out.cleared.add(entry.token)
            return entry
        version = bumped(entry.version)
        if version == entry.version:  # cannot outrank it: keep ours as it is
            return None
        out.reasserted = True
        if current is None:
            return Entry(entry.token, ours.ourself, version, 0)
        return replace(current, version=version)
    if entry.peer == ours.ourself:
        if ours.author != prev.peer or prev.token in ours.suspect:
            out.refused_gifts += 1
            return None
        out.cleared.add(entry.token)
        return entry
    if entry.peer == ours.author != prev.peer and prev.peer in ours.reachable:
        out.suspect.add(entry.token)
    else:
        out.cleared.add(entry.token)
    return entry


def _covering(entries: Sequence[Entry], tokens: list[int], token: int) -> Entry:
    return entries[bisect.bisect_right(tokens, token) - 1]


def _next(tokens: list[int], token: int, end: int) -> int:
    i = bisect.bisect_right(tokens, token)
    return tokens[i] if i < len(tokens) else end


__all__ = ["VERSION_LIMIT", "MergeInput", "MergeOutput", "merge_entries"]
