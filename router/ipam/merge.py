"""Who may change which ring entry: the per-token rules of :meth:`Ring.merge` (sans-IO).

Gossip carries whole rings, relayed by every peer, so an entry cannot be traced to the
peer that wrote it; what is known is the *author*: the neighbour whose connection (an
authenticated mesh connection) delivered the ring. The rules below make sure that,
whatever a peer sends, an honest peer never gives up a range it allocates from and,
while a range's owner X is reachable, never starts allocating from X's range. For a
token both rings know, nothing happens unless the incoming entry is greater
(``Entry.key``); then, with *prev* the owner of that token's range in our ring (for a
new token: of the range it falls in):

1. **Ours stays ours.** If prev is ourself, the incoming entry is not taken: we
   *re-assert* ours with the version above it (a new token inside our range is added as
   ours), and our re-assertion spreads like any change. Others take it because its
   version is greater. Exception: a range we took over by ``rmpeer`` from peer P
   (:attr:`Ring.taken`) is given up when a greater entry arrives after the takeover and we
   hold no allocations in it: the peer that still lives wins. If we do hold allocations
   there, both peers allocated from it (``rmpeer`` of a peer that was only cut off) and no
   answer is safe: the merge is refused (:class:`~router.ipam.ring.RingConflictError`).
   A held *gift* (:attr:`MergeInput.gifted`) we allocate in, claimed for its giver, is
   re-asserted instead: the giver gave it away (a liar, or a recipient that gave it back
   to the liar after a dispute, rule 4), so the claim is no honest peer's allocations.
2. **Gifts come from the giver, and only what the giver was given.** If the incoming
   entry makes *us* the owner (a donation, a ``reset`` hand-over), it is taken only
   when the author is prev and prev's ownership of that range is *confirmed* (see
   custody below). Otherwise the token is left as it is in our ring. A gift outside the
   ranges we asked the author for (``MergeInput.solicited``: a ``reset`` hand-over, or
   a liar's gift of its own range) is taken but held like an ``rmpeer`` takeover
   (:attr:`MergeOutput.unsolicited` -> :attr:`Ring.taken`): the allocator does not
   allocate from it while the giver is reachable, and it is given up to a greater
   claim while we hold nothing there, so a range given to two peers ends with one owner.
3. **Third parties** (neither side is us): the greater entry wins, as in Weave, and
   the change of owner is recorded in the range's custody.
4. **A gift is quarantined; one given twice goes back.** Every gift taken (rule 2) is
   quarantined (:attr:`MergeInput.quarantine`; the allocator does not allocate from it
   until ``gift_quarantine`` seconds have passed, while our ring naming us spreads). A
   donor that gave the same range to two peers (a liar: it owns the range, so rule 2
   takes both gifts) is caught while either is quarantined: an incoming entry inside a
   quarantined gift naming another owner, that is greater than ours, at a token we do
   not know, or at *our version* (the donor wrote both: equivocation), disputes the gift.
   A stale entry (lower version) is no claim. A disputed gift goes back to its donor on
   every token inside it, at a version above every one seen there
   (:attr:`MergeOutput.disputed`), with the other claimants unconfirmed; both recipients
   write the same entries, so they converge on the donor owning it and neither
   allocates there, and the donor is a suspect (asked for space last). The greatest of
   the two claims reaches every peer (it wins every merge), so the lesser recipient
   always sees it; honest versions at one token only grow, so an equal version with
   another owner is never honest.

**Custody.** For every token owned by another peer we keep (in memory) the set of
earlier owners that have not yet confirmed they let the range go: *unconfirmed
owners*. An honest peer allocates in a range only while its own ring names it the
owner, so a ring delivered by peer P's own connection in which P owns nothing of a
range is P's word that it does not allocate there. The set changes so:

* an owner change that reaches us through anyone but the previous owner, while that
  previous owner is reachable, adds the previous owner (a relayed change, a grab, a
  lie, ``rmpeer --force`` of a live peer); a change delivered by the previous owner
  itself, or of an owner we do not reach (``rmpeer`` of a dead peer), adds nobody;
* a ring whose author owns nothing in the range removes the author (it confirms);
* the new owner is removed (an earlier owner taking the range back need not confirm
  anything; the owner it took it from must, as for any relayed change); version
  bumps of the current owner change nothing: the set stays until confirmed;
* the set is inherited by new tokens inside the range and by the next owner.

A range whose set is not empty is never given to us (rule 2): so a liar that tells Y
"X's range is Z's" and Z "X's range is Y's" cannot have Z's honest gossip make Y an
owner while X lives: X is an unconfirmed owner of that range at Y, and X never confirms
(its own ring keeps naming X). Relayed space is still given on once its earlier owners
were heard directly (in a full mesh at the next gossip from them); a peer that hears an
earlier owner only through others (a line A-B-C: C hears A only through B) is not given
that space by B, because B could be lying about A.

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
Custody = dict[int, frozenset[PeerName]]  # token -> its unconfirmed earlier owners
Quarantine = Mapping[tuple[int, int], PeerName]  # gifts not allocated from yet -> donor
NOBODY: frozenset[PeerName] = frozenset()


@dataclass
class MergeInput:
    """Our side of a merge: our entries and what we remember about them."""

    ourself: PeerName
    end: int
    mine: Sequence[Entry]
    taken: Mapping[int, PeerName]  # token -> the peer we took that range from (rmpeer)
    custody: Mapping[int, frozenset[PeerName]]  # token -> unconfirmed earlier owners
    author: PeerName | None
    reachable: Set[PeerName]
    solicited: Sequence[tuple[int, int]] = ()  # ranges we asked the author for
    quarantine: Quarantine = field(default_factory=dict)  # gifts not yet allocated from
    gifted: Set[int] = frozenset()  # tokens of ``taken`` that were gifts, not rmpeer


@dataclass
class MergeOutput:
    """The merged entries and what changed about our memory of them."""

    entries: list[Entry]
    reasserted: bool = False
    refused_gifts: int = 0
    yielded: set[int] = field(default_factory=set)  # taken tokens given back
    custody: Custody = field(default_factory=dict)  # of every token after the merge
    unsolicited: dict[int, PeerName] = field(default_factory=dict)  # gifts: token -> giver
    conflict: int | None = None  # a token we took over and allocated in, claimed back
    gifts: list[tuple[int, int, PeerName]] = field(default_factory=list)  # taken: lo, hi, donor
    disputed: dict[tuple[int, int], PeerName] = field(default_factory=dict)  # given back


def merge_entries(ours: MergeInput, theirs: Sequence[Entry], *,
                  has_allocations: HasAllocations) -> MergeOutput:
    """Apply the module doc's rules to every incoming entry."""
    mine = {e.token: e for e in ours.mine}
    tokens = [e.token for e in ours.mine]
    their_next = {e.token: (theirs[i + 1].token if i + 1 < len(theirs) else ours.end)
                  for i, e in enumerate(theirs)}
    before = _confirmed(ours, tokens, theirs)
    out = MergeOutput([], custody=dict(before))
    merged = dict(mine)
    disputed = _disputes(ours, mine, theirs)
    for entry in theirs:
        if any(lo <= entry.token < hi for lo, hi in disputed):
            continue
        current = mine.get(entry.token)
        if current is not None and entry.key() <= current.key():
            continue
        prev = current if current is not None else _covering(ours.mine, tokens, entry.token)
        end = min(their_next[entry.token], _next(tokens, entry.token, ours.end))
        unconfirmed = before.get(prev.token, NOBODY)
        chosen = _decide(ours, entry, prev, current, (has_allocations, end, unconfirmed), out)
        if chosen is not None:
            merged[entry.token] = chosen
    for span, claimants in disputed.items():
        _give_back(ours, span, claimants, (mine, theirs, merged), out)
    out.entries = [merged[t] for t in sorted(merged)]
    out.custody = {t: out.custody[t] for t in merged if out.custody.get(t)}
    return out


