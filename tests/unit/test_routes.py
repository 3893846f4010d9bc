"""Routes: pure functions of the peer map (line, ring, star, partial mesh, asymmetry)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from router.mesh.names import PeerName
from router.mesh.routes import Routes, compute_routes, random_neighbours, reachable
from router.mesh.topology import ConnectionSummary, PeerEntry

Edge = tuple[int, int]


def _n(i: int) -> PeerName:
    return PeerName(i)


def mesh(
    edges: Iterable[Edge],
    *,
    pending: Iterable[Edge] = (),
    one_sided: Iterable[Edge] = (),
    nodes: Iterable[int] = (),
) -> dict[PeerName, PeerEntry]:
    """Peers from undirected edges; ``pending`` edges are not established on either end;
    ``one_sided`` edges (a, b) are reported by ``a`` only."""
    conns: dict[int, list[ConnectionSummary]] = {i: [] for i in nodes}

    def add(a: int, b: int, established: bool) -> None:
        conns.setdefault(a, []).append(
            ConnectionSummary(_n(b), f"10.0.0.{b}:6783", a < b, established)
        )
        conns.setdefault(b, [])

    for a, b in edges:
        add(a, b, True)
        add(b, a, True)
    for a, b in pending:
        add(a, b, False)
        add(b, a, False)
    for a, b in one_sided:
        add(a, b, True)
    return {
        _n(i): PeerEntry(_n(i), f"p{i}", i + 100, i, 1, tuple(sorted(c)))
        for i, c in conns.items()
    }


def hops(table: Mapping[PeerName, PeerName]) -> dict[int, int]:
    return {int(k): int(v) for k, v in table.items()}


def bcast(routes: Routes, source: int, *, everything: bool = False) -> set[int]:
    table = routes.broadcast_all if everything else routes.broadcast
    return {int(n) for n in table.get(_n(source), frozenset())}


def test_line() -> None:
    peers = mesh([(1, 2), (2, 3), (3, 4)])
    r = compute_routes(_n(1), peers)
    assert hops(r.unicast) == {2: 2, 3: 2, 4: 2}
    r3 = compute_routes(_n(3), peers)
    assert hops(r3.unicast) == {1: 2, 2: 2, 4: 4}
    # A broadcast from 1 is passed on by 2 to 3, by 3 to 4, by 4 to nobody.
    assert bcast(compute_routes(_n(2), peers), 1) == {3}
    assert bcast(r3, 1) == {4}
    assert bcast(compute_routes(_n(4), peers), 1) == set()
    assert bcast(r, 1) == {2}


def test_ring_shortest_paths_and_lowest_name_ties() -> None:
    ring = [(i, i % 6 + 1) for i in range(1, 7)]  # 1-2-3-4-5-6-1
    r = compute_routes(_n(1), mesh(ring))
    assert hops(r.unicast) == {2: 2, 3: 2, 4: 2, 5: 6, 6: 6}  # 4 is a tie: via 2 wins


def test_star() -> None:
    peers = mesh([(0, i) for i in range(1, 6)])
    hub = compute_routes(_n(0), peers)
    assert hops(hub.unicast) == {i: i for i in range(1, 6)}
    assert bcast(hub, 3) == {1, 2, 4, 5}
    assert bcast(hub, 0) == {1, 2, 3, 4, 5}
    leaf = compute_routes(_n(2), peers)
    assert hops(leaf.unicast) == {0: 0, 1: 0, 3: 0, 4: 0, 5: 0}
    assert bcast(leaf, 3) == set()
    assert leaf.neighbours() == {_n(0)}


def _deliveries(peers: dict[PeerName, PeerEntry], source: int) -> dict[int, int]:
    """Simulate a broadcast from ``source``: how often each peer receives it."""
    routes = {name: compute_routes(name, peers) for name in peers}
    received = {int(n): 0 for n in peers}
    frontier = [_n(source)]
    while frontier:
        node = frontier.pop()
        for hop in routes[node].broadcast[_n(source)]:
            received[int(hop)] += 1
            frontier.append(hop)
    return received


def test_partial_mesh_broadcast_reaches_everyone_once() -> None:
    edges = [(1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 5), (4, 6), (5, 6), (6, 7)]
    peers = mesh(edges)
    for source in range(1, 8):
        received = _deliveries(peers, source)
        assert received.pop(source) == 0
        assert set(received.values()) == {1}, (source, received)


def test_unicast_follows_established_only_unicast_all_follows_all() -> None:
    peers = mesh([(1, 2), (2, 3)], pending=[(1, 3)])
    r = compute_routes(_n(1), peers)
    assert hops(r.unicast) == {2: 2, 3: 2}
    assert hops(r.unicast_all) == {2: 2, 3: 3}
    assert bcast(r, 1) == {2}
    assert bcast(r, 1, everything=True) == {2, 3}
    assert r.neighbours(established_only=True) == {_n(2)}
    assert r.neighbours() == {_n(2), _n(3)}


def test_asymmetric_connection_is_not_an_edge() -> None:
    peers = mesh([(1, 2)], one_sided=[(2, 3), (1, 4)])
    r = compute_routes(_n(1), peers)
    assert hops(r.unicast) == {2: 2}
    assert hops(r.unicast_all) == {2: 2}
    assert set(r.broadcast) == {_n(1), _n(2)}
    assert reachable(_n(1), peers) == {_n(1), _n(2)}


def test_connections_to_unknown_peers_are_ignored() -> None:
    peers = mesh([(1, 2)])
    del peers[_n(2)]
    r = compute_routes(_n(1), peers)
    assert dict(r.unicast) == {}
    assert r == Routes.empty(_n(1))


def test_unknown_broadcast_source_has_no_hops() -> None:
    r = compute_routes(_n(1), mesh([(1, 2)]))
    assert bcast(r, 99) == set()


edges_strategy = st.lists(
    st.tuples(st.integers(1, 12), st.integers(1, 12)).filter(lambda e: e[0] != e[1]),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(edges_strategy, st.randoms(use_true_random=False))
def test_determinism_and_single_delivery(edges: list[Edge], rnd: random.Random) -> None:
    unique = {(min(a, b), max(a, b)) for a, b in edges}
    peers = mesh(unique, nodes=[1])
    shuffled_items = list(peers.items())
    rnd.shuffle(shuffled_items)
    shuffled = dict(shuffled_items)
    for name in peers:
        assert compute_routes(name, peers) == compute_routes(name, shuffled)
    received = _deliveries(peers, 1)
    reach = {int(n) for n in reachable(_n(1), peers)}
    assert {p for p, count in received.items() if count == 1} == reach - {1}
    assert all(count <= 1 for count in received.values())


@settings(max_examples=40, deadline=None)
@given(edges_strategy)
def test_unicast_paths_are_shortest_and_loop_free(edges: list[Edge]) -> None:
    peers = mesh({(min(a, b), max(a, b)) for a, b in edges}, nodes=[1])
    routes = {name: compute_routes(name, peers) for name in peers}
    source = routes[_n(1)]
    for dest in source.unicast:
        node, steps = _n(1), 0
        while node != dest:
            node = routes[node].unicast[dest]
            steps += 1
            assert steps <= len(peers)
        assert steps == _distance(peers, 1, int(dest))


def _distance(peers: dict[PeerName, PeerEntry], a: int, b: int) -> int:
    seen, frontier, depth = {a}, [a], 0
    while frontier:
        if b in frontier:
            return depth
        nxt = []
        for node in frontier:
            for c in peers[_n(node)].connections:
                r = int(c.remote_name)
                if r not in seen:
                    seen.add(r)
                    nxt.append(r)
        frontier, depth = nxt, depth + 1
    raise AssertionError("unreachable")


def test_random_neighbours() -> None:
    names = [_n(i) for i in range(1, 8)]
    rng = random.Random(7)
    picked = random_neighbours(names, 3, rng)
    assert len(picked) == 3 and len(set(picked)) == 3 and set(picked) <= set(names)
    assert random_neighbours(names, 3, random.Random(7)) == picked
    assert set(random_neighbours(names, 10, rng, exclude=[_n(1)])) == set(names[1:])
    assert random_neighbours([], 3, rng) == []


def test_random_neighbours_from_routes_favours_bottlenecks() -> None:
    # 1 reaches 2 directly and 3..8 through 9: 9 should be chosen far more often.
    peers = mesh([(1, 2), (1, 9)] + [(9, i) for i in range(3, 9)])
    r = compute_routes(_n(1), peers)
    rng = random.Random(3)
    counts = {2: 0, 9: 0}
    for _ in range(400):
        (pick,) = random_neighbours(r, 1, rng)
        counts[int(pick)] += 1
    assert counts[9] > 3 * counts[2] > 0
    assert set(random_neighbours(r, 5, rng)) == {_n(2), _n(9)}
    assert random_neighbours(r, 5, rng, exclude=[_n(9)]) == [_n(2)]
