"""Gossip routers wired back to back: broadcast, unicast relay, periodic gossip, topology."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.errors import BrokenError, DecodeError, LocalProtocolError, RemoteProtocolError
from router.mesh.gossip import (
    BroadcastIn,
    BroadcastOut,
    GossipChannel,
    GossipData,
    GossipIn,
    GossipRouter,
    InEvent,
    OutEvent,
    UnicastIn,
    UnicastOut,
)
from router.mesh.names import PeerName
from router.mesh.routes import compute_routes
from router.mesh.topology import ConnectionSummary, PeerEntry, Topology
from router.mesh.topology_gossip import TopologyGossiper

CHANNEL = "toy"


def _n(i: int) -> PeerName:
    return PeerName(i)


# -- a toy gossiper: a grow-only set of words ----------------------------------------------


class Words:
    """GossipData: a set of words, encoded one per line."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = frozenset(words)

    def encode(self) -> list[bytes]:
        return ["\n".join(sorted(self.words)).encode()]

    def merge(self, other: GossipData) -> GossipData:
        assert isinstance(other, Words)
        return Words(self.words | other.words)


def decode_words(payload: bytes) -> frozenset[str]:
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise DecodeError("words: not UTF-8") from None
    if not text or "!" in text:
        raise DecodeError("words: malformed")
    return frozenset(text.split("\n"))


class WordGossiper:
    """A set-union CRDT; records every unicast and broadcast it receives."""

    def __init__(self, *words: str) -> None:
        self.words = set(words)
        self.unicasts: list[tuple[PeerName, bytes]] = []
        self.broadcasts: list[tuple[PeerName, bytes]] = []

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        self.unicasts.append((src, payload))

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        self.broadcasts.append((src, payload))
        self.words |= decode_words(payload)
        return Words(decode_words(payload))

    def gossip(self) -> GossipData | None:
        return Words(self.words) if self.words else None

    def on_gossip(self, payload: bytes) -> GossipData | None:
        new = decode_words(payload) - self.words
        self.words |= new
        return Words(new) if new else None


# -- the harness ------------------------------------------------------------------------


def to_in(event: OutEvent) -> InEvent:
    if isinstance(event, UnicastOut):
        return UnicastIn(event.channel, event.src, event.dst, event.payload)
    if isinstance(event, BroadcastOut):
        return BroadcastIn(event.channel, event.src, event.payload)
    return GossipIn(event.channel, event.src, event.payload)


Drop = Callable[[PeerName, PeerName, OutEvent], bool]


def pump(routers: dict[PeerName, GossipRouter], drop: Drop | None = None) -> int:
    """Deliver until quiet; returns how many messages were delivered."""
    delivered = 0
    for _ in range(200):
        batch = [
            (src, dst, event)
            for src, router in routers.items()
            for dst, event in router.messages_to_send()
        ]
        if not batch:
            return delivered
        for src, dst, event in batch:
            if drop is not None and drop(src, dst, event):
                continue
            routers[dst].receive(src, to_in(event))
            delivered += 1
    raise AssertionError("gossip did not go quiet")


def static_peers(edges: Iterable[tuple[int, int]]) -> dict[PeerName, PeerEntry]:
    conns: dict[int, list[ConnectionSummary]] = {}
    for a, b in edges:
        for x, y in ((a, b), (b, a)):
            conns.setdefault(x, []).append(ConnectionSummary(_n(y), f"10.0.0.{y}:6783",
                                                             x < y, True))
    return {_n(i): PeerEntry(_n(i), f"p{i}", i, i, 1, tuple(sorted(c)))
            for i, c in conns.items()}


def wired(
    edges: list[tuple[int, int]],
    gossipers: dict[int, WordGossiper],
    channels: dict[int, GossipChannel] | None = None,
    *,
    interval: float = 30.0,
    fanout: int = 3,
    max_queue: int = 1024,
) -> dict[PeerName, GossipRouter]:
    """Routers on a static topology, the toy gossiper registered, new-neighbour sync queued."""
    peers = static_peers(edges)
    routers: dict[PeerName, GossipRouter] = {}
    for name, entry in peers.items():
        router = GossipRouter(name, now=0.0, rng=random.Random(int(name)), interval=interval,
                              fanout=fanout, max_queue_per_neighbour=max_queue)
        handle = router.register(CHANNEL, gossipers.setdefault(int(name), WordGossiper()))
        if channels is not None:
            channels[int(name)] = handle
        router.set_routes(compute_routes(name, peers),
                          frozenset(c.remote_name for c in entry.connections))
        routers[name] = router
    return routers


