"""Issue 9: what a peer holds back survives its restart (a new allocator from the same
store): quarantined gifts, ranges taken from a live peer, unconfirmed earlier owners and
suspect donors are written with the ring (router/ipam/persistence.py) and taken up again."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from router.errors import DecodeError
from router.ipam import Pending, PersistBatch, PersistedState
from router.ipam.allocator import Allocator
from router.ipam.persistence import decode_memory, unreadable_problem
from router.mesh.names import PeerName
from router.store import Store
from tests.unit.test_ipam_allocator import A, B, C, Mesh
from tests.unit.test_ipam_double_gift import L_SUBNET, L, Y, Z, _double_gift, _held, _trio
from tests.unit.test_ipam_hostile import LIAR, _lie, _mesh, _ring_with


def test_a_quarantined_gift_stays_quarantined_across_a_restart() -> None:
    mesh = _trio()
    start, end = _double_gift(mesh)  # Z has taken L's block (a lie): quarantined
    assert mesh.peers[Z].ring.quarantined() == [(start, end, L)]
    restarted = mesh.restart(Z)
    assert restarted.ring.quarantined() == [(start, end, L)]
    again = mesh.allocate(Z, "z2", L_SUBNET)
    assert isinstance(again, Pending)  # not from the held block
    mesh.settle()
    mesh.advance(30)
    assert not {ip: who for ip, who in _held(mesh).items() if len(who) > 1}
    for name in (Y, Z):
        assert mesh.peers[name].ring.owner(start) == L
        assert all(not start <= int(c.ip) < end
                   for i in mesh.peers[name].idents() for c in mesh.peers[name].lookup(i))
    restarted = mesh.restart(Y)  # the suspect donor is remembered too
    assert L in restarted.statistics().suspects


def test_a_range_taken_from_a_live_peer_stays_held_across_a_restart() -> None:
    mesh = _mesh(A, B)
    lo, hi = mesh.peers[B].ring.owned_ranges()[0]
    mesh.call(A, lambda a: a.rmpeer(str(B), 0, force=True))
    mesh.in_flight = [e for e in mesh.in_flight if e.src != A]  # B has not heard of it yet
    restarted = mesh.restart(A)
    assert restarted.ring.owner(lo) == A and restarted.ring.taken
    subnet = IPv4Network((lo, 24))
    got = mesh.allocate(A, "a1", str(subnet))
    assert isinstance(got, Pending)  # B is reachable: its range is not allocated from
    mesh.connect(A, B)
    mesh.advance(30)  # A's ring reaches B, B re-asserts, A yields and then asks B
    assert mesh.errors == []  # no "Received update for IP range I own" conflict
    assert mesh.answer(A, got).cidr is not None  # from space B gave it, once B had it back
    assert mesh.peers[B].ring.owned_ranges(B)[0][0] < hi


def test_unconfirmed_earlier_owners_are_remembered_across_a_restart() -> None:
    mesh = _mesh(A, B, C, LIAR)
    (b_lo, _b_hi), = mesh.peers[B].ring.owned_ranges()
    _lie(mesh, A, _ring_with(mesh, A, {B: (C, 7)}))  # "B's range is C's": B must confirm
    assert mesh.peers[A].ring.unconfirmed(b_lo) == {B}
    restarted = mesh.restart(A)
    assert restarted.ring.owner(b_lo) == C and restarted.ring.unconfirmed(b_lo) == {B}


def test_the_custody_blob_goes_through_the_sqlite_store(tmp_path: Path) -> None:
    mesh = _trio()
    start, end = _double_gift(mesh)
    path = tmp_path / "weave.db"
    with Store.open(path) as store:
        store.apply_ipam(_everything(mesh, Z))
    with Store.open(path) as store:
        loaded = store.load_ipam()
    assert loaded is not None and loaded.custody is not None
    assert unreadable_problem(loaded) is None
    _taken, _custody, quarantine, _suspects, _gifted = decode_memory(loaded.custody)
    assert quarantine == [(start, end, L)]
    alloc = Allocator(mesh.configs[Z], now=100.0, persisted=loaded)
    assert alloc.ring.quarantined() == [(start, end, L)]
    assert alloc.deadline() == 100.0 + alloc.gift_quarantine


def _everything(mesh: Mesh, name: PeerName) -> PersistBatch:
    """What the mesh's disk holds for ``name``, as one batch (it was flushed already)."""
    disk = mesh.disk[name]
    return PersistBatch(name, reset=True, ring=disk.ring, paxos=disk.paxos,
                        owned=dict(disk.owned), custody=disk.custody)


@pytest.mark.parametrize("blob", [b"\xa0", b"junk", b"\x80"])
def test_an_unreadable_custody_blob_is_named_and_refused(blob: bytes) -> None:
    problem = unreadable_problem(PersistedState(Y, custody=blob))
    assert problem is not None and "custody" in problem
    with pytest.raises(DecodeError):
        decode_memory(blob)

