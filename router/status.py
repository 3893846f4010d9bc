"""Frozen status snapshots: what ``status``, ``report`` and ``/metrics`` are built from.

Each service's ``statistics()`` returns plain frozen data; the daemon assembles them into
one :class:`Status`. Renderers (``router/control/layouts.py`` for Weave's text layouts,
``router/control/report.py`` for the JSON report) read only these, never a service's
private fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.dns.service import DnsStatistics
    from router.ipam import IpamStatistics

CONNECTION_STATES = ("connecting", "retrying", "failed", "pending", "established")


@dataclass(frozen=True)
class ConnectionStatus:
    """One line of ``status connections``: a live connection or a target being dialled."""

    outbound: bool  # "->" when we dialled, "<-" when they did
    address: str  # remote TCP address, "ip:port"
    state: str  # one of CONNECTION_STATES
    info: str = ""  # failure reason for failed/retrying
    overlay: str = ""  # "sleeve" or "fastdp" once known
    encrypted: bool | None = None  # None: no password set anywhere on this side
    peer_name: str = ""  # "aa:bb:cc:dd:ee:ff" once the handshake is done
    peer_nickname: str = ""
    attrs: Mapping[str, str] = field(default_factory=dict)  # e.g. {"mtu": "1376"}
    retry: str = ""  # for failed: "<UTC time>" or "never"


@dataclass(frozen=True)
class PeerConnection:
    """A connection as a peer reports it in topology gossip."""

    outbound: bool
    address: str
    peer_name: str
    peer_nickname: str
    established: bool


@dataclass(frozen=True)
class PeerStatus:
    """A peer of the mesh as this router knows it (``status peers``)."""

    name: str
    nickname: str
    uid: int
    short_id: int
    version: int
    connections: tuple[PeerConnection, ...]


@dataclass(frozen=True)
class RouterStatus:
    """The router section of ``status`` and of the report."""

    version: str
    protocol: str  # "weave-router"
    protocol_min_version: int
    protocol_max_version: int
    name: str
    nickname: str
    port: int
    encryption: bool
    peer_discovery: bool
    trusted_subnets: tuple[str, ...]
    targets: tuple[str, ...]
    connections: tuple[ConnectionStatus, ...]
    peers: tuple[PeerStatus, ...]
    unicast_routes: Mapping[str, str]  # destination peer -> next hop
    broadcast_routes: Mapping[str, tuple[str, ...]]  # source peer -> our next hops
    conn_limit: int
    counters: Mapping[str, int] = field(default_factory=dict)  # drops, terminations, ...


@dataclass(frozen=True)
class Status:
    """Everything the control API can show. ``ready`` is False until every service started."""

    ready: bool
    router: RouterStatus
    # The sleeve data plane's counters (frames and bytes per peer, drops by reason), as
    # ``router.dataplane.backend.Statistics``; None without a data plane (simulations).
    dataplane: Mapping[str, object] | None = None
    ipam: IpamStatistics | None = None  # None: no IPAM (simulations without it)
    dns: DnsStatistics | None = None  # None: --no-dns
    # fastdp's state and per-peer overlay (router.overlay.service.statistics); None
    # without a data plane.
    fastdp: Mapping[str, object] | None = None
