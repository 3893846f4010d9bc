"""Topology: merge rules, restarts, unknown peers, garbage collection, the payload codec."""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import PeerName
from router.mesh.topology import (
    MAX_ADDRESSES_PER_PEER,
    MAX_CONNECTIONS,
    MAX_DISCOVERED,
    MAX_VERSION,
    MAX_VERSION_STEP,
    ConnectionSummary,
    PeerEntry,
    Topology,
)
from router.wire import cbor

Record = tuple[int, str, int, int, int, list[tuple[int, str, bool, bool]]]


def _n(i: int) -> PeerName:
    return PeerName(i)


def topo(i: int, *, uid: int | None = None, short_id: int | None = None) -> Topology:
    return Topology(
        _n(i), f"host{i}", uid if uid is not None else 1000 + i,
        short_id if short_id is not None else i, rng=random.Random(i),
    )


def conn(remote: int, *, established: bool = True, outbound: bool = True) -> ConnectionSummary:
    return ConnectionSummary(_n(remote), f"192.168.0.{remote}:6783", outbound, established)


def payload(records: list[Record], sender: int = 0xEE, kind: str = "update") -> bytes:
    """An update in the documented layout (see the topology module docstring)."""
    raw = [
        [name, nick, uid, sid, ver, [[r, a, o, e] for r, a, o, e in conns]]
        for name, nick, uid, sid, ver, conns in records
    ]
    return cbor.encode({"v": 1, "from": sender, "kind": kind, "peers": raw})


def exchange_full(a: Topology, b: Topology) -> None:
    """Each side applies the other's full topology."""
    b_full = b.encode_full()
    b.apply_update_untrusted(a.encode_full())
    a.apply_update_untrusted(b_full)


def test_local_connections_bump_version_and_encode_an_update() -> None:
    a = topo(1)
    assert a.local_entry().version == 1
    update = a.set_local_connections([conn(2)])
    assert update is not None
    assert a.local_entry().version == 2
    assert a.set_local_connections([conn(2)]) is None
    assert a.local_entry().version == 2
    b = topo(2)
    result = b.apply_update_untrusted(update)
    assert result.added == {_n(1)} and result.sender == _n(1) and not result.wants_full
    assert b.peers()[_n(1)] == a.local_entry()
    assert result.delta is not None
    # The delta is itself an update with the new entry: applying it elsewhere teaches it.
    c = topo(3)
    assert c.apply_update_untrusted(result.delta).added == {_n(1)}


def test_local_connection_misuse() -> None:
    a = topo(1)
    with pytest.raises(LocalProtocolError):
        a.set_local_connections([conn(2), conn(2, established=False)])
    with pytest.raises(LocalProtocolError):
        a.set_local_connections([conn(1)])
    with pytest.raises(LocalProtocolError):
        a.set_local_connections([conn(i) for i in range(2, MAX_CONNECTIONS + 3)])
    with pytest.raises(LocalProtocolError):
        Topology(_n(1), "x" * 300, 5, 1)
    with pytest.raises(LocalProtocolError):
        a.note_direct_peer(_n(1), "me", 5, 5)


def test_newer_version_wins_older_is_stale() -> None:
    a = topo(1)
    a.apply_update_untrusted(payload([(5, "five", 55, 5, 3, [])]))
    assert a.peers()[_n(5)].version == 3
    result = a.apply_update_untrusted(payload([(5, "five", 55, 5, 2, [])]))
    assert not result.changed and result.delta is None
    assert a.peers()[_n(5)].version == 3
    result = a.apply_update_untrusted(payload([(5, "renamed", 55, 5, 4, [])]))
    assert result.updated == {_n(5)}
    assert a.peers()[_n(5)].nickname == "renamed"
    assert a.statistics().records_stale == 1


def test_generation_moves_on_every_change_only() -> None:
    a = topo(1)
    g0 = a.generation
    a.apply_update_untrusted(payload([(5, "five", 55, 5, 3, [])]))
    g1 = a.generation
    assert g1 > g0
    a.apply_update_untrusted(payload([(5, "five", 55, 5, 3, [])]))
    assert a.generation == g1