PARTIAL_MESH = [(1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 5)]


def test_broadcast_reaches_everyone_once() -> None:
    gossipers: dict[int, WordGossiper] = {}
    routers = wired(PARTIAL_MESH, gossipers)
    pump(routers)  # new-neighbour sync of empty sets: nothing
    channel = routers[_n(2)].register("bcast", WordGossiper())
    receivers = {i: WordGossiper() for i in (1, 3, 4, 5)}
    for i, g in receivers.items():
        routers[_n(i)].register("bcast", g)
    channel.broadcast(b"hello")
    pump(routers)
    for i, g in receivers.items():
        assert g.broadcasts == [(_n(2), b"hello")], i
    relayed = sum(r.statistics().broadcasts_relayed for r in routers.values())
    assert relayed == 1  # 2 reaches 1, 3, 4 directly; only 5 needs a relay


def test_own_broadcast_coming_back_is_dropped() -> None:
    routers = wired([(1, 2)], {})
    routers[_n(1)].receive(_n(2), BroadcastIn(CHANNEL, _n(1), b"x"))
    assert routers[_n(1)].statistics().dropped_looped == 1


def test_unicast_relays_over_two_hops() -> None:
    gossipers: dict[int, WordGossiper] = {}
    routers = wired([(1, 2), (2, 3)], gossipers)
    channel = routers[_n(1)].register("direct", WordGossiper())
    target = WordGossiper()
    routers[_n(3)].register("direct", target)
    routers[_n(2)].register("direct", WordGossiper())
    assert channel.send_unicast(_n(3), b"psst")
    sent = routers[_n(1)].messages_to_send()
    assert [(hop, e.dst) for hop, e in sent if isinstance(e, UnicastOut)] == [(_n(2), _n(3))]
    for hop, event in sent:
        routers[hop].receive(_n(1), to_in(event))
    pump(routers)
    assert target.unicasts == [(_n(1), b"psst")]
    assert routers[_n(2)].statistics().unicasts_relayed == 1
    assert routers[_n(3)].statistics().unicasts_delivered == 1
    with pytest.raises(LocalProtocolError):
        channel.send_unicast(_n(1), b"me")


def test_unroutable_unicast_and_unknown_channel_are_counted_drops() -> None:
    routers = wired([(1, 2)], {})
    channel = routers[_n(1)].register("c", WordGossiper())
    assert not channel.send_unicast(_n(9), b"nobody")
    assert routers[_n(1)].statistics().dropped_unroutable == 1
    r2 = routers[_n(2)]
    r2.receive(_n(1), GossipIn("nope", _n(1), b"a"))
    r2.receive(_n(1), UnicastIn("nope", _n(1), _n(2), b"a"))
    r2.receive(_n(1), BroadcastIn("nope", _n(1), b"a"))
    assert r2.statistics().dropped_unknown_channel == 3
    # A unicast for a peer we cannot reach, relayed to us: dropped, not bounced.
    r2.receive(_n(1), UnicastIn(CHANNEL, _n(1), _n(7), b"a"))
    assert r2.statistics().dropped_unroutable == 1
    r2.receive(_n(1), UnicastIn(CHANNEL, _n(2), _n(1), b"a"))  # would go straight back
    assert r2.statistics().dropped_unroutable == 2
    assert r2.messages_to_send() == []


