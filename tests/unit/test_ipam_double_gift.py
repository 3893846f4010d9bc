"""A liar that gives its own range to two peers that both asked it for space (issue 9):
the donation comes from the owner, so custody takes it on both; the gift quarantine and
the equivocation check in Ring.merge keep honest allocations unique.

The repro: L owns a /29; Y and Z both allocate there, so both ask L; L answers Y
honestly and sends Z the same ring with that range named Z's (same token, L's version).
"""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from router.ipam import Seed
from router.ipam.payloads import encode_state
from router.ipam.ring import Ring
from router.ipam.ring_entry import Entry
from router.mesh.names import PeerName
from tests.unit.test_ipam_allocator import NICK, A, B, Mesh, _Envelope
from tests.unit.test_ipam_hostile import LIAR

Y, Z, L = A, B, LIAR
SMALL = IPv4Network("10.9.0.0/26")  # A [0, 21), B [21, 42), LIAR [42, 64)
L_SUBNET = "10.9.0.48/29"  # inside L's range only: Y and Z must ask L
BASE = int(SMALL.network_address)


def _trio() -> Mesh:
    mesh = Mesh()
    for name in (Y, Z, L):
        mesh.add(name, Seed((Y, Z, L)), universe=SMALL)
    mesh.connect(Y, Z, L)
    mesh.settle()
    return mesh


def _requests_to(mesh: Mesh, dst: PeerName) -> list[_Envelope]:
    found = [e for e in mesh.in_flight if e.dst == dst and e.kind == "unicast"]
    mesh.in_flight = [e for e in mesh.in_flight if not (e.dst == dst and e.kind == "unicast")]
    return found


def _double_gift(mesh: Mesh) -> tuple[int, int]:
    """Y and Z ask L; L gives Y a block honestly and tells Z the same block is Z's.
    Z hears its gift before Y's claim reaches it. Returns the block."""
    mesh.allocate(Y, "y1", L_SUBNET)
    mesh.allocate(Z, "z1", L_SUBNET)
    (ask_y,) = [e for e in _requests_to(mesh, L) if e.src == Y]
    mesh.peers[L].on_gossip_unicast(Y, ask_y.payload, via=Y, now=mesh.now)
    mesh.flush(L)  # L's honest answer to Y (and its gossip) are in flight now
    wire: dict[str, Any] = mesh.peers[L].ring.to_wire()
    given = [(t, v) for t, p, v, _f in wire["entries"] if PeerName(p) == Y and t >= BASE + 42]
    (token, _version), = given
    lie = {**wire, "entries": [[t, int(Z) if t == token else p, v, f]
                               for t, p, v, f in wire["entries"]]}
    mesh.in_flight.insert(0, _Envelope("unicast", L, Z,
                                       encode_state([(L, NICK[L])], lie, None)))
    mesh.deliver(0)  # Z takes "its" gift first
    end = next(t for t, *_ in wire["entries"] if t > token)
    return token, end


def _held(mesh: Mesh) -> dict[str, list[PeerName]]:
    held: dict[str, list[PeerName]] = {}
    for name in (Y, Z):
        for ident in mesh.peers[name].idents():
            for cidr in mesh.peers[name].lookup(ident):
                held.setdefault(str(cidr.ip), []).append(name)
    return held


def test_a_range_given_to_two_requesters_is_allocated_by_neither() -> None:
    mesh = _trio()
    start, end = _double_gift(mesh)
    answer = next(i for i, e in enumerate(mesh.deliverable())
                  if (mesh.in_flight[e].src, mesh.in_flight[e].dst) == (L, Y))
    mesh.deliver(answer)  # and Y its (honest) one
    for _ in range(2):
        shared = {ip: who for ip, who in _held(mesh).items() if len(who) > 1}
        assert not shared, f"both Y and Z allocated {shared} from [{start}, {end})"
        mesh.settle()
        mesh.advance(30)  # past any quarantine; retries run
    for name in (Y, Z):  # neither allocates from the disputed block ...
        for ident in mesh.peers[name].idents():
            for cidr in mesh.peers[name].lookup(ident):
                assert not start <= int(cidr.ip) < end, (NICK[name], cidr)
        ring = mesh.peers[name].ring
        assert ring.owner(start) == L  # ... which is the donor's again, on both
        assert L in mesh.peers[name].statistics().suspects
        assert mesh.peers[name].statistics().counters["ring_gifts_disputed"] >= 1


def test_an_honest_donation_is_usable_once_its_quarantine_has_passed() -> None:
    mesh = _trio()
    pending = mesh.allocate(Y, "y1", L_SUBNET)
    mesh.settle()  # L gives Y a block: quarantined, not allocated from yet
    assert not mesh.peers[Y].lookup("y1")
    quarantine = mesh.peers[Y].ring.quarantined()
    assert quarantine and all(donor == L for _lo, _hi, donor in quarantine)
    mesh.advance(mesh.peers[Y].gift_quarantine)
    (cidr,) = mesh.peers[Y].lookup("y1")
    assert cidr in IPv4Network(L_SUBNET) and mesh.answer(Y, pending).cidr == cidr
    assert mesh.peers[Y].ring.quarantined() == []
    assert mesh.peers[Y].statistics().suspects == ()
    assert isinstance(cidr, IPv4Interface)


# -- the rule in Ring.merge: rings of L, Y, Z -------------------------------------------------

EVERYONE = frozenset({Y, Z, L})