# -- merge properties -----------------------------------------------------------------------

records_strategy = st.lists(
    st.tuples(
        st.integers(2, 6),  # name
        st.sampled_from(["a", "b"]),  # nickname
        st.integers(1, 3),  # uid
        st.integers(0, 4000),  # short id (far from ours: 1)
        st.integers(0, 5),  # version
        st.lists(
            st.tuples(st.integers(1, 8), st.just("10.0.0.1:6783"), st.booleans(), st.booleans()),
            max_size=3,
            unique_by=lambda c: c[0],
        ),
    ),
    min_size=1,
    max_size=12,
)


def _others(t: Topology) -> dict[PeerName, PeerEntry]:
    return {n: e for n, e in t.peers().items() if n != t.ourself}


@settings(max_examples=80, deadline=None)
@given(records_strategy, st.randoms(use_true_random=False))
def test_merge_converges_in_any_order_and_is_idempotent(
    records: list[Record], rnd: random.Random
) -> None:
    payloads = [payload([r]) for r in records]
    first, second = topo(1), topo(1)
    for p in payloads:
        first.apply_update_untrusted(p)
    shuffled = payloads[:]
    rnd.shuffle(shuffled)
    for p in shuffled:
        second.apply_update_untrusted(p)
    assert _others(first) == _others(second)
    # Idempotent: everything again changes nothing.
    for p in payloads:
        assert not second.apply_update_untrusted(p).changed
    assert _others(first) == _others(second)
    # And it is the per-name maximum of the merge key.
    best: dict[PeerName, PeerEntry] = {}
    for p in payloads:
        single = topo(1)
        single.apply_update_untrusted(p)
        for name, entry in _others(single).items():
            if name not in best or entry.key() > best[name].key():
                best[name] = entry
    assert _others(first) == best


@settings(max_examples=40, deadline=None)
@given(records_strategy, records_strategy)
def test_merge_of_batches_is_commutative(left: list[Record], right: list[Record]) -> None:
    def dedupe(rs: list[Record]) -> list[Record]:
        return list({r[0]: r for r in rs}.values())

    lp, rp = payload(dedupe(left)), payload(dedupe(right))
    x, y = topo(1), topo(1)
    x.apply_update_untrusted(lp)
    x.apply_update_untrusted(rp)
    y.apply_update_untrusted(rp)
    y.apply_update_untrusted(lp)
    assert _others(x) == _others(y)


# -- ourself, restarts --------------------------------------------------------------------------


def test_record_about_ourself_makes_us_bump_above_it() -> None:
    a = topo(1)
    a.set_local_connections([conn(2)])
    mine = a.local_entry()
    # Exactly our own entry echoed back: nothing happens.
    echo = payload([(1, mine.nickname, mine.uid, mine.short_id, mine.version,
                     [(2, "192.168.0.2:6783", True, True)])])
    assert not a.apply_update_untrusted(echo).changed
    # An old incarnation (other uid) with a higher version: we go above it.
    result = a.apply_update_untrusted(payload([(1, "host1", 77, 1, 40, [])]))
    assert result.updated == {_n(1)}
    assert a.local_entry().version == 41
    assert a.local_entry().uid == mine.uid
    assert result.delta is not None
    b = topo(2)
    b.apply_update_untrusted(result.delta)
    assert b.peers()[_n(1)] == a.local_entry()
    # A lower-versioned old incarnation loses anyway: no bump.
    assert not a.apply_update_untrusted(payload([(1, "host1", 77, 1, 3, [])])).changed


