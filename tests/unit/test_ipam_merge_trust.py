"""Who an IPAM ring may make an owner (router/ipam/merge.py, custody): a liar that relays
made-up ownership between honest peers never makes one of them an owner of a live peer's
range, while donations, hand-overs, rmpeer and relayed news keep working.

The invariant tested: while X is reachable, no honest peer other than X ever owns (so
allocates from) a range X owns in its own ring, whatever the liar sends."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from router.ipam import Seed
from router.ipam.payloads import space_message
from router.ipam.ring import MAX_VERSION, VERSION_LIMIT, Ring, RingVersionError
from router.ipam.ring_entry import Entry
from router.mesh.names import PeerName
from tests.unit.test_ipam_allocator import NICK, A, B, C, D, Mesh
from tests.unit.test_ipam_hostile import LIAR, _lie, _mesh

X, Y, Z, L = (PeerName(n) for n in (1, 2, 3, 4))
EVERYONE = frozenset({X, Y, Z, L})


def _ring(me: PeerName, first: Entry) -> Ring:
    return Ring(0, 32, me, seeds=(X,), entries=[first, Entry(16, Y, 5, 16)])


def _merge(into: Ring, other: Ring, author: PeerName) -> None:
    into.merge(other, lambda _s, _e: False, author=author, reachable=EVERYONE)


def test_a_liar_relaying_a_range_between_two_peers_makes_neither_its_owner() -> None:
    """The issue's repro: Y hears "X's range is Z's", Z hears "X's range is Y's"; Z's
    honest gossip then reaches Y, delivered by the owner in Y's poisoned ring."""
    ry, rz = _ring(Y, Entry(0, X, 5, 16)), _ring(Z, Entry(0, X, 5, 16))
    _merge(ry, _ring(L, Entry(0, Z, 6, 16)), L)
    _merge(rz, _ring(L, Entry(0, Y, 7, 16)), L)
    _merge(ry, rz, Z)
    assert ry.owned_ranges() == [(16, 32)]
    assert ry.unconfirmed(0) == {X}  # X never said it let its range go


def test_a_grab_stays_unconfirmed_whatever_versions_the_grabber_sends() -> None:
    ry = _ring(Y, Entry(0, X, 5, 16))
    _merge(ry, _ring(L, Entry(0, L, 6, 16)), L)  # L claims X's range for itself
    for version in (7, 9, 8, 200, VERSION_LIMIT - 2):  # its own bumps, up and down
        _merge(ry, _ring(L, Entry(0, L, version, 16)), L)
        assert ry.unconfirmed(0) == {X}
    _merge(ry, _ring(L, Entry(0, Y, VERSION_LIMIT - 1, 16)), L)  # then "gives" it to Y
    assert ry.owned_ranges() == [(16, 32)]
    # a version at the limit is the liar's fault and changes nothing
    try:
        _merge(ry, _ring(L, Entry(0, Y, VERSION_LIMIT, 16)), L)
    except RingVersionError:
        pass
    else:  # pragma: no cover - must raise
        raise AssertionError("a version at the limit was merged")
    assert ry.owned_ranges() == [(16, 32)]


def test_a_grab_for_a_third_peer_cannot_be_laundered_through_it() -> None:
    ry = _ring(Y, Entry(0, X, 5, 16))
    _merge(ry, _ring(L, Entry(0, Z, 6, 16)), L)  # "Z has it" (a lie)
    _merge(ry, _ring(L, Entry(0, Z, 9, 16)), L)  # Z "bumps" it (another lie)
    _merge(ry, _ring(Z, Entry(0, Y, 10, 16)), Z)  # Z, misled, "gives" it to Y
    assert ry.owned_ranges() == [(16, 32)]
    # X's own ring, which keeps X the owner, confirms nothing; it re-takes the range
    _merge(ry, _ring(X, Entry(0, X, 11, 16)), X)
    assert ry.owner(0) == X
    assert ry.unconfirmed(0) == {Z}  # Z must say it lets go before X's gifts count
    _merge(ry, _ring(Z, Entry(0, X, 11, 16)), Z)  # Z's ring now names X: confirmed
    assert ry.unconfirmed(0) == frozenset()
    _merge(ry, _ring(X, Entry(0, Y, 12, 16)), X)  # X's own hand-over is taken
    assert ry.owned_ranges() == [(0, 32)]