def _disputes(ours: MergeInput, mine: Mapping[int, Entry],
              theirs: Sequence[Entry]) -> dict[tuple[int, int], frozenset[PeerName]]:
    """Quarantined gifts of ours that the incoming ring claims for another owner, with
    those claimants: an entry inside the gift naming someone else that is news (greater
    than ours, or a token we do not know), or at the same version as ours (the donor
    wrote both: equivocation). A stale entry (lower version) is no claim."""
    found: dict[tuple[int, int], frozenset[PeerName]] = {}
    if not ours.quarantine:
        return found
    keys = [e.token for e in theirs]
    for (lo, hi) in ours.quarantine:
        claimants: set[PeerName] = set()
        for entry in theirs[bisect.bisect_left(keys, lo):bisect.bisect_left(keys, hi)]:
            current = mine.get(entry.token)
            if entry.peer == ours.ourself:
                continue
            if (current is None or entry.key() > current.key()
                    or entry.version == current.version):
                claimants.add(entry.peer)
        if claimants:
            found[(lo, hi)] = frozenset(claimants)
    return found


def _give_back(ours: MergeInput, span: tuple[int, int], claimants: frozenset[PeerName],
               sides: tuple[Mapping[int, Entry], Sequence[Entry], dict[int, Entry]],
               out: MergeOutput) -> None:
    """A disputed gift goes back to its donor on every token inside it, above every
    version seen there: both recipients write the same entries, so they converge with
    neither allocating there (the gift was quarantined: nothing is allocated in it)."""
    mine, theirs, merged = sides
    lo, hi = span
    donor = ours.quarantine[span]
    incoming = {e.token: e for e in theirs if lo <= e.token < hi}
    for token in sorted({t for t in mine if lo <= t < hi} | set(incoming)):
        seen = [e for e in (mine.get(token), incoming.get(token)) if e is not None]
        top = max(seen, key=Entry.key)
        if top.peer == donor and top is not mine.get(token):
            merged[token] = top
        else:
            merged[token] = Entry(token, donor, bumped(max(e.version for e in seen)), 0)
        out.custody[token] = claimants - {donor, ours.ourself}
        out.yielded.add(token)
    out.disputed[span] = donor