def test_restart_with_new_uid_wins_everywhere() -> None:
    a, b, c = topo(1), topo(2), topo(3)
    a.set_local_connections([conn(2)])
    b.set_local_connections([conn(1), conn(3)])
    c.set_local_connections([conn(2)])
    for _ in range(3):
        b.set_local_connections([conn(1, established=False), conn(3)])
        b.set_local_connections([conn(1), conn(3)])  # b's version climbs to 8
    exchange_full(a, b)
    exchange_full(b, c)
    exchange_full(a, b)
    assert c.peers()[_n(2)].version == b.local_entry().version == 8

    # b restarts: same name, new uid, version starts again.
    b2 = topo(2, uid=9999)
    stale = a.note_direct_peer(_n(2), "host2", 9999, 2)  # a's handshake with the new b
    assert a.peers()[_n(2)].uid == 9999  # adopted at once
    assert stale is not None
    b2.set_local_connections([conn(1)])
    assert b2.local_entry().version == 2
    result = b2.apply_update_untrusted(stale)  # the old incarnation, from a
    assert result.updated == {_n(2)}
    assert b2.local_entry().version == 9
    exchange_full(a, b2)
    assert a.peers()[_n(2)] == b2.local_entry()
    # c still holds the old incarnation and learns the new one (higher version) from a.
    assert c.peers()[_n(2)].uid == 1002
    c.apply_update_untrusted(a.encode_full())
    assert c.peers()[_n(2)].uid == 9999


def test_restart_without_hint_converges_through_gossip() -> None:
    a, b = topo(1), topo(2)
    a.set_local_connections([conn(2)])
    b.set_local_connections([conn(1)])
    b.set_local_connections([conn(1, established=False)])
    b.set_local_connections([conn(1)])
    exchange_full(a, b)
    b2 = topo(2, uid=4242)
    b2.set_local_connections([conn(1)])
    exchange_full(a, b2)  # a still prefers the old incarnation; b2 sees it and bumps
    assert b2.local_entry().version > 4
    a.apply_update_untrusted(b2.encode_full())
    assert a.peers()[_n(2)] == b2.local_entry()


def test_note_direct_peer_for_known_uid_or_new_peer() -> None:
    a = topo(1)
    assert a.note_direct_peer(_n(2), "host2", 1002, 2) is None
    entry = a.peers()[_n(2)]
    assert (entry.version, entry.nickname, entry.connections) == (0, "host2", ())
    assert a.note_direct_peer(_n(2), "host2", 1002, 2) is None
    # Replacing a mere placeholder supersedes nothing worth telling the peer.
    assert a.note_direct_peer(_n(2), "host2", 2002, 2) is None
    assert a.peers()[_n(2)].uid == 2002
    assert a.note_direct_peer(_n(2), "host2", 1002, 2) is None
    # The first real record replaces the handshake placeholder.
    b = topo(2)
    update = b.set_local_connections([conn(1)])
    assert update is not None
    assert a.apply_update_untrusted(update).updated == {_n(2)}


# -- unknown peers, request-full ----------------------------------------------------------------


def test_unknown_peer_reference_and_request_full() -> None:
    a, b, c = topo(1), topo(2), topo(3)
    a.set_local_connections([conn(2)])
    b.set_local_connections([conn(1), conn(3)])
    c.set_local_connections([conn(2)])
    exchange_full(b, c)
    # a hears only b's own entry: it refers to c, which a does not know.
    result = a.apply_update_untrusted(b.encode_update([_n(2)]))
    assert result.unknown == {_n(3)} and result.sender == _n(2)
    # a asks b for everything; b sees the request marker.
    request = b.apply_update_untrusted(a.encode_request_full())
    assert request.wants_full and request.sender == _n(1)
    assert not request.changed and request.delta is None
    answer = a.apply_update_untrusted(b.encode_full())
    assert answer.added == {_n(3)} and not answer.unknown
    assert set(a.peers()) == {_n(1), _n(2), _n(3)}
    assert b.statistics().full_requests == 1


def test_known_or_included_references_are_not_unknown() -> None:
    a = topo(1)
    result = a.apply_update_untrusted(
        payload([(5, "five", 55, 5, 1, [(6, "x:1", True, True), (1, "y:1", False, True)]),
                 (6, "six", 66, 6, 1, [(5, "z:1", False, True)])])
    )
    assert result.unknown == frozenset()


