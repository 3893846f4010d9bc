"""What the mesh contributes to ``status`` and the report: one frozen snapshot.

Sans-IO: ``MeshService.statistics`` gathers its parts (live connections, the connection
maker's targets, the topology, the routes, the counters) and passes the time in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from router.mesh.connections import LiveConnection, connection_status
from router.mesh.routes import Routes
from router.mesh.targets import ConnectionMaker
from router.mesh.topology import Topology
from router.status import ConnectionStatus, PeerStatus

COUNTERS = (
    "connections_accepted", "connections_refused", "handshake_failures",
    "connection_terminations", "duplicate_connections", "send_queue_drops",
)


@dataclass(frozen=True)
class MeshStatistics:
    """What the mesh contributes to ``status`` and the report."""

    targets: tuple[str, ...]
    connections: tuple[ConnectionStatus, ...]
    peers: tuple[PeerStatus, ...]
    unicast_routes: Mapping[str, str]
    broadcast_routes: Mapping[str, tuple[str, ...]]
    counters: Mapping[str, int]


@dataclass(frozen=True)
class OverlayView:
    """What the status lines need of the overlay, by connection id."""

    established: Callable[[int], bool]
    mtu: Callable[[int], int]  # Weave's mtu=: what a container fits; 0 until established
    name: Callable[[int], str] = lambda _conn_id: "sleeve"  # "fastdp" or "sleeve"


def mesh_statistics(
    connections: Iterable[LiveConnection], overlay: OverlayView, *, maker: ConnectionMaker,
    topology: Topology, routes: Routes, counters: Mapping[str, int], password: bool,
    now: float, wall_now: float,
) -> MeshStatistics:
    """The snapshot: live connections first, then the targets not connected (sorted)."""
    lines = [
        connection_status(conn, established=overlay.established(conn.result.conn_id),
                          mtu=overlay.mtu(conn.result.conn_id), password=password,
                          overlay=overlay.name(conn.result.conn_id))
        for conn in connections
    ]
    lines += maker.target_statuses(now, wall_now=wall_now)
    return MeshStatistics(
        targets=tuple(maker.direct_targets()),
        connections=tuple(lines),
        peers=topology.peer_statuses(),
        unicast_routes={str(d): str(h) for d, h in sorted(routes.unicast.items())},
        broadcast_routes={
            str(s): tuple(str(h) for h in sorted(hops))
            for s, hops in sorted(routes.broadcast.items())
        },
        counters=dict(counters),
    )