def test_periodic_gossip_converges_after_losing_all_first_messages() -> None:
    gossipers = {i: WordGossiper(f"w{i}") for i in range(1, 6)}
    channels: dict[int, GossipChannel] = {}
    routers = wired(PARTIAL_MESH, gossipers, channels, fanout=1, interval=10.0)
    for i, channel in channels.items():
        channel.gossip_update(Words({f"w{i}"}))
    for router in routers.values():
        assert router.deadline() == 10.0
        router.handle_timer(5.0)  # too early: nothing
    # Lose everything sent so far: the new-neighbour sync and the first updates.
    assert pump(routers, drop=lambda s, d, e: True) == 0
    assert all(g.words == {f"w{i}"} for i, g in gossipers.items())
    everything = {f"w{i}" for i in range(1, 6)}
    now = 10.0
    for _round in range(12):
        for router in routers.values():
            router.handle_timer(now)
            assert router.deadline() == now + 10.0
        pump(routers)
        now += 10.0
        if all(g.words == everything for g in gossipers.values()):
            break
    assert all(g.words == everything for g in gossipers.values())
    assert all(r.statistics().periodic_rounds >= 1 for r in routers.values())


def test_gossip_update_floods_deltas_and_stops() -> None:
    gossipers: dict[int, WordGossiper] = {}
    channels: dict[int, GossipChannel] = {}
    routers = wired(PARTIAL_MESH, gossipers, channels)
    pump(routers)
    gossipers[1].words.add("news")
    channels[1].gossip_update(Words({"news"}))
    delivered = pump(routers)
    assert all(g.words == {"news"} for g in gossipers.values())
    # Each peer forwards the news once to each neighbour but the one it came from.
    assert delivered <= 2 * len(PARTIAL_MESH)
    assert pump(routers) == 0


def test_gossip_follows_the_source_tree_in_a_full_mesh() -> None:
    full = [(a, b) for a in range(1, 6) for b in range(a + 1, 6)]
    gossipers: dict[int, WordGossiper] = {}
    channels: dict[int, GossipChannel] = {}
    routers = wired(full, gossipers, channels)
    pump(routers)
    gossipers[1].words.add("news")
    channels[1].gossip_update(Words({"news"}))
    # One message per other peer: in a full mesh the source's tree has depth one, so
    # nobody relays (flooding would cost one message per connection, 4 + 4 * 3).
    assert pump(routers) == 4
    assert all(g.words == {"news"} for g in gossipers.values())


def test_news_from_a_source_without_a_tree_yet_reaches_every_neighbour() -> None:
    gossipers = {i: WordGossiper() for i in (1, 2, 3)}
    routers = wired([(1, 2), (1, 3)], gossipers)
    pump(routers)
    # Peer 9 is not in 1's routes yet (its record is what the gossip brings).
    routers[_n(1)].receive(_n(2), GossipIn(CHANNEL, _n(9), b"fresh"))
    pump(routers)
    assert gossipers[3].words == {"fresh"}


def test_bad_payload_raises_remote_protocol_error() -> None:
    gossipers: dict[int, WordGossiper] = {}
    routers = wired([(1, 2)], gossipers)
    r2 = routers[_n(2)]
    for event in (GossipIn(CHANNEL, _n(1), b"bad!"), BroadcastIn(CHANNEL, _n(1), b"\xff")):
        with pytest.raises(RemoteProtocolError):
            r2.receive(_n(1), event)
    assert r2.statistics().bad_payloads == 2