def test_a_relayed_change_is_confirmed_when_the_previous_owner_speaks() -> None:
    """A gave B a range; C hears it from B first (line A-B-C or a race), then from A."""
    a, b, c = X, Y, Z
    rc = Ring(0, 32, c, seeds=(a,), entries=[Entry(0, a, 1, 16), Entry(16, c, 1, 16)])
    relayed = Ring(0, 32, b, entries=[Entry(0, a, 2, 8), Entry(8, b, 0, 8),
                                      Entry(16, c, 1, 16)])
    _merge(rc, relayed, b)
    assert rc.owner(8) == b and rc.unconfirmed(8) == {a}  # C knows; B cannot give it on
    rc.merge(Ring(0, 32, b, entries=[Entry(0, a, 2, 8), Entry(8, c, 1, 8),
                                     Entry(16, c, 1, 16)]),
             lambda _s, _e: False, author=b, reachable=EVERYONE, solicited=[(8, 16)])
    assert rc.owned_ranges() == [(16, 32)]
    _merge(rc, relayed, a)  # A's own word (its ring names B for [8, 16))
    assert rc.unconfirmed(8) == frozenset()
    rc.merge(Ring(0, 32, b, entries=[Entry(0, a, 2, 8), Entry(8, c, 1, 8),
                                     Entry(16, c, 1, 16)]),
             lambda _s, _e: False, author=b, reachable=EVERYONE, solicited=[(8, 16)])
    assert rc.owned_ranges() == [(8, 32)]  # re-donation of received space works


def test_a_change_of_an_unreachable_owner_needs_no_confirmation() -> None:
    """rmpeer of a dead peer: its ranges can be given on at once."""
    ry = _ring(Y, Entry(0, X, 5, 16))
    ry.merge(_ring(Z, Entry(0, Z, 105, 16)), lambda _s, _e: False, author=Z,
             reachable=frozenset({Z}))
    assert ry.unconfirmed(0) == frozenset()
    ry.merge(_ring(Z, Entry(0, Y, 106, 16)), lambda _s, _e: False, author=Z,
             reachable=frozenset({Z}), solicited=[(0, 16)])
    assert ry.owned_ranges() == [(0, 32)]


def test_an_unsolicited_gift_is_held_until_its_giver_is_gone() -> None:
    """A reset hand-over (or a liar's gift): taken, not allocated from while the giver
    is reachable, and given up to a competing greater claim (a second recipient)."""
    ry = _ring(Y, Entry(0, X, 5, 16))
    _merge(ry, _ring(X, Entry(0, Y, 6, 16)), X)
    assert ry.owned_ranges() == [(0, 32)] and ry.taken == {0: X}
    _merge(ry, _ring(Z, Entry(0, Z, 7, 16)), Z)  # X gave it to Z too: Y yields
    assert ry.owned_ranges() == [(16, 32)] and ry.taken == {}


# -- whole allocators: the honest protocols keep working ---------------------------------------


def _own(mesh: Mesh) -> dict[PeerName, list[tuple[int, int]]]:
    return {n: mesh.peers[n].ring.owned_ranges() for n in mesh.peers if n != LIAR}


def _assert_disjoint(mesh: Mesh) -> None:
    """No two honest peers own (in their own rings) overlapping ranges."""
    spans = sorted((lo, hi, n) for n, ranges in _own(mesh).items() for lo, hi in ranges)
    for (_lo1, hi1, n1), (lo2, _hi2, n2) in pairwise(spans):
        assert lo2 >= hi1, f"{NICK[n1]} and {NICK[n2]} both own {lo2}"


