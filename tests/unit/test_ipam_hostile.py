"""An authenticated peer that lies in IPAM gossip (issue 9 items 1 and 7, issue 10 item 1):
allocators back to back, with a liar injecting well-formed but false payloads. Whatever it
sends, no allocator crashes, no honest peer loses or shares a range, and errors are
RemoteProtocolErrors for the connection that delivered the lie."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import RemoteProtocolError
from router.ipam import Seed
from router.ipam.payloads import encode_state, space_message
from router.ipam.ring import MAX_VERSION, VERSION_LIMIT, RingVersionError
from router.mesh.names import PeerName
from tests.unit.test_ipam_allocator import NICK, A, B, C, Mesh, _Envelope

LIAR = PeerName(0x0BAD)
NICK[LIAR] = "liar"


def _mesh(*names: PeerName) -> Mesh:
    mesh = Mesh()
    for name in names:
        mesh.add(name, Seed(tuple(n for n in names if n != LIAR)))
    mesh.connect(*names)
    mesh.settle()
    return mesh


def _lie(mesh: Mesh, dst: PeerName, ring: dict[str, Any], kind: str = "gossip") -> None:
    """LIAR sends ``ring`` (a wire-form ring) to ``dst`` and it is handled now."""
    payload = encode_state([(LIAR, "liar")], ring, None)
    mesh.in_flight.insert(0, _Envelope(kind, LIAR, dst, payload))
    mesh.deliver(0)


def _ring_with(mesh: Mesh, of: PeerName, change: dict[PeerName, tuple[PeerName, int]],
               *, seeds: bool = True) -> dict[str, Any]:
    """``of``'s ring with every entry owned by a key of ``change`` re-assigned to
    ``change[key] = (new owner, version)``."""
    wire = mesh.peers[of].ring.to_wire()
    entries = []
    for token, peer, version, free in wire["entries"]:
        if PeerName(peer) in change:
            owner, version = change[PeerName(peer)]
            peer = int(owner)
        entries.append([token, peer, version, free])
    return {**wire, "entries": entries, "seeds": wire["seeds"] if seeds else []}


def _allocate_everywhere(mesh: Mesh, rounds: int = 3) -> dict[str, PeerName]:
    """Every honest peer allocates; returns address -> peer (asserting uniqueness)."""
    holder: dict[str, PeerName] = {}
    for i in range(rounds):
        for name in sorted(mesh.peers):
            if name == LIAR:
                continue
            result = mesh.allocate(name, f"c{i}-{name}")
            mesh.settle()
            addresses = mesh.peers[name].lookup(f"c{i}-{name}")
            assert addresses, f"{name} did not allocate: {result}"
            ip = str(addresses[0].ip)
            assert ip not in holder, f"{ip} allocated by {holder.get(ip)} and {name}"
            holder[ip] = name
    return holder


def test_issue9_item1_one_gossip_message_at_the_version_limit_is_the_senders_fault() -> None:
    mesh = _mesh(A, B, LIAR)
    before = {n: mesh.peers[n].ring.entries for n in (A, B)}
    # the probe's message: the victim's ring entry at version 2**62 - 1, empty seeds
    lie = _ring_with(mesh, A, {A: (A, MAX_VERSION - 1)}, seeds=False)
    _lie(mesh, A, lie)
    assert len(mesh.errors) == 1
    src, dst, exc = mesh.errors[0]
    assert (src, dst) == (LIAR, A) and isinstance(exc, RingVersionError)
    assert isinstance(exc, RemoteProtocolError)
    assert "at or above the limit" in str(exc)
    # a third peer refuses it too, so it is never relayed to the victim
    _lie(mesh, B, lie)
    assert isinstance(mesh.errors[1][2], RingVersionError)
    assert {n: mesh.peers[n].ring.entries for n in (A, B)} == before
    _allocate_everywhere(mesh, rounds=1)


def test_a_version_just_below_the_limit_never_crashes_and_ours_stays_ours() -> None:
    mesh = _mesh(A, B, LIAR)
    share_a = mesh.peers[A].ring.shares()[A]
    # B believes the lie that A's range is LIAR's at the highest version accepted; A
    # cannot outrank it, keeps its range without a bump, and hears it relayed from B
    _lie(mesh, B, _ring_with(mesh, A, {A: (LIAR, VERSION_LIMIT - 1)}))
    _lie(mesh, A, _ring_with(mesh, A, {A: (A, VERSION_LIMIT - 1)}))
    mesh.settle()
    assert mesh.errors == []
    assert mesh.peers[A].ring.shares()[A] == share_a
    assert all(e.version < VERSION_LIMIT for e in mesh.peers[A].ring.entries)
    holder = _allocate_everywhere(mesh)
    assert {holder[ip] for ip in holder} == {A, B}


def test_issue9_item7_a_third_peers_range_cannot_be_reassigned() -> None:
    mesh = _mesh(A, B, C, LIAR)
    share_b = mesh.peers[B].ring.shares()[B]
    # LIAR says B's range is now A's (a forged donation) and now LIAR's (a grab)
    for victim in (A, C):
        _lie(mesh, victim, _ring_with(mesh, victim, {B: (A, 5)}))
    assert mesh.peers[A].ring.shares().get(A) == mesh.peers[B].ring.shares()[A]  # refused
    assert mesh.peers[A].statistics().shares  # still answers
    _lie(mesh, A, _ring_with(mesh, A, {B: (LIAR, 7)}))
    _lie(mesh, B, _ring_with(mesh, B, {B: (LIAR, 7)}))  # B re-asserts
    # a grab followed by a "donation" by the grabber is refused too (laundering)
    _lie(mesh, A, _ring_with(mesh, A, {LIAR: (A, 8)}))
    mesh.settle()
    assert mesh.errors == []
    for name in (A, B, C):
        assert mesh.peers[name].ring.shares()[B] == share_b, name
    assert mesh.peers[A].statistics().counters["ring_gifts_refused"] >= 2
    _allocate_everywhere(mesh)


def test_issue9_item7_space_goes_only_to_the_peer_that_asked() -> None:
    mesh = _mesh(A, B, C, LIAR)
    lo, hi = mesh.peers[A].ring.owned_ranges()[0]
    # a space request naming C as its sender, delivered by LIAR: denied, nothing moves
    mesh.in_flight.insert(0, _Envelope("unicast", C, A, space_message("space-request", lo, hi)))
    env = mesh.in_flight.pop(0)
    mesh.peers[A].on_gossip_unicast(env.src, env.payload, via=LIAR)
    mesh.flush(A)
    mesh.settle()
    assert mesh.peers[A].ring.shares().get(C) == mesh.peers[C].ring.shares()[C]
    assert mesh.peers[A].statistics().counters["donations"] == 0
    # the same request from C's own connection is served
    mesh.peers[A].on_gossip_unicast(C, space_message("space-request", lo, hi), via=C)
    mesh.flush(A)
    mesh.settle()
    assert mesh.peers[A].statistics().counters["donations"] == 1
    assert mesh.peers[C].ring.shares()[C] > mesh.peers[B].ring.shares()[B]
    _allocate_everywhere(mesh)


def _assert_b_keeps_its_range(mesh: Mesh, share_b: int) -> None:
    for name, alloc in mesh.peers.items():
        assert alloc.ring.shares().get(B) == share_b, name


@pytest.mark.parametrize("order", ["taker-first", "owner-first"])
def test_issue10_item1_rmpeer_force_of_a_live_peer_the_live_peer_wins(order: str) -> None:
    mesh = _mesh(A, B, C)
    share_b = mesh.peers[B].ring.shares()[B]
    mesh.call(A, lambda a: a.rmpeer(str(B), 0, force=True))
    # A's takeover reaches C before or after B's re-assertion
    to_c = [i for i, e in enumerate(mesh.in_flight) if e.dst == C]
    kept = [mesh.in_flight[i] for i in to_c]
    mesh.in_flight = [e for i, e in enumerate(mesh.in_flight) if i not in to_c]
    if order == "taker-first":
        mesh.in_flight[:0] = kept
    else:
        mesh.in_flight.extend(kept)
    mesh.settle()
    assert mesh.errors == []
    _assert_b_keeps_its_range(mesh, share_b)
    holder = _allocate_everywhere(mesh)
    assert set(holder.values()) == {A, B, C}


def test_rmpeer_force_never_allocates_from_the_live_peers_range() -> None:
    mesh = _mesh(A, B)
    b_lo, b_hi = mesh.peers[B].ring.owned_ranges()[0]
    # A takes B's range while B is reachable and allocates before B's answer arrives
    mesh.call(A, lambda a: a.rmpeer(str(B), 0, force=True))
    for i in range(5):
        mesh.allocate(A, f"early{i}")
    for i in range(5):
        (cidr,) = mesh.peers[A].lookup(f"early{i}")
        assert not b_lo <= int(cidr.ip) < b_hi
    mesh.settle()
    _assert_b_keeps_its_range(mesh, b_hi - b_lo)


def test_rmpeer_of_a_dead_peer_that_comes_back_empty_handed() -> None:
    mesh = _mesh(A, B, C)
    share_c = mesh.peers[C].ring.shares()[C]
    mesh.partition({A, B}, {C})
    assert mesh.call(A, lambda a: a.rmpeer("three", 0)) == share_c
    mesh.settle()
    mesh.connect(A, B, C)  # C was only cut off: it re-asserts, A has allocated nothing there
    mesh.settle()
    assert mesh.errors == []
    for alloc in mesh.peers.values():
        assert alloc.ring.shares()[C] == share_c
    _allocate_everywhere(mesh)


_lies = st.lists(
    st.tuples(
        st.sampled_from([A, B, C]),  # receiver
        st.sampled_from([A, B, C, LIAR]),  # whose entries are forged
        st.sampled_from([A, B, C, LIAR, PeerName(77)]),  # the owner it names
        st.sampled_from([1, 2, 150, VERSION_LIMIT - 1, MAX_VERSION - 1]),
        st.sampled_from(["gossip", "broadcast", "unicast"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(_lies, st.booleans())
def test_random_ring_lies_never_share_an_address(
    lies: list[tuple[PeerName, PeerName, PeerName, int, str]], settle_between: bool
) -> None:
    mesh = _mesh(A, B, C, LIAR)
    own = {n: mesh.peers[n].ring.owned_ranges() for n in (A, B, C)}
    for dst, whose, owner, version, kind in lies:
        _lie(mesh, dst, _ring_with(mesh, dst, {whose: (owner, version)}), kind)
        if settle_between:
            mesh.settle()
    mesh.settle()
    assert all(isinstance(exc, RingVersionError) and src == LIAR
               for src, _dst, exc in mesh.errors)
    for name in (A, B, C):  # nobody lost a range; nobody took a range of another
        assert mesh.peers[name].ring.owned_ranges() == own[name]
    _allocate_everywhere(mesh, rounds=2)


def test_a_message_naming_the_receiver_as_its_sender_is_refused() -> None:
    mesh = _mesh(A, B, LIAR)
    request = encode_state([], None, None)  # a ring request: would be answered to "src"
    for kind in ("unicast", "broadcast"):
        mesh.in_flight.insert(0, _Envelope(kind, A, A, request))
        env = mesh.in_flight.pop(0)
        call = (mesh.peers[A].on_gossip_unicast if kind == "unicast"
                else mesh.peers[A].on_gossip_broadcast)
        with pytest.raises(RemoteProtocolError, match="claiming to come from us"):
            call(env.src, env.payload, via=LIAR)
        mesh.flush(A)
    _allocate_everywhere(mesh, rounds=1)