def _confirmed(ours: MergeInput, tokens: list[int], theirs: Sequence[Entry]) -> Custody:
    """Our custody with the author removed wherever its own ring owns nothing."""
    author, custody = ours.author, dict(ours.custody)
    if author is None or not any(author in peers for peers in custody.values()):
        return custody
    claimed = [(e.token, theirs[i + 1].token if i + 1 < len(theirs) else ours.end)
               for i, e in enumerate(theirs) if e.peer == author]
    for token, peers in custody.items():
        if author in peers:
            end = _next(tokens, token, ours.end)
            if not any(lo < end and token < hi for lo, hi in claimed):
                custody[token] = peers - {author}
    return custody


def _decide(ours: MergeInput, entry: Entry, prev: Entry, current: Entry | None,
            ctx: tuple[HasAllocations, int, frozenset[PeerName]],
            out: MergeOutput) -> Entry | None:
    """The entry to keep at ``entry.token`` (None: leave our ring as it is there);
    ``ctx``: our allocations, the end of the incoming range, prev's unconfirmed owners."""
    has_allocations, end, unconfirmed = ctx
    if prev.peer == ours.ourself:
        if entry.peer != ours.ourself and prev.token in ours.taken:
            if not has_allocations(entry.token, end):
                out.yielded.add(prev.token)
                out.custody.pop(entry.token, None)
                return entry
            if not (prev.token in ours.gifted and entry.peer == ours.taken[prev.token]):
                out.conflict = entry.token  # both peers allocated there: no safe answer
                return None
            # a gift we allocate in, claimed for its giver (it gave it away, or another
            # recipient gave it back after a dispute): ours stays ours, as for any range
        version = bumped(entry.version)
        if version == entry.version:  # cannot outrank it: keep ours as it is
            return None
        out.reasserted = True
        if current is None:
            return Entry(entry.token, ours.ourself, version, 0)
        return replace(current, version=version)
    if entry.peer == ours.ourself:
        if ours.author != prev.peer or unconfirmed:
            out.refused_gifts += 1
            return None
        out.custody.pop(entry.token, None)
        if not any(lo <= entry.token < hi for lo, hi in ours.solicited):
            out.unsolicited[entry.token] = prev.peer  # held like an rmpeer of a live peer
        out.gifts.append((entry.token, end, prev.peer))
        return entry
    out.custody[entry.token] = _custody_after(ours, entry, prev, unconfirmed)
    return entry


def _custody_after(ours: MergeInput, entry: Entry, prev: Entry,
                   unconfirmed: frozenset[PeerName]) -> frozenset[PeerName]:
    """The unconfirmed earlier owners once ``entry`` replaces ``prev`` (see module doc)."""
    if (entry.peer != prev.peer and ours.author != prev.peer
            and prev.peer in ours.reachable):
        unconfirmed = unconfirmed | {prev.peer}
    return unconfirmed - {entry.peer}  # the owner need not confirm it let go


def _covering(entries: Sequence[Entry], tokens: list[int], token: int) -> Entry:
    return entries[bisect.bisect_right(tokens, token) - 1]


def _next(tokens: list[int], token: int, end: int) -> int:
    i = bisect.bisect_right(tokens, token)
    return tokens[i] if i < len(tokens) else end


__all__ = ["NOBODY", "VERSION_LIMIT", "Custody", "MergeInput", "MergeOutput", "Quarantine",
           "merge_entries"]