# -- garbage collection ---------------------------------------------------------------------


def test_garbage_collect_after_partition() -> None:
    t = {i: topo(i) for i in range(1, 5)}  # line 1-2-3-4
    t[1].set_local_connections([conn(2)])
    t[2].set_local_connections([conn(1), conn(3)])
    t[3].set_local_connections([conn(2), conn(4)])
    t[4].set_local_connections([conn(3)])
    for _ in range(3):
        for i in range(1, 4):
            exchange_full(t[i], t[i + 1])
    assert set(t[1].peers()) == {_n(i) for i in range(1, 5)}
    assert t[1].garbage_collect() == set()
    # 2 loses its connection to 3: the mesh splits into 1-2 and 3-4.
    update = t[2].set_local_connections([conn(1)])
    assert update is not None
    t[1].apply_update_untrusted(update)
    assert t[1].garbage_collect() == {_n(3), _n(4)}
    assert set(t[1].peers()) == {_n(1), _n(2)}
    assert t[1].statistics().peers_removed == 2
    # On the other side, 3 still lists 2 as its own neighbour (kept until 3 notices the
    # loss), but 1 is only reachable through a connection that 2 no longer reports.
    t[3].apply_update_untrusted(update)
    assert t[3].garbage_collect() == {_n(1)}
    t[3].set_local_connections([conn(4)])
    assert t[3].garbage_collect() == {_n(2)}


def test_garbage_collect_keeps_direct_neighbours() -> None:
    a = topo(1)
    a.note_direct_peer(_n(2), "host2", 1002, 2)
    a.set_local_connections([conn(2)])
    assert a.garbage_collect() == set()  # 2 has not told us about its side yet
    a.set_local_connections([])
    assert a.garbage_collect() == {_n(2)}


# -- short ids, limits, status ------------------------------------------------------------------


def test_short_id_collision_lowest_name_keeps_it() -> None:
    a = topo(5, short_id=7)
    before = a.local_entry().version
    result = a.apply_update_untrusted(payload([(9, "nine", 99, 7, 1, [])]))
    assert a.local_entry().short_id == 7  # we have the lower name: we keep it
    assert result.updated == frozenset()
    result = a.apply_update_untrusted(payload([(2, "two", 22, 7, 1, [])]))
    assert a.local_entry().short_id not in (7,)
    assert a.local_entry().version == before + 1
    assert _n(5) in result.updated
    assert a.peer_by_short_id(7) == _n(2)
    assert a.peer_by_short_id(a.local_entry().short_id) == _n(5)


def test_max_peers_is_a_counted_drop() -> None:
    a = Topology(_n(1), "one", 11, 1, max_peers=3)
    result = a.apply_update_untrusted(
        payload([(i, "x", 50 + i, i, 1, []) for i in range(2, 6)])
    )
    assert len(a.peers()) == 3
    assert len(result.added) == 2
    assert a.statistics().records_dropped == 2


def test_discovery_addresses_and_status() -> None:
    a = topo(1)
    a.set_local_connections([conn(2)])
    a.apply_update_untrusted(payload([
        (2, "two", 22, 2, 1, [(1, "10.0.0.1:6783", False, True),
                              (3, "10.0.0.3:6783", True, True),
                              (4, "10.0.0.4:40123", False, False)]),
    ]))
    assert a.discovery_addresses(6783) == {"10.0.0.3:6783": _n(3), "10.0.0.4:6783": _n(4)}
    statuses = {s.name: s for s in a.peer_statuses()}
    assert set(statuses) == {str(_n(1)), str(_n(2))}
    two = statuses[str(_n(2))]
    assert (two.nickname, two.uid, two.version) == ("two", 22, 1)
    assert [c.peer_name for c in two.connections] == [str(_n(i)) for i in (1, 3, 4)]
    assert two.connections[0].peer_nickname == "host1"
    stats = a.statistics()
    assert stats.peers == 2 and stats.established_connections == 3


