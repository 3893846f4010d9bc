"""Routes over the mesh topology: pure functions of the peer map.

Every peer computes its routes from the same gossiped topology with the same deterministic
algorithm, so peers agree on paths and broadcasts reach each peer exactly once while the
topology is stable.

Edges. A connection counts as an edge only when *both* ends report it (symmetric), and
only between two known peers. Two edge sets are used:

* *established*: both ends report the connection as established (the data path is up);
  this is what frames follow.
* *all*: both ends report the connection in any state; control messages (gossip unicast
  and broadcast) follow these so they flow before the UDP data path is up.

Spanning trees. From a root, a breadth-first search visits peers level by level; the
parent of a peer at depth ``d + 1`` is its neighbour at depth ``d`` with the *lowest
name*. Every peer computes the same tree for the same root.

* ``unicast[dest]`` is the first hop on the tree path from us to ``dest``.
* ``broadcast[source]`` is the set of our children in the tree rooted at ``source``: a
  broadcast from ``source`` reaching us is passed on to exactly those peers. With one
  shared tree per source, every peer receives each broadcast once.

Broadcast trees are computed lazily per source (one breadth-first search each) and
cached inside the frozen :class:`Routes`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.mesh.names import PeerName

Adjacency = Mapping[PeerName, tuple[PeerName, ...]]


class ConnectionLike(Protocol):
    """What routing needs of a reported connection."""

    @property
    def remote_name(self) -> PeerName: ...

    @property
    def established(self) -> bool: ...


class PeerLike(Protocol):
    """What routing needs of a peer: the connections it reports."""

    @property
    def connections(self) -> Sequence[ConnectionLike]: ...


def adjacency(peers: Mapping[PeerName, PeerLike], *, established_only: bool) -> Adjacency:
    """Symmetric neighbours of every known peer, each tuple sorted by name.

    An edge ``a - b`` exists when ``a`` reports a connection to ``b`` and ``b`` reports
    one to ``a`` (both established when ``established_only``).
    """
    claimed: dict[PeerName, set[PeerName]] = {}
    for name, peer in peers.items():
        remotes: set[PeerName] = set()
        for conn in peer.connections:
            usable = conn.established or not established_only
            if usable and conn.remote_name != name and conn.remote_name in peers:
                remotes.add(conn.remote_name)
        claimed[name] = remotes
    return {
        name: tuple(sorted(r for r in remotes if name in claimed[r]))
        for name, remotes in claimed.items()
    }


def _bfs_parents(
    root: PeerName, adj: Adjacency, stop_after: PeerName | None = None
) -> dict[PeerName, PeerName | None]:
    """Breadth-first tree from ``root``: peer -> parent (lowest-named at the level above).

    With ``stop_after``, the search ends once the level holding that peer has been
    expanded (its children are then final).
    """
    parents: dict[PeerName, PeerName | None] = {root: None}
    frontier = [root]
    while frontier:
        following: list[PeerName] = []
        for node in frontier:  # ascending names: the first claimant is the lowest name
            for neighbour in adj.get(node, ()):
                if neighbour not in parents:
                    parents[neighbour] = node
                    following.append(neighbour)
        if stop_after is not None and stop_after in frontier:
            break
        following.sort()
        frontier = following
    return parents


def _next_hops(ourself: PeerName, adj: Adjacency) -> dict[PeerName, PeerName]:
    """Destination -> first hop on our tree, for every peer reachable from us."""
    hops: dict[PeerName, PeerName] = {}
    for node, parent in _bfs_parents(ourself, adj).items():  # insertion order is BFS order
        if parent is None:
            continue
        hops[node] = node if parent == ourself else hops[parent]
    return hops


class _BroadcastTable(Mapping[PeerName, frozenset[PeerName]]):
    """source -> our children in the tree rooted at source; computed on first lookup."""

    def __init__(self, ourself: PeerName, adj: Adjacency, sources: frozenset[PeerName]) -> None:
        self._ourself = ourself
        self._adj = adj
        self._sources = sources
        self._cache: dict[PeerName, frozenset[PeerName]] = {}

    def __getitem__(self, source: PeerName) -> frozenset[PeerName]:
        if source not in self._sources:
            raise KeyError(source)
        hops = self._cache.get(source)
        if hops is None:
            parents = _bfs_parents(source, self._adj, stop_after=self._ourself)
            hops = frozenset(n for n, p in parents.items() if p == self._ourself)
            self._cache[source] = hops
        return hops

    def __iter__(self) -> Iterator[PeerName]:
        return iter(sorted(self._sources))

    def __len__(self) -> int:
        return len(self._sources)

    def __repr__(self) -> str:
        return f"_BroadcastTable({dict(self)!r})"


@dataclass(frozen=True)
class Routes:
    """Our routing tables for one topology snapshot (see the module docstring).

    ``unicast``/``unicast_all``: destination -> next hop (ourself is not a key).
    ``broadcast``/``broadcast_all``: source -> the neighbours we relay its broadcasts to;
    keys are every peer reachable from us, ourself included.
    """

    ourself: PeerName
    unicast: Mapping[PeerName, PeerName]
    unicast_all: Mapping[PeerName, PeerName]
    broadcast: Mapping[PeerName, frozenset[PeerName]]
    broadcast_all: Mapping[PeerName, frozenset[PeerName]]

    @classmethod
    def empty(cls, ourself: PeerName) -> Routes:
        """Routes of a peer with no connections."""
        return compute_routes(ourself, {})

    def neighbours(self, *, established_only: bool = False) -> frozenset[PeerName]:
        """Peers we have a symmetric connection to (established ones only if asked)."""
        table = self.unicast if established_only else self.unicast_all
        return frozenset(dest for dest, hop in table.items() if dest == hop)


def compute_routes(ourself: PeerName, peers: Mapping[PeerName, PeerLike]) -> Routes:
    """Routes from ``ourself`` over ``peers`` (which should include ourself).

    Deterministic: equal input gives equal output on every peer.
    """
    tables: list[tuple[dict[PeerName, PeerName], _BroadcastTable]] = []
    for established_only in (True, False):
        adj = adjacency(peers, established_only=established_only)
        hops = _next_hops(ourself, adj)
        sources = frozenset(hops) | {ourself}
        tables.append((hops, _BroadcastTable(ourself, adj, sources)))
    (unicast, broadcast), (unicast_all, broadcast_all) = tables
    return Routes(ourself, unicast, unicast_all, broadcast, broadcast_all)


def reachable(ourself: PeerName, peers: Mapping[PeerName, PeerLike]) -> frozenset[PeerName]:
    """Peers reachable from ``ourself`` over symmetric connections in any state."""
    adj = adjacency(peers, established_only=False)
    return frozenset(_bfs_parents(ourself, adj))


def random_neighbours(
    candidates: Routes | Iterable[PeerName],
    count: int,
    rng: random.Random,
    *,
    exclude: Iterable[PeerName] = (),
) -> list[PeerName]:
    """Up to ``count`` distinct neighbours chosen at random, for gossip fan-out.

    Given :class:`Routes`, the candidates are the next hops of ``unicast_all``, each
    weighted by how many destinations it leads to, so neighbours behind bottleneck links
    are picked more often (as Weave does). Given plain names, the choice is uniform.
    The result is a function of the candidates and the ``rng`` state only.
    """
    excluded = set(exclude)
    weights: dict[PeerName, int] = {}
    if isinstance(candidates, Routes):
        for hop in candidates.unicast_all.values():
            if hop not in excluded:
                weights[hop] = weights.get(hop, 0) + 1
    else:
        for name in candidates:
            if name not in excluded:
                weights[name] = 1
    pool = sorted(weights)
    chosen: list[PeerName] = []
    while pool and len(chosen) < count:
        pick = rng.choices(pool, weights=[weights[n] for n in pool])[0]
        chosen.append(pick)
        pool.remove(pick)
    return chosen
