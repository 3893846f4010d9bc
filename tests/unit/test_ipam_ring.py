"""The token ring: seeding, grants, merge rules and errors, transfer, codec, and replicas
exchanging rings in random order against a naive model of who holds which address."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from router.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from router.ipam.ring import (
    TRANSFER_VERSION_BUMP,
    DifferentRangeError,
    DifferentSeedsError,
    Entry,
    Ring,
    RingConflictError,
    range_text,
)
from router.ipam.space import Space
from router.mesh.names import PeerName
from router.wire import cbor

A, B, C, D = (PeerName(i) for i in (1, 2, 3, 4))
START, END = 0x0A200000, 0x0A300000  # 10.32.0.0/12


def _none(start: int, end: int) -> bool:
    return False


def _seeded(me: PeerName, peers: tuple[PeerName, ...] = (A, B, C)) -> Ring:
    ring = Ring(START, END, me)
    ring.claim_for_peers(peers)
    return ring


def test_seeding_splits_the_range_evenly_among_sorted_peers() -> None:
    ring = _seeded(B, (C, A, B, A))
    assert ring.seeds == (A, B, C)
    assert [e.peer for e in ring.entries] == [A, B, C]
    shares = ring.shares()
    assert sum(shares.values()) == END - START
    assert max(shares.values()) - min(shares.values()) <= 1
    assert ring.owner(START) == A and ring.owner(END - 1) == C
    assert ring.owner(END) is None and Ring(START, END, A).owner(START) is None
    assert ring.owned_ranges() == [(ring.entries[1].token, ring.entries[2].token)]
    with pytest.raises(LocalProtocolError):
        ring.claim_for_peers([A])


def test_range_text() -> None:
    assert range_text(START, END) == "10.32.0.0/12"
    assert range_text(START + 1, START + 3) == "10.32.0.1-10.32.0.2"


def test_grant_moves_exactly_the_range_and_bumps_versions() -> None:
    a = _seeded(A)
    mine = a.owned_ranges()[0]
    lo, hi = mine[0] + 16, mine[0] + 32
    a.grant(lo, hi, D)
    assert a.owner(lo - 1) == A and a.owner(lo) == D and a.owner(hi - 1) == D and a.owner(hi) == A
    assert a.owned_ranges() == [(mine[0], lo), (hi, mine[1])]
    assert a.owned_ranges(D) == [(lo, hi)]
    granted = next(e for e in a.entries if e.token == lo)
    assert granted.version > 0 and granted.free == 16
    with pytest.raises(LocalProtocolError):
        a.grant(lo, hi, C)  # no longer ours
    with pytest.raises(LocalProtocolError):
        a.grant(END - 2, END, C)  # C's


def test_merge_takes_a_donation_and_is_idempotent() -> None:
    a, d = _seeded(A), Ring(START, END, D)
    lo = a.owned_ranges()[0][0]
    a.grant(lo, lo + 64, D)
    result = d.merge(a, _none)
    assert result.changed and result.moved
    assert d.owned_ranges() == [(lo, lo + 64)] and d.seeds == (A, B, C)
    again = d.merge(a, _none)
    assert not again.changed and not again.moved
    assert a.merge(d, _none) == again  # nothing new for A either


def test_merge_refuses_other_ranges_and_other_seeds() -> None:
    ring = _seeded(A)
    with pytest.raises(DifferentRangeError) as err:
        ring.merge(_seeded_range(A, START, START + 256), _none)
    assert err.value.received == (START, START + 256)
    with pytest.raises(DifferentSeedsError) as seeds:
        ring.merge(_seeded(A, (A, B)), _none)
    assert seeds.value.received == (A, B) and seeds.value.ours == (A, B, C)
    assert isinstance(seeds.value, RemoteProtocolError)


def _seeded_range(me: PeerName, start: int, end: int) -> Ring:
    ring = Ring(start, end, me)
    ring.claim_for_peers((A, B, C))
    return ring


def test_a_live_owner_reasserts_a_range_taken_over_and_the_taker_yields() -> None:
    a, b, c = _seeded(A), _seeded(B), _seeded(C)
    lo, hi = b.owned_ranges()[0]
    a.transfer(B, A)  # A (wrongly) takes over B's range, as rmpeer --force of a live B
    assert a.taken == {lo: B}
    result = b.merge(a, lambda s, e: s <= lo + 5 < e, author=A)
    assert result.reasserted and not result.moved
    assert b.owned_ranges() == [(lo, hi)]  # whatever the allocations, ours stays ours
    mine = next(e for e in b.entries if e.token == lo)
    assert mine.peer == B and mine.version == TRANSFER_VERSION_BUMP + 1
    # both arrival orders at a third peer end with B
    c1, c2 = _seeded(C), c
    c1.merge(a, _none, author=A)
    c1.merge(b, _none, author=B)
    c2.merge(b, _none, author=B)
    c2.merge(a, _none, author=A)
    assert c1.entries == c2.entries and c1.owner(lo) == B
    # the taker gives the range back to the re-assertion, unless it allocated there
    with pytest.raises(RingConflictError, match="Received update for IP range I own"):
        a.merge(b, lambda s, e: s <= lo + 5 < e, author=B)
    assert a.owner(lo) == A  # nothing changed
    assert a.merge(b, _none, author=B).moved
    assert a.owner(lo) == B and a.taken == {} and a.entries == c1.entries


def test_a_new_token_or_other_owner_inside_our_range_is_reasserted_as_ours() -> None:
    a, c = _seeded(A), _seeded(C)
    lo, hi = c.owned_ranges()[0]
    head = [*a.entries[:2], Entry(lo, C, 0, 8)]
    forged = Ring(START, END, A, seeds=a.seeds, entries=[*head, Entry(lo + 8, A, 0, 8)])
    assert c.merge(forged, _none, author=A).reasserted
    assert c.owned_ranges() == [(lo, hi)]
    assert next(e for e in c.entries if e.token == lo + 8) == Entry(lo + 8, C, 1, 0)
    equal = Ring(
        START, END, A, seeds=a.seeds, entries=[*a.entries[:2], Entry(lo, D, 0, hi - lo)]
    )
    assert c.merge(equal, lambda s, e: True, author=A).reasserted
    assert c.owner(lo) == C and c.entries[2].version == 1


def test_our_own_entry_with_a_higher_version_is_reasserted() -> None:
    a = _seeded(A)
    old = _seeded(A)
    a.report_free(lambda s, e: e - s - 1)  # v1
    a.report_free(lambda s, e: e - s - 2)  # v2: what a previous incarnation of A said
    result = old.merge(a, _none)
    mine = old.entries[0]
    assert result.changed and not result.moved
    assert mine.version == 3 and mine.peer == A
    assert mine.free == _seeded(A).entries[0].free  # our own count is kept


def test_transfer_outranks_the_old_owner() -> None:
    a, b = _seeded(A), _seeded(B)
    b.report_free(lambda s, e: 7)
    moved = a.transfer(B, A)
    assert moved == b.owned_ranges()
    assert all(e.version >= TRANSFER_VERSION_BUMP for e in a.entries if e.token == moved[0][0])
    c = _seeded(C)
    c.merge(b, _none)
    c.merge(a, _none)
    assert c.owned_ranges(A) == [(a.entries[0].token, a.entries[2].token)]


def test_choose_peers_to_ask_for_space_weights_by_free_space() -> None:
    a = _seeded(A)
    rng = random.Random(1)
    assert a.choose_peers_to_ask_for_space(START, END, rng) in ([B, C], [C, B])
    assert a.choose_peers_to_ask_for_space(START, START + 1, rng) == []  # ours
    picks = [a.choose_peers_to_ask_for_space(START, END, rng)[0] for _ in range(200)]
    assert {B, C} == set(picks)
    assert a.pick_peer_for_transfer(lambda p: p == C) == C
    assert a.pick_peer_for_transfer(lambda p: False) is None


def test_codec_round_trip_and_golden_shape() -> None:
    a = _seeded(A)
    a.grant(a.entries[0].token, a.entries[0].token + 4, D)
    back = Ring.decode_untrusted(a.encode(), B)
    assert back.entries == a.entries and back.seeds == a.seeds and back.ourself == B
    small = Ring(0, 8, A)
    small.claim_for_peers([A, B])
    expected = {"start": 0, "end": 8, "seeds": [1, 2], "entries": [[0, 1, 0, 4], [4, 2, 0, 4]]}
    assert small.encode() == cbor.encode(expected)
    assert small.encode().hex() == (
        "a463656e640865736565647382010265737461727400"
        "67656e7472696573828400010004840402000" + "4"
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"start": 0, "end": 8, "seeds": [], "entries": [[4, 1, 0, 0], [0, 2, 0, 0]]},  # unsorted
        {"start": 0, "end": 8, "seeds": [], "entries": [[0, 1, 0, 0], [0, 2, 0, 0]]},  # repeated
        {"start": 0, "end": 8, "seeds": [], "entries": [[0, 1, 0, 0], [9, 2, 0, 0]]},  # range
        {"start": 0, "end": 8, "seeds": [], "entries": [[1, 1, 0, 0]]},  # no token at start
        {"start": 0, "end": 8, "seeds": [], "entries": [[0, 1, 0, 9]]},  # too much free
        {"start": 0, "end": 8, "seeds": [2, 1], "entries": []},  # seeds unsorted
        {"start": 8, "end": 8, "seeds": [], "entries": []},  # empty range
        {"start": 0, "end": 8, "seeds": [], "entries": [[0, 1, 1 << 62, 0]]},  # version
        {"start": 0, "end": 8, "seeds": [], "entries": [[0, 1, 0]]},
        {"start": 0, "end": 8, "seeds": []},
        [0, 8],
    ],
)
def test_malformed_rings_are_decode_errors(raw: object) -> None:
    with pytest.raises(DecodeError):
        Ring.decode_untrusted(cbor.encode(raw), A)


_small = st.integers(-2, 12) | st.sampled_from([1 << 32, 1 << 48, 1 << 62, -(1 << 63)])
_junk = st.recursive(
    st.none() | st.booleans() | _small | st.text(max_size=3) | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
_ringish = st.fixed_dictionaries(
    {
        "start": _small,
        "end": _small,
        "seeds": st.lists(_small, max_size=3) | _junk,
        "entries": st.lists(st.lists(_small, min_size=3, max_size=5), max_size=4) | _junk,
    }
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | _junk.map(cbor.encode) | _ringish.map(cbor.encode))
def test_decode_untrusted_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        ring = Ring.decode_untrusted(data, A)
        assert Ring.decode_untrusted(ring.encode(), A).entries == ring.entries


# -- replicas against a naive model -----------------------------------------------------------

PEERS = (A, B, C, D)
SMALL = (0, 256)


class Replicas:
    """Four peers, each a ring and a space, exchanging encoded rings in any order."""

    def __init__(self) -> None:
        self.rings = {p: Ring(*SMALL, p) for p in PEERS}
        self.spaces = {p: Space() for p in PEERS}
        for p in (A, B, C):
            self.rings[p].claim_for_peers((A, B, C))  # D joins later with nothing
            self.spaces[p].set_ranges(self.rings[p].owned_ranges())
        self.in_flight: list[tuple[PeerName, PeerName, bytes]] = []
        self.holder: dict[int, PeerName] = {}  # the model: who allocated each address
        self.dead: set[PeerName] = set()

    def live(self) -> list[PeerName]:
        return [p for p in PEERS if p not in self.dead]

    def send(self, src: PeerName, dst: PeerName) -> None:
        if src not in self.dead and dst not in self.dead:
            self.in_flight.append((src, dst, self.rings[src].encode()))

    def deliver(self, index: int) -> None:
        src, dst, data = self.in_flight.pop(index % len(self.in_flight))
        if dst in self.dead:
            return
        ring, space = self.rings[dst], self.spaces[dst]
        ring.merge(Ring.decode_untrusted(data, dst), space.has_allocations, author=src,
                   reachable=frozenset(self.live()) - {dst})
        space.set_ranges(ring.owned_ranges())

    def sync(self) -> None:
        """Everyone merges everyone until nothing changes."""
        self.in_flight.clear()
        for _ in range(3):
            for src in self.live():
                for dst in self.live():
                    if src != dst:
                        self.send(src, dst)
                        self.deliver(len(self.in_flight) - 1)

    def check(self) -> None:
        seen: dict[int, PeerName] = {}
        for p in self.live():
            space, ring = self.spaces[p], self.rings[p]
            assert space.owned_ranges() == ring.owned_ranges()
            for addr in space.allocated():
                assert addr not in seen, f"{addr} allocated by {seen[addr]} and {p}"
                seen[addr] = p
        expected = {a: p for a, p in self.holder.items() if p not in self.dead}
        assert seen == expected


_ops = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "free", "donate", "send", "deliver", "report", "kill"]),
        st.sampled_from(PEERS),
        st.sampled_from(PEERS),
        st.integers(0, 255),
        st.integers(1, 128),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
@example([("alloc", A, A, 0, 1)] * 4 + [("kill", A, B, 0, 1), ("donate", A, C, 33, 63)])
def test_replicas_never_share_or_lose_an_address(
    ops: list[tuple[str, PeerName, PeerName, int, int]],
) -> None:
    r = Replicas()
    for kind, p, q, a, n in ops:
        if p in r.dead:
            continue
        space, ring = r.spaces[p], r.rings[p]
        if kind == "alloc":
            addr = space.allocate(a, a + n)
            if addr is not None:
                r.holder[addr] = p
        elif kind == "free":
            mine = sorted(x for x, who in r.holder.items() if who == p)
            if mine:
                addr = mine[a % len(mine)]
                space.free(addr)
                del r.holder[addr]
        elif kind == "donate" and p != q and q not in r.dead:  # q asked p for space
            chunk = space.donate(a, a + n)
            if chunk is not None:
                ring.grant(*chunk, q)
                r.send(p, q)
        elif kind == "send" and p != q:
            r.send(p, q)
        elif kind == "deliver" and r.in_flight:
            r.deliver(a)
        elif kind == "report":
            ring.report_free(space.num_free)
        elif kind == "kill" and len(r.live()) > 2 and q != p and q not in r.dead:
            r.sync()  # q's last word reached everyone, then q dies and p takes over
            r.dead.add(q)
            ring.transfer(q, p)
            space.set_ranges(ring.owned_ranges())
            # the takeover is broadcast at once (rmpeer gossips it before anything else):
            # a donation of the taken range that overtakes it is refused by the receiver
            # (the giver is not the owner it knows) and that space is lost, a known gap
            # (docs/ipam.md) this model does not exercise
            for dst in r.live():
                if dst != p:
                    r.send(p, dst)
                    r.deliver(len(r.in_flight) - 1)
        r.check()
    r.sync()
    r.check()
    live = r.live()
    views = {p: [(e.token, e.peer) for e in r.rings[p].entries] for p in live}
    assert len({tuple(v) for v in views.values()}) == 1, "rings did not converge"
    assert {e.peer for e in r.rings[live[0]].entries} <= set(live)  # the dead were taken over
    total = sum(r.rings[live[0]].shares().values())
    assert total == SMALL[1] - SMALL[0]