def test_large_topology_is_chunked() -> None:
    a = topo(1)
    conns = [(r, "x" * 64, True, True) for r in range(10, 10 + MAX_CONNECTIONS)]
    a.apply_update_untrusted(payload([(i, "n", 7, i, 1, conns) for i in range(2, 12)]))
    chunks = a.encode_chunks()
    assert len(chunks) > 1
    b = topo(1)
    for chunk in chunks:
        b.apply_update_untrusted(chunk)
    assert b.peers() == a.peers()


# -- untrusted bytes ------------------------------------------------------------------------


def test_connections_not_in_order_are_sorted() -> None:
    a = topo(1)
    a.apply_update_untrusted(payload([(2, "x", 5, 2, 1, [(4, "a:1", True, True),
                                                          (3, "b:1", False, True)])]))
    assert [int(c.remote_name) for c in a.peers()[_n(2)].connections] == [3, 4]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\xff\x00garbage",
        cbor.encode([1, 2, 3]),
        cbor.encode({"v": 2, "from": 1, "kind": "update", "peers": []}),
        cbor.encode({"v": True, "from": 1, "kind": "update", "peers": []}),
        cbor.encode({"v": 1, "from": 1, "kind": "gimme", "peers": []}),
        cbor.encode({"v": 1, "from": 1 << 48, "kind": "update", "peers": []}),
        cbor.encode({"v": 1, "from": 1, "kind": "update"}),
        cbor.encode({"v": 1, "from": 1, "kind": "request-full", "peers": [[1]]}),
        payload([(2, "x", 0, 2, 1, [])]),  # uid 0
        payload([(2, "x", 5, 4096, 1, [])]),  # short id
        payload([(2, "x", 5, 2, 1 << 62, [])]),  # version
        payload([(2, "x" * 300, 5, 2, 1, [])]),  # nickname
        payload([(2, "x", 5, 2, 1, []), (2, "x", 5, 2, 2, [])]),  # twice
        payload([(2, "x", 5, 2, 1, [(3, "a:1", True, True), (3, "b:1", True, True)])]),
        payload([(2, "x", 5, 2, 1, [(4, "a:1", True, True), (3, "b:1", True, True),
                                    (4, "c:1", True, True)])]),  # twice, and not in order
        payload([(2, "x", 5, 2, 1, [(3, "a" * 65, True, True)])]),
        cbor.encode({"v": 1, "from": 1, "kind": "update",
                     "peers": [[2, "x", 5, 2, 1, [[3, "a:1", 1, True]]]]}),
        cbor.encode({"v": 1, "from": 1, "kind": "update",
                     "peers": [[2, "x", True, 2, 1, []]]}),
    ],
)
def test_malformed_payloads_raise_decode_error(bad: bytes) -> None:
    a = topo(1)
    before = a.peers()
    with pytest.raises(DecodeError):
        a.apply_update_untrusted(bad)
    assert a.peers() == before


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes_only_decode_error(data: bytes) -> None:
    a = topo(1)
    with contextlib.suppress(DecodeError):
        a.apply_update_untrusted(data)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_like, st.integers(0, 1))
def test_fuzz_structures_only_decode_error(peers: object, kind: int) -> None:
    a = topo(1)
    data = cbor.encode({"v": 1, "from": 2, "kind": ["update", "request-full"][kind],
                        "peers": peers})
    with contextlib.suppress(DecodeError):
        a.apply_update_untrusted(data)


def _connected_pair() -> tuple[Topology, Topology]:
    h1, h2 = topo(1), topo(2)
    h1.set_local_connections([conn(2)])
    h2.set_local_connections([conn(1)])
    exchange_full(h1, h2)
    return h1, h2