def _rings() -> tuple[Ring, Ring]:
    """Y and Z, each having taken (as asked) L's [8, 16) at L's version 3, at time 0."""
    out = []
    for me in (Y, Z):
        ring = Ring(0, 32, me, seeds=(L,), entries=[Entry(0, L, 2, 8), Entry(8, L, 2, 8),
                                                     Entry(16, Y, 1, 16)])
        gift = Ring(0, 32, L, entries=[Entry(0, L, 2, 8), Entry(8, me, 3, 8),
                                       Entry(16, Y, 1, 16)])
        ring.merge(gift, _nothing, author=L, reachable=EVERYONE, solicited=[(8, 16)], now=0.0)
        assert ring.quarantined() == [(8, 16, L)]
        out.append(ring)
    return out[0], out[1]


def _nothing(_start: int, _end: int) -> bool:
    return False


def test_equivocation_is_seen_by_both_recipients_and_both_give_the_range_back() -> None:
    ry, rz = _rings()
    view_y, view_z = Ring.decode_untrusted(ry.encode(), Z), Ring.decode_untrusted(rz.encode(), Y)
    result_y = ry.merge(view_z, _nothing, author=Z, reachable=EVERYONE, now=0.5)
    result_z = rz.merge(view_y, _nothing, author=Y, reachable=EVERYONE, now=0.5)
    assert result_y.disputed == result_z.disputed == (L,)
    assert ry.entries == rz.entries  # the same entries written on both sides
    assert ry.owner(8) == rz.owner(8) == L and ry.quarantined() == rz.quarantined() == []
    assert ry.unconfirmed(8) == {Z} and rz.unconfirmed(8) == {Y}  # L cannot re-give it yet
    assert ry.owned_ranges() == [(16, 32)]


def test_a_stale_entry_of_the_donor_is_no_claim_and_the_quarantine_ends() -> None:
    ry, _rz = _rings()
    stale = Ring(0, 32, L, entries=[Entry(0, L, 2, 8), Entry(8, L, 2, 8), Entry(16, Y, 1, 16)])
    assert ry.merge(stale, _nothing, author=L, reachable=EVERYONE, now=1.0).disputed == ()
    assert ry.end_quarantine(1.9, 2.0, EVERYONE) == [] and ry.quarantined() == [(8, 16, L)]
    assert ry.end_quarantine(2.0, 2.0, EVERYONE) == [(8, 16)] and ry.quarantined() == []
    assert ry.owned_ranges() == [(8, 32)]
    # after the quarantine a conflicting claim is re-asserted over, as for any range of ours
    later = Ring(0, 32, L, entries=[Entry(0, L, 2, 8), Entry(8, Z, 9, 8), Entry(16, Y, 1, 16)])
    result = ry.merge(later, _nothing, author=L, reachable=EVERYONE, now=5.0)
    assert result.reasserted and result.disputed == () and ry.owned_ranges() == [(8, 32)]


def test_a_gift_from_the_only_peer_we_reach_is_usable_at_once() -> None:
    """Nobody else could have been given it while we listen (a two-peer mesh: a claim
    from the other peer's space costs no quarantine)."""
    ry, _rz = _rings()
    assert ry.end_quarantine(0.1, 2.0, frozenset({L, Z})) == []
    assert ry.end_quarantine(0.1, 2.0, frozenset({L})) == [(8, 16)]
    assert ry.quarantined() == [] and ry.owned_ranges() == [(8, 32)]


def test_a_greater_claim_or_a_split_inside_a_quarantined_gift_is_a_dispute() -> None:
    for claim in ([Entry(8, Z, 4, 8)], [Entry(8, Y, 3, 4), Entry(12, Z, 0, 4)]):
        ry, _rz = _rings()
        other = Ring(0, 32, Z, entries=[Entry(0, L, 2, 8), *claim, Entry(16, Y, 1, 16)])
        assert ry.merge(other, _nothing, author=Z, reachable=EVERYONE, now=0.1).disputed == (L,)
        assert ry.owned_ranges() == [(16, 32)] and ry.owner(8) == ry.owner(12) == L
        versions = {e.token: e.version for e in ry.entries}
        assert versions[8] > 3 and all(versions[e.token] > e.version for e in claim)


def test_a_held_gift_in_use_claimed_back_for_its_giver_is_reasserted_not_refused() -> None:
    """A gift we did not ask for, allocated from once its giver (a liar) was gone, then
    claimed for the giver (another recipient gave it back after a dispute): ours stays
    ours. Before, the merge was refused (RingConflictError) on every neighbour's ring,
    which cut the recipient off from the whole mesh (the hostile simulation found it)."""
    ry = Ring(0, 32, Y, seeds=(L,), entries=[Entry(0, L, 2, 16), Entry(16, Y, 1, 16)])
    ry.merge(Ring(0, 32, L, entries=[Entry(0, Y, 3, 16), Entry(16, Y, 1, 16)]), _nothing,
             author=L, reachable=EVERYONE, now=0.0)  # unasked: held while L is reachable
    assert ry.taken == {0: L} and ry.gifted == {0}
    assert ry.end_quarantine(9.0, 2.0, EVERYONE) == [(0, 16)]  # allocated from once L was gone
    back = Ring(0, 32, Z, entries=[Entry(0, L, 4, 0), Entry(16, Y, 1, 16)])
    result = ry.merge(back, lambda _s, _e: True, author=Z, reachable=frozenset({Z}), now=9.0)
    assert result.reasserted and ry.owner(0) == Y and ry.entries[0].version == 5