def test_queue_bound_and_neighbour_gone() -> None:
    routers = wired([(1, 2), (2, 3)], {}, max_queue=2)
    pump(routers)
    r1 = routers[_n(1)]
    channel = r1.register("c", WordGossiper())
    results = [channel.send_unicast(_n(3), b"%d" % i) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert r1.statistics().dropped_queue_full == 3
    assert r1.statistics().queued == 2
    # Gossip for a channel already pending merges instead of taking room.
    channel.gossip_update(Words({"a"}))  # queue full: dropped
    assert r1.statistics().dropped_queue_full == 4
    r1.set_routes(r1.routes, frozenset())
    assert r1.statistics().dropped_neighbour_gone == 2
    assert r1.messages_to_send() == []


@given(st.lists(st.tuples(st.sampled_from(["update", "unicast", "pull", "routes", "tick"]),
                          st.integers(2, 6)), max_size=60))
def test_pending_is_exactly_the_neighbours_with_output(ops: list[tuple[str, int]]) -> None:
    router = GossipRouter(_n(1), now=0.0, interval=30.0, max_queue_per_neighbour=3)
    channel = router.register(CHANNEL, WordGossiper("w"))
    neighbours: frozenset[PeerName] = frozenset()
    now = 0.0
    for op, i in ops:
        if op == "update":
            channel.gossip_update(Words({str(i)}))
        elif op == "unicast":
            channel.send_unicast(_n(i), b"x")
        elif op == "pull":
            router.messages_for(_n(i))
        elif op == "routes":
            neighbours = neighbours ^ {_n(i)}
            router.set_routes(compute_routes(_n(1), {}), neighbours)
        else:
            now += 31.0
            router.handle_timer(now)
        assert router.pending() == {n for n, box in router._outboxes.items() if box}


def test_registration_rules_and_deadline() -> None:
    router = GossipRouter(_n(1), now=100.0, interval=30.0)
    assert router.deadline() == math.inf
    router.register("a", WordGossiper())
    assert router.deadline() == 130.0
    with pytest.raises(LocalProtocolError):
        router.register("a", WordGossiper())
    with pytest.raises(LocalProtocolError):
        router.register("", WordGossiper())
    with pytest.raises(LocalProtocolError):
        router.set_routes(compute_routes(_n(2), {}), frozenset())
    with pytest.raises(LocalProtocolError):
        GossipRouter(_n(1), now=0.0, interval=0.0)


# -- the topology itself over gossip --------------------------------------------------------


class Node:
    """A peer as the mesh driver runs it: topology + gossip router + topology gossiper."""

    def __init__(self, i: int, *, uid: int | None = None) -> None:
        self.name = _n(i)
        self.uid = uid if uid is not None else 500 + i
        self.topology = Topology(self.name, f"host{i}", self.uid, i, rng=random.Random(i))
        self.router = GossipRouter(self.name, now=0.0, interval=30.0, rng=random.Random(i))
        self.gossiper = TopologyGossiper(self.topology, self.router, on_change=self.refresh)
        self.links: dict[PeerName, Node] = {}

    def refresh(self) -> None:
        self.topology.garbage_collect()  # as the driver does, once per burst of changes
        self.router.set_routes(compute_routes(self.name, self.topology.peers()),
                               frozenset(self.links))

    def local_changed(self) -> None:
        self.gossiper.set_local_connections(
            ConnectionSummary(n, f"10.0.0.{int(n)}:6783", self.name < n, True)
            for n in self.links
        )
        self.refresh()

    def connect(self, other: Node) -> None:
        for a, b in ((self, other), (other, self)):
            a.links[b.name] = b
            a.refresh()
            a.gossiper.note_direct_peer(b.name, f"host{int(b.name)}", b.uid, int(b.name))
            a.local_changed()

    def disconnect(self, other: Node) -> None:
        for a, b in ((self, other), (other, self)):
            del a.links[b.name]
            a.local_changed()


def routers_of(nodes: Iterable[Node]) -> dict[PeerName, GossipRouter]:
    return {n.name: n.router for n in nodes}


def test_topology_converges_over_gossip_and_routes_agree() -> None:
    nodes = {i: Node(i) for i in range(1, 6)}
    for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 1), (2, 4)]:
        nodes[a].connect(nodes[b])
        pump(routers_of(nodes.values()))
    views = [n.topology.peers() for n in nodes.values()]
    assert all(v == views[0] for v in views)
    assert set(views[0]) == {_n(i) for i in range(1, 6)}
    routes = {i: compute_routes(n.name, n.topology.peers()) for i, n in nodes.items()}
    assert {int(d): int(h) for d, h in routes[1].unicast.items()} == {2: 2, 3: 2, 4: 2, 5: 5}
    # A partition: 1 and 5 lose every link to the rest; both sides forget the other.
    for a, b in [(1, 2), (4, 5)]:
        nodes[a].disconnect(nodes[b])
    pump(routers_of(nodes.values()))
    assert set(nodes[1].topology.peers()) == {_n(1), _n(5)}
    assert set(nodes[3].topology.peers()) == {_n(2), _n(3), _n(4)}


