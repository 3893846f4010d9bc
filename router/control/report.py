"""The JSON report (``GET /report``, ``weave-router report``) in Weave's shape.

Built from a :class:`~router.status.Status` snapshot only. Field names are Weave's, so
``report -f '{{.Router.Name}}'`` and the like keep working::

    {"Version": "0.1.0",
     "Router": {"Protocol": "weave-router", "ProtocolMinVersion": 1, "ProtocolMaxVersion": 1,
                "Encryption": false, "PeerDiscovery": true,
                "Name": "5a:b7:04:1c:2d:8e", "NickName": "host1", "Port": 6783,
                "Peers": [{"Name", "NickName", "UID", "ShortID", "Version",
                           "Connections": [{"Name", "NickName", "Address", "Outbound",
                                            "Established"}]}],
                "UnicastRoutes": [{"Dest": name, "Via": name}],
                "BroadcastRoutes": [{"Source": name, "Via": [name, ...]}],
                "Connections": [{"Address", "Outbound", "State", "Info", "Attrs": {}}],
                "Targets": ["192.168.48.14:6783"], "TrustedSubnets": ["10.0.0.0/8"],
                "ConnLimit": 200}}

Lists keep the snapshot's order, except the routes, which are sorted by peer name so two
reports of the same state are byte-identical. ``Info`` is the text of the ``status
connections`` info column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from router.control.layouts import connection_info
from router.ipam import IpamStatistics
from router.mesh.names import PeerName
from router.status import ConnectionStatus, PeerStatus, RouterStatus, Status

JSON_INDENT = 4  # as Weave's MarshalIndent


def _peer(peer: PeerStatus) -> dict[str, object]:
    return {
        "Name": peer.name,
        "NickName": peer.nickname,
        "UID": peer.uid,
        "ShortID": peer.short_id,
        "Version": peer.version,
        "Connections": [
            {
                "Name": conn.peer_name,
                "NickName": conn.peer_nickname,
                "Address": conn.address,
                "Outbound": conn.outbound,
                "Established": conn.established,
            }
            for conn in peer.connections
        ],
    }


def _connection(conn: ConnectionStatus, *, password_set: bool) -> dict[str, object]:
    return {
        "Address": conn.address,
        "Outbound": conn.outbound,
        "State": conn.state,
        "Info": connection_info(conn, password_set=password_set),
        "Attrs": dict(conn.attrs),
    }


def _router(router: RouterStatus) -> dict[str, object]:
    return {
        "Protocol": router.protocol,
        "ProtocolMinVersion": router.protocol_min_version,
        "ProtocolMaxVersion": router.protocol_max_version,
        "Encryption": router.encryption,
        "PeerDiscovery": router.peer_discovery,
        "Name": router.name,
        "NickName": router.nickname,
        "Port": router.port,
        "Peers": [_peer(peer) for peer in router.peers],
        "UnicastRoutes": [
            {"Dest": dest, "Via": via} for dest, via in sorted(router.unicast_routes.items())
        ],
        "BroadcastRoutes": [
            {"Source": source, "Via": sorted(via)}
            for source, via in sorted(router.broadcast_routes.items())
        ],
        "Connections": [
            _connection(conn, password_set=router.encryption) for conn in router.connections
        ],
        "Targets": list(router.targets),
        "TrustedSubnets": list(router.trusted_subnets),
        "ConnLimit": router.conn_limit,
    }


def build_report(status: Status) -> dict[str, object]:
    """The report as plain JSON-ready data."""
    router = _router(status.router)
    if status.dataplane is not None:
        router["OverlayDiagnostics"] = {"sleeve": _sleeve(status.dataplane)}
    report: dict[str, object] = {"Version": status.router.version, "Router": router}
    if status.ipam is not None:
        report["IPAM"] = _ipam(status.ipam)
    return report


def _ipam(ipam: IpamStatistics) -> dict[str, object]:
    """Weave's IPAM section: status, range, default subnet, each peer's share."""
    return {
        "Status": ipam.status,
        "Range": ipam.range,
        "DefaultSubnet": ipam.default_subnet,
        "MaxIPs": ipam.max_ips,
        "IPs": dict(ipam.ips),
        "UnreachablePeers": ipam.unreachable_peers,
        "PendingAllocates": ipam.pending_allocates,
        "PendingClaims": ipam.pending_claims,
        "Entries": [
            {"Name": share.name, "NickName": share.nickname, "Size": share.ips,
             "IsKnownPeer": share.reachable, "Active": share.active}
            for share in ipam.shares
        ],
    }


def _sleeve(stats: Mapping[str, object]) -> dict[str, object]:
    """The data plane's counters; peers keyed by name as the rest of the report writes them."""
    peers = stats.get("peers", {})
    assert isinstance(peers, Mapping)
    return {
        **{key: value for key, value in stats.items() if key != "peers"},
        "peers": {str(PeerName(int(name))): counters for name, counters in peers.items()},
    }


def render_report(status: Status) -> str:
    """The report as indented JSON text, ending with a newline."""
    return json.dumps(build_report(status), indent=JSON_INDENT, ensure_ascii=False) + "\n"