def test_a_forged_record_at_the_version_limit_partitions_nobody() -> None:
    """issue 9 item 2: a lie about h2 at 2**62-1 made h2 bump past the decode limit, and
    h1 then refused every later update from h2 ("version too large") for good."""
    h1, h2 = _connected_pair()
    lie = payload([(2, "host2", 1002, 2, MAX_VERSION - 1, [])], sender=0x99)
    for victim in (h1, h2):
        assert not victim.apply_update_untrusted(lie).changed  # refused, not adopted
        assert victim.statistics().records_refused == 1
    assert h2.local_entry().version < MAX_VERSION - MAX_VERSION_STEP  # never bumped past
    # h2's own later updates still reach h1 and win there.
    update = h2.set_local_connections([conn(1), conn(3)])
    assert update is not None
    assert h1.apply_update_untrusted(update).updated == {_n(2)}
    assert h1.peers()[_n(2)] == h2.local_entry()


def test_a_forged_record_within_the_step_is_outbid_by_its_owner() -> None:
    h1, h2 = _connected_pair()
    held = h1.peers()[_n(2)].version
    lie = payload([(2, "host2", 1002, 2, held + MAX_VERSION_STEP, [])], sender=0x99)
    assert h1.apply_update_untrusted(lie).updated == {_n(2)}  # believed for now...
    assert h1.peers()[_n(2)].connections == ()
    result = h2.apply_update_untrusted(lie)  # ...until the gossip reaches its owner
    assert result.delta is not None and h2.local_entry().version == held + MAX_VERSION_STEP + 1
    h1.apply_update_untrusted(result.delta)
    assert h1.peers()[_n(2)] == h2.local_entry()  # the owner's truth, everywhere


@pytest.mark.parametrize("version", [MAX_VERSION_STEP + 3, MAX_VERSION - MAX_VERSION_STEP])
def test_jumps_beyond_the_step_and_versions_near_the_limit_are_refused(version: int) -> None:
    h1, h2 = _connected_pair()
    h3 = topo(3)
    for victim, name in ((h1, 2), (h1, 7), (h2, 2), (h3, 9)):  # known, unknown, ourself
        before = victim.peers()
        lie = payload([(name, "x", 5, 9, version, [])], sender=0x99)
        assert not victim.apply_update_untrusted(lie).changed
        assert victim.peers() == before


def test_discovery_is_bounded_and_only_ip_addresses() -> None:
    """issue 9 item 8: gossip made us dial up to 10,000 host:port strings, host names too."""
    a = topo(1)
    a.set_local_connections([conn(2)])
    liar = [(3, "evil.example:6783", True, True), (4, "localhost:22", True, False)]
    liar += [(6 + i, f"10.6.{i // 250}.{i % 250}:{1 + i}", True, True) for i in range(2000)]
    a.apply_update_untrusted(payload([(2, "two", 22, 2, 1, liar)]))
    others = [(7000 + j, "x", 70 + j, 9, 1, [(5, f"10.5.{j}.1:6783", True, True)])
              for j in range(MAX_ADDRESSES_PER_PEER + 2)]
    a.apply_update_untrusted(payload(others))
    found = a.discovery_addresses(6783)
    assert all(ipaddress.ip_address(addr.rpartition(":")[0]) for addr in found)
    assert "evil.example:6783" not in found and "localhost:22" not in found
    assert len(found) <= MAX_DISCOVERED
    per_peer = collections.Counter(found.values())
    assert per_peer[_n(5)] == MAX_ADDRESSES_PER_PEER
    assert max(per_peer.values()) <= MAX_ADDRESSES_PER_PEER


def test_discovery_keeps_ipv6_literals() -> None:
    a = topo(1)
    a.set_local_connections([conn(2)])
    a.apply_update_untrusted(payload([(2, "two", 22, 2, 1, [(3, "[fd00::3]:6783", True, True),
                                                            (4, "[fd00::4]:40000", False, True)])]))
    assert a.discovery_addresses(6783) == {"[fd00::3]:6783": _n(3), "[fd00::4]:6783": _n(4)}