def test_donation_reset_and_rmpeer_between_allocators() -> None:
    mesh = _mesh(A, B, C, D)
    mesh.call(A, lambda a: a.rmpeer(str(B), 0, force=True))  # a live peer: it wins
    mesh.settle()
    _assert_disjoint(mesh)
    share_b = mesh.peers[B].ring.shares()[B]
    assert all(mesh.peers[n].ring.shares()[B] == share_b for n in (A, C, D))
    assert mesh.call(C, lambda c: c.reset(0)) is not None  # C hands its space over
    mesh.settle()
    heir = next(n for n in (A, B, D) if mesh.peers[n].ring.shares().get(n, 0) > share_b)
    mesh.kill(C)  # the peer that reset stops: its heir may now allocate there
    _assert_disjoint(mesh)
    for i in range(3):
        mesh.allocate(heir, f"h{i}")
    mesh.settle()
    assert mesh.peers[heir].lookup("h0")


def test_relayed_news_in_a_line_reaches_the_far_end() -> None:
    """A-B-C: C learns that A gave B space although it never hears A itself."""
    mesh = Mesh()
    for name in (A, B, C):
        mesh.add(name, Seed((A, B, C)))
    mesh.connect(A, B)
    mesh.connect(B, C)
    mesh.settle()
    lo, hi = mesh.peers[A].ring.owned_ranges()[0]
    mesh.peers[A].on_gossip_unicast(B, _space_request(lo, hi), via=B)
    mesh.flush(A)
    mesh.settle()
    assert mesh.peers[C].ring.shares()[B] == mesh.peers[A].ring.shares()[B]
    assert mesh.peers[C].ring.shares()[B] > mesh.peers[C].ring.shares()[C]
    _assert_disjoint(mesh)


def _space_request(lo: int, hi: int) -> bytes:
    return space_message("space-request", lo, hi)


_LIES = st.lists(
    st.tuples(
        st.sampled_from([A, B, C]),  # receiver
        st.sampled_from([A, B, C]),  # whose ring the lie is made from
        st.sampled_from([A, B, C, LIAR]),  # whose entries are forged
        st.sampled_from([A, B, C, LIAR]),  # the owner it names
        st.sampled_from([1, 2, 150, VERSION_LIMIT - 1, MAX_VERSION - 1]),
        st.sampled_from(["gossip", "broadcast", "unicast"]),
        st.booleans(),  # let honest gossip run after it
    ),
    min_size=1,
    max_size=14,
)


def _forge(mesh: Mesh, of: PeerName, whose: PeerName, owner: PeerName,
           version: int) -> dict[str, Any]:
    wire = mesh.peers[of].ring.to_wire()
    entries = [[t, int(owner), p_version + version if version < 1000 else version, free]
               if PeerName(p) == whose else [t, p, p_version, free]
               for t, p, p_version, free in wire["entries"]]
    return {**wire, "entries": entries}


@settings(max_examples=400, deadline=None)  # enough to find the old relay hole (a livelock)
@given(_LIES)
def test_whatever_the_liar_relays_no_honest_peer_owns_a_live_peers_range(
    lies: list[tuple[PeerName, PeerName, PeerName, PeerName, int, str, bool]],
) -> None:
    mesh = _mesh(A, B, C, LIAR)
    own = _own(mesh)
    for dst, of, whose, owner, version, kind, settle in lies:
        _lie(mesh, dst, _forge(mesh, of, whose, owner, version), kind)
        _assert_disjoint(mesh)
        if settle:
            mesh.settle()
            _assert_disjoint(mesh)
    mesh.settle()
    _assert_disjoint(mesh)
    for name in (A, B, C):  # every honest peer still owns at least what it started with
        assert all(any(lo <= s and e <= hi for lo, hi in _own(mesh)[name])
                   for s, e in own[name]), name


# -- gossip that changes nothing costs little -------------------------------------------------


def test_an_unchanged_ring_is_encoded_once_and_our_own_ring_back_merges_as_a_no_op() -> None:
    mesh = _mesh(A, B)
    alloc = mesh.peers[A]
    first = alloc.state_payload()
    assert alloc.state_payload() is first  # nothing changed: the same bytes, not re-encoded
    assert alloc.ring.encode() is alloc.ring.encode()
    revision = alloc.ring.revision
    result = alloc.ring.merge(Ring.decode_untrusted(alloc.ring.encode(), B),
                              lambda _s, _e: False, author=B, reachable=frozenset({B}))
    assert not result.changed and alloc.ring.revision == revision
    mesh.allocate(A, "c1")  # a free count changes: a new payload
    assert alloc.state_payload() != first
