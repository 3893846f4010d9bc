"""Topology gossip as digests (protocol version 2): summaries, digests, wants.

The property: peers exchanging summaries, digests and the records they pull, under
random loss and reordering, converge to the same topology as full-state gossip.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.errors import DecodeError, RemoteProtocolError
from router.mesh.gossip import GossipIn, GossipRouter, OutEvent
from router.mesh.names import PeerName
from router.mesh.routes import compute_routes
from router.mesh.topology import ConnectionSummary, PeerEntry, Topology
from router.mesh.topology_codec import (
    KIND_DIGEST,
    KIND_SUMMARY,
    KIND_WANT,
    DigestMessage,
    SummaryMessage,
    WantMessage,
    decode_message,
    encode_payload,
)
from router.mesh.topology_gossip import TopologyGossiper
from router.wire import cbor
from tests.unit.test_gossip import pump, to_in

INTERVAL = 30.0


def _n(i: int) -> PeerName:
    return PeerName(i)


def _never_stale(name: PeerName, version: int, uid: int, raw: object) -> bool:
    return False


class Node:
    """A peer as the mesh driver runs it; ``digests``: its connections negotiate version 2."""

    def __init__(self, i: int, *, digests: bool) -> None:
        self.name = _n(i)
        self.digests = digests
        self.topology = Topology(self.name, f"host{i}", 500 + i, i, rng=random.Random(i))
        self.router = GossipRouter(self.name, now=0.0, interval=INTERVAL, rng=random.Random(i))
        self.gossiper = TopologyGossiper(self.topology, self.router, on_change=self.refresh)
        self.links: set[PeerName] = set()
        self.now = 0.0

    def refresh(self) -> None:
        self.topology.garbage_collect()
        self.router.set_routes(compute_routes(self.name, self.topology.peers()),
                               frozenset(self.links))

    def local_changed(self) -> None:
        self.gossiper.set_local_connections(
            ConnectionSummary(n, f"10.0.0.{int(n)}:6783", self.name < n, True)
            for n in self.links
        )
        self.refresh()

    def tick(self) -> None:
        self.now += INTERVAL
        self.router.handle_timer(self.now)


def connect(a: Node, b: Node) -> None:
    for x, y in ((a, b), (b, a)):
        x.gossiper.speaks_digests(y.name, x.digests and y.digests)
        x.links.add(y.name)
        x.refresh()
        x.gossiper.note_direct_peer(y.name, f"host{int(y.name)}", 500 + int(y.name),
                                    int(y.name))
        x.local_changed()


def kinds(events: Iterable[OutEvent]) -> list[str]:
    out = []
    for event in events:
        message = decode_message(event.payload, _never_stale)
        out.append(message[1] if isinstance(message, tuple) else type(message).__name__)
    return out


# -- the codec --------------------------------------------------------------------------------


def test_digest_kinds_round_trip_and_are_not_updates() -> None:
    t = Topology(_n(1), "one", 11, 1)
    t.set_local_connections([ConnectionSummary(_n(2), "10.0.0.2:6783", True, True)])
    summary = decode_message(t.encode_summary(), _never_stale)
    assert summary == SummaryMessage(_n(1), 1, t.summary()[1])
    digest = decode_message(t.encode_digest(push=True), _never_stale)
    assert isinstance(digest, DigestMessage) and digest.push
    assert digest.entries == {_n(1): (2, t.digest_entries()[0][2])}
    assert decode_message(t.encode_want([_n(3), _n(2)]), _never_stale) == WantMessage(
        _n(1), frozenset({_n(2), _n(3)}))
    with pytest.raises(DecodeError):  # an update was due
        t.apply_update_untrusted(t.encode_summary())
    assert len(t.encode_summary()) < 64  # O(1), whatever the mesh holds


def _raw(kind: str, **fields: object) -> bytes:
    return cbor.encode({"v": 1, "from": 7, "kind": kind, **fields})


@pytest.mark.parametrize("bad", [
    _raw(KIND_SUMMARY, count=1, hash=b"short"),
    _raw(KIND_SUMMARY, count=-1, hash=bytes(8)),
    _raw(KIND_SUMMARY, count=1, hash=bytes(8), peers=[]),
    _raw(KIND_DIGEST, push=1, digest=[]),
    _raw(KIND_DIGEST, push=True, digest=[1, 2]),
    _raw(KIND_DIGEST, push=True, digest=[1, 2, 3, 1, 5, 6]),  # a peer twice
    _raw(KIND_DIGEST, push=True, digest=[1, 1 << 62, 3]),
    _raw(KIND_DIGEST, push=True, digest=[1, 2, 1 << 32]),
    _raw(KIND_DIGEST, push=True, digest=[1 << 48, 2, 3]),
    _raw(KIND_WANT, names=[1, 1]),
    _raw(KIND_WANT, names="x"),
    _raw(KIND_WANT, names=[-1]),
])
def test_malformed_digest_kinds_raise_decode_error(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(bad, _never_stale)


@given(st.dictionaries(st.sampled_from(["count", "hash", "push", "digest", "names", "peers"]),
                       st.one_of(st.integers(-3, 1 << 50), st.binary(max_size=9),
                                 st.booleans(), st.lists(st.integers(-2, 1 << 49),
                                                         max_size=7))),
       st.sampled_from([KIND_SUMMARY, KIND_DIGEST, KIND_WANT]))
def test_fuzzed_digest_kinds_only_decode_error(fields: dict[str, object], kind: str) -> None:
    with contextlib.suppress(DecodeError):
        decode_message(_raw(kind, **fields), _never_stale)


# -- comparing digests ------------------------------------------------------------------------


def test_compare_digest_wants_newer_and_different_and_pushes_the_rest() -> None:
    a, b = Topology(_n(1), "one", 11, 1), Topology(_n(2), "two", 22, 2)
    records = [PeerEntry(_n(5), "five", 55, 5, 3), PeerEntry(_n(6), "six", 66, 6, 2),
               PeerEntry(_n(7), "seven", 77, 7, 4)]
    a.apply_update_untrusted(encode_payload(_n(9), "update", records))
    b.apply_update_untrusted(encode_payload(_n(9), "update", [
        PeerEntry(_n(5), "five", 55, 5, 4),  # newer at b
        PeerEntry(_n(6), "six-forged", 66, 6, 2),  # the same version, another record
        records[2],  # the same record
    ]))
    digest = decode_message(b.encode_digest(push=True), _never_stale)
    assert isinstance(digest, DigestMessage)
    wanted, newer = a.compare_digest(digest)
    assert wanted == {_n(2), _n(5), _n(6)}  # b itself is unknown to a
    assert newer == {_n(1), _n(6)}  # a itself is unknown to b
    # A version the merge would refuse (too far ahead) is not asked for.
    lie = DigestMessage(_n(2), {_n(7): (4 + (1 << 33), 0)}, False)
    assert a.compare_digest(lie)[0] == frozenset()


def test_summary_is_cached_per_generation_and_follows_changes() -> None:
    a = Topology(_n(1), "one", 11, 1)
    first = a.summary()
    assert a.summary() is first
    a.set_local_connections([ConnectionSummary(_n(2), "10.0.0.2:6783", True, True)])
    assert a.summary() != first


# -- over gossip ------------------------------------------------------------------------------


def test_periodic_gossip_is_a_summary_and_equal_summaries_end_there() -> None:
    nodes = {i: Node(i, digests=True) for i in range(1, 4)}
    connect(nodes[1], nodes[2])
    connect(nodes[2], nodes[3])
    routers = {n.name: n.router for n in nodes.values()}
    pump(routers)
    assert all(n.topology.peers() == nodes[1].topology.peers() for n in nodes.values())
    nodes[2].tick()
    out = nodes[2].router.messages_to_send()
    assert out and all(kinds([e]) == ["SummaryMessage"] for _, e in out)
    for dst, event in out:
        nodes[int(dst)].router.receive(nodes[2].name, to_in(event))
    # Equal summaries: nobody answers.
    assert all(not n.router.messages_to_send() for n in nodes.values())
    assert nodes[1].topology.statistics().summaries_matched == 1


def test_a_lost_update_is_repaired_by_pulling_only_the_difference() -> None:
    nodes = {i: Node(i, digests=True) for i in range(1, 7)}
    for i in range(2, 7):
        connect(nodes[1], nodes[i])
    routers = {n.name: n.router for n in nodes.values()}
    pump(routers)
    # 6 changes its record; nothing 6 sends to anyone arrives.
    nodes[6].gossiper.set_local_connections([
        ConnectionSummary(_n(1), "10.0.0.1:6799", False, True)])
    pump(routers, drop=lambda s, d, e: s == _n(6))
    assert nodes[1].topology.peers()[_n(6)] != nodes[6].topology.local_entry()
    # A periodic round from 6 to 1: summary -> 1's digest (push me) -> 6 pushes its record.
    nodes[6].tick()
    seen: list[tuple[PeerName, PeerName, OutEvent]] = []

    def watch(src: PeerName, dst: PeerName, event: OutEvent) -> bool:
        if {src, dst} == {_n(1), _n(6)}:
            seen.append((src, dst, event))
        return False

    pump(routers, drop=watch)
    assert nodes[1].topology.peers()[_n(6)] == nodes[6].topology.local_entry()
    assert [(s, d, kinds([e])) for s, d, e in seen[:3]] == [
        (_n(6), _n(1), ["SummaryMessage"]), (_n(1), _n(6), ["DigestMessage"]),
        (_n(6), _n(1), ["update"])]
    pushed = decode_message(seen[2][2].payload, _never_stale)
    assert isinstance(pushed, tuple) and len(pushed[2]) == 1  # one record, not six


def test_a_new_neighbour_gets_a_digest_and_pulls_what_it_lacks() -> None:
    nodes = {i: Node(i, digests=True) for i in range(1, 4)}
    connect(nodes[1], nodes[2])
    routers = {n.name: n.router for n in nodes.values()}
    pump(routers)
    sent: list[list[str]] = []
    connect(nodes[2], nodes[3])
    pump(routers, drop=lambda s, d, e: sent.append(kinds([e])) or False)
    assert ["DigestMessage"] in sent and ["WantMessage"] in sent
    assert all(n.topology.peers() == nodes[1].topology.peers() for n in nodes.values())
    assert len(nodes[3].topology.peers()) == 3


def test_an_old_neighbour_still_gets_full_state_and_never_a_digest() -> None:
    new, old = Node(1, digests=True), Node(2, digests=False)
    connect(new, old)
    routers = {new.name: new.router, old.name: old.router}
    sent: list[str] = []
    pump(routers, drop=lambda s, d, e: sent.extend(kinds([e])) or False)
    new.tick()
    pump(routers, drop=lambda s, d, e: sent.extend(kinds([e])) or False)
    assert set(sent) == {"update"}
    assert new.topology.peers() == old.topology.peers()


def test_digest_kinds_from_a_version_1_neighbour_drop_it() -> None:
    node = Node(1, digests=True)
    other = Node(2, digests=False)
    connect(node, other)
    with pytest.raises(RemoteProtocolError):
        node.router.receive(_n(2), GossipIn("topology", _n(2), other.topology.encode_summary()))


# -- the property -----------------------------------------------------------------------------


@st.composite
def meshes(draw: st.DrawFn) -> list[tuple[int, int]]:
    """A connected graph on 2..7 peers: a random spanning tree plus random extra edges."""
    n = draw(st.integers(2, 7))
    edges = {(draw(st.integers(1, i - 1)), i) for i in range(2, n + 1)}
    extra = draw(st.lists(st.tuples(st.integers(1, n), st.integers(1, n)), max_size=6))
    edges |= {(min(a, b), max(a, b)) for a, b in extra if a != b}
    order = draw(st.permutations(sorted(edges)))
    return list(order)


def _full_state_reference(edges: list[tuple[int, int]]) -> dict[PeerName, PeerEntry]:
    nodes = {i: Node(i, digests=False) for e in edges for i in e}
    routers = {n.name: n.router for n in nodes.values()}
    for a, b in edges:
        connect(nodes[a], nodes[b])
        pump(routers)
    views = [dict(n.topology.peers()) for n in nodes.values()]
    assert all(v == views[0] for v in views)
    return views[0]


def _lossy(nodes: dict[int, Node], rng: random.Random, loss: float, steps: int) -> None:
    """Deliver in-flight messages in random order, losing some, with periodic rounds."""
    flight: list[tuple[PeerName, PeerName, OutEvent]] = []
    for _ in range(steps):
        for node in nodes.values():
            flight += [(node.name, dst, ev) for dst, ev in node.router.messages_to_send()]
        if rng.random() < 0.1:
            rng.choice(list(nodes.values())).tick()
        if not flight:
            continue
        src, dst, event = flight.pop(rng.randrange(len(flight)))
        if rng.random() >= loss and dst in nodes[int(src)].links:
            nodes[int(dst)].router.receive(src, to_in(event))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meshes(), st.integers(0, 2**32), st.sampled_from([0.0, 0.2, 0.5, 0.9]))
def test_digest_gossip_converges_to_full_state_gossip_under_loss_and_reordering(
    edges: list[tuple[int, int]], seed: int, loss: float
) -> None:
    reference = _full_state_reference(edges)
    rng = random.Random(seed)
    nodes = {i: Node(i, digests=True) for e in edges for i in e}
    for a, b in edges:  # connections come up while messages are lost and reordered
        connect(nodes[a], nodes[b])
        _lossy(nodes, rng, loss, rng.randrange(0, 30))
    _lossy(nodes, rng, loss, 200)
    # Then only periodic gossip, nothing lost (still in random order): a bounded number of
    # rounds must bring every peer to the full-state result.
    routers = {n.name: n.router for n in nodes.values()}
    for _ in range(40):
        if all(dict(n.topology.peers()) == reference for n in nodes.values()):
            break
        for node in nodes.values():
            node.tick()
        _lossy(nodes, rng, 0.0, 400)
        pump(routers)
    pump(routers)
    for node in nodes.values():
        assert dict(node.topology.peers()) == reference
    # Nothing but summaries from here on: a quiet mesh costs O(1) per round.
    for node in nodes.values():
        node.tick()
    for node in nodes.values():
        for _, event in node.router.messages_to_send():
            assert kinds([event]) == ["SummaryMessage"]