def test_lost_topology_update_is_repaired_by_request_full() -> None:
    nodes = {i: Node(i) for i in range(1, 4)}
    nodes[1].connect(nodes[2])
    pump(routers_of(nodes.values()))
    # 3 joins 2, but nothing 2 sends to 1 about it arrives.
    nodes[2].connect(nodes[3])
    pump(routers_of(nodes.values()), drop=lambda s, d, e: (s, d) == (_n(2), _n(1)))
    assert _n(3) not in nodes[1].topology
    # Later 2 changes again (3 is now established); 1 hears only 2's own entry,
    # which refers to the unknown 3: 1 asks 2 for everything and learns 3.
    nodes[2].links[_n(3)] = nodes[3]
    nodes[2].gossiper.set_local_connections([
        ConnectionSummary(_n(1), "10.0.0.1:6783", False, True),
        ConnectionSummary(_n(3), "10.0.0.3:6783", True, False),
    ])
    pump(routers_of(nodes.values()))
    assert _n(3) in nodes[1].topology
    assert nodes[1].topology.peers()[_n(3)] == nodes[3].topology.local_entry()
    assert nodes[2].topology.statistics().full_requests >= 1


def test_restarted_neighbour_is_adopted_and_wins() -> None:
    nodes = {i: Node(i) for i in range(1, 4)}
    nodes[1].connect(nodes[2])
    nodes[2].connect(nodes[3])
    pump(routers_of(nodes.values()))
    for _ in range(3):  # make 3's version grow
        nodes[3].disconnect(nodes[2])
        nodes[3].connect(nodes[2])
        pump(routers_of(nodes.values()))
    old_version = nodes[1].topology.peers()[_n(3)].version
    # 3 restarts with a new uid; 2 notices the lost connection only after the new one.
    del nodes[2].links[_n(3)]
    fresh = Node(3, uid=4242)
    nodes[3] = fresh
    fresh.connect(nodes[2])
    pump(routers_of(nodes.values()))
    for node in nodes.values():
        entry = node.topology.peers()[_n(3)]
        assert (entry.uid, entry.version) == (4242, fresh.topology.local_entry().version)
    assert fresh.topology.local_entry().version > old_version


def test_bad_topology_payload_drops_the_neighbour() -> None:
    node = Node(1)
    with pytest.raises(RemoteProtocolError):
        node.router.receive(_n(2), GossipIn("topology", _n(2), b"\x00garbage"))


class Exploding:
    """A gossiper whose every entry point raises ``exc`` (IPAM's BrokenError, a bug)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        raise self.exc

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        raise self.exc

    def gossip(self) -> GossipData | None:
        return None

    def on_gossip(self, payload: bytes) -> GossipData | None:
        raise self.exc


@pytest.mark.parametrize("exc", [
    BrokenError("Merge of incoming data causes: version out of range"),
    ValueError("x"), KeyError("k"), ZeroDivisionError(), AssertionError("bug"),
    LocalProtocolError("misuse"), RecursionError(),
])
def test_any_gossiper_exception_is_the_sending_peers_fault(exc: Exception) -> None:
    routers = wired([(1, 2)], {})
    r2 = routers[_n(2)]
    r2.register("boom", Exploding(exc))
    events: list[InEvent] = [GossipIn("boom", _n(1), b"x"), BroadcastIn("boom", _n(1), b"x"),
                             UnicastIn("boom", _n(1), _n(2), b"x")]
    for event in events:
        with pytest.raises(RemoteProtocolError, match="gossip channel 'boom'") as info:
            r2.receive(_n(1), event)
        assert info.value.__cause__ is exc
    assert r2.statistics().bad_payloads == 3


class Interrupting(Exploding):
    def on_gossip(self, payload: bytes) -> GossipData | None:
        raise KeyboardInterrupt


def test_base_exceptions_are_not_swallowed() -> None:
    routers = wired([(1, 2)], {})
    r2 = routers[_n(2)]
    r2.register("boom", Interrupting(ValueError()))
    with pytest.raises(KeyboardInterrupt):
        r2.receive(_n(1), GossipIn("boom", _n(1), b"x"))
