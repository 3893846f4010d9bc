"""The JSON report (``GET /report``, ``weave-router report``) in Go Weave 2.8.1's shape.

Built from a :class:`~router.status.Status` snapshot only. Key names, nesting and value
types are those of Weave's report (captured in ``shared/reference/go-weave-2.8.1/*/h*/
report.json``), so scripts written for Weave (``report -f '{{.Router.Name}}'``, ``jq``)
keep working::

    {"Ready": true, "Version": "0.1.0",
     "VersionCheck": {"Enabled": false, "Success": false, "NewVersion": "",
                      "NextCheckAt": "0001-01-01T00:00:00Z"},
     "Router": {"Protocol", "ProtocolMinVersion", "ProtocolMaxVersion", "Encryption",
                "PeerDiscovery", "Name", "NickName", "Port",
                "Peers": [{"Name", "NickName", "UID", "ShortID", "Version",
                           "Connections": [{"Name", "NickName", "Address", "Outbound",
                                            "Established"}] | null}],
                "UnicastRoutes": [{"Dest", "Via"}],
                "BroadcastRoutes": [{"Source", "Via": [name, ...] | null}],
                "Connections": [{"Address", "Outbound", "State", "Info",
                                 "Attrs": {"encrypted"?, "mtu": 1376, "name": "sleeve"} | null}],
                "TerminationCount": 0, "Targets": ["192.168.48.14"] | null,
                "OverlayDiagnostics": {"sleeve": {our data plane counters} | null,
                                       "fastdp": {ours: enabled, disabled_reason, mtu,
                                                  peers: {NAME: {overlay, reason, since,
                                                                 address}}, counters}},
                "TrustedSubnets": [], "Interface": "vethwe-pcap (via TAP)" | "",
                "ConnLimit": 200},                                    <- ours
     "IPAM": {"Paxos": {"Elector", "KnownNodes", "Quorum"} | null, "Range",
              "RangeNumIPs", "ActiveIPs", "DefaultSubnet",
              "Entries": [{"Token", "Size", "Peer", "Nickname", "IsKnownPeer",
                           "Version"}] | null,
              "PendingClaims": [{"Ident", "CIDR"}] | null, "PendingAllocates": [str] | null,
              "Status", "IPs": {"local-free", "local-used"}, "UnreachablePeers",
              "Shares": [{"Name", "NickName", "Size", "IsKnownPeer", "Active"}]}}   <- ours

``Interface`` is the data plane's TAP (Weave's: ``vethwe-pcap (via pcap)`` or ``datapath
(via ODP)``), "" without a data plane. Left out, as nothing here has that data:
``Router.CaptureStats`` (Weave's pcap counters; ours are under OverlayDiagnostics),
``Router.MACs`` (the MAC table lives in the compiled data plane, which lists only its
size, ``OverlayDiagnostics.sleeve.macs``). ``DNS`` is Weave's ``{"Domain", "Upstream":
[ip, ...] | null, "Address": "ip:port", "TTL", "Entries": [{"Hostname", "Origin",
"ContainerID", "Address", "Version", "Tombstone"}] | null}``, absent with ``--no-dns``
as in Weave; ``IPAM`` is absent without IPAM, as in Weave.

The tree is typed for Go (``router/control/govalues.py``): maps are ``GoMap``, slices
Go leaves nil are ``NilSlice`` (JSON ``null``), so templates print what Weave prints.
Lists keep the snapshot's order, except the routes, sorted by peer name so two reports
of one state are byte-identical. ``Info`` is the ``status connections`` info column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from router.control.govalues import (
    GoMap,
    GoPointer,
    GoStringer,
    GoTime,
    NilMap,
    nil_if_empty,
    to_json,
)
from router.control.layouts import connection_info
from router.dns.api import entry_fields
from router.dns.service import DnsStatistics
from router.ipam import IpamStatistics
from router.kernel.plumbing import TAP_NAME
from router.mesh.names import PeerName
from router.status import ConnectionStatus, PeerStatus, RouterStatus, Status

JSON_INDENT = 4  # as Weave's MarshalIndent
NEVER = "0001-01-01T00:00:00Z"  # Go's zero time.Time, Weave's NextCheckAt when not checking
NEVER_TEXT = "0001-01-01 00:00:00 +0000 UTC"  # ... as its String() prints it


def _peer(peer: PeerStatus) -> dict[str, object]:
    return {
        "Name": peer.name,
        "NickName": peer.nickname,
        "UID": peer.uid,
        "ShortID": peer.short_id,
        "Version": peer.version,
        "Connections": nil_if_empty([
            {
                "Name": conn.peer_name,
                "NickName": conn.peer_nickname,
                "Address": conn.address,
                "Outbound": conn.outbound,
                "Established": conn.established,
            }
            for conn in peer.connections
        ]),
    }


def _attrs(conn: ConnectionStatus) -> GoMap:
    """Weave's connection attributes: set once established, nil before."""
    if conn.state != "established":
        return NilMap()
    attrs = GoMap({key: int(value) if value.isdigit() else value
                   for key, value in conn.attrs.items()})
    if conn.overlay:
        attrs["name"] = conn.overlay
    if conn.encrypted:
        attrs["encrypted"] = True
    return attrs


def _connection(conn: ConnectionStatus, *, password_set: bool) -> dict[str, object]:
    return {
        "Address": conn.address,
        "Outbound": conn.outbound,
        "State": conn.state,
        "Info": connection_info(conn, password_set=password_set),
        "Attrs": _attrs(conn),
    }


def _router(router: RouterStatus, dataplane: Mapping[str, object] | None,
            fastdp: Mapping[str, object] | None = None) -> dict[str, object]:
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
            {"Source": source, "Via": nil_if_empty(sorted(via))}
            for source, via in sorted(router.broadcast_routes.items())
        ],
        "Connections": [
            _connection(conn, password_set=router.encryption) for conn in router.connections
        ],
        "TerminationCount": router.counters.get("connection_terminations", 0),
        "Targets": nil_if_empty(router.targets),
        "OverlayDiagnostics": GoMap(
            {"sleeve": None if dataplane is None else _sleeve(dataplane),
             **({} if fastdp is None else {"fastdp": _gomap(fastdp)})}),
        "TrustedSubnets": list(router.trusted_subnets),
        "Interface": "" if dataplane is None else f"{TAP_NAME} (via TAP)",
        "ConnLimit": router.conn_limit,
    }


def build_report(status: Status) -> dict[str, object]:
    """The report as a Go-typed tree (:func:`~router.control.govalues.to_json` for JSON)."""
    report: dict[str, object] = {
        "Ready": status.ready,
        "Version": status.router.version,
        "VersionCheck": GoStringer({"Enabled": False, "Success": False, "NewVersion": "",
                                    "NextCheckAt": GoTime(NEVER, NEVER_TEXT)},
                                   "version check update disabled"),  # as Weave's String()
        "Router": GoPointer(_router(status.router, status.dataplane, status.fastdp)),
    }
    if status.ipam is not None:
        report["IPAM"] = GoPointer(_ipam(status.ipam))
    if status.dns is not None:
        report["DNS"] = GoPointer(_dns(status.dns))
    return report


def _dns(dns: DnsStatistics) -> dict[str, object]:
    """Weave's DNS section: every entry, tombstones included (``Tombstone`` > 0)."""
    return {
        "Domain": dns.domain,
        "Upstream": nil_if_empty(list(dns.upstream)),
        "Address": dns.address,
        "TTL": dns.ttl,
        "Entries": nil_if_empty([entry_fields(e) for e in dns.all_entries]),
    }


def _ipam(ipam: IpamStatistics) -> dict[str, object]:
    """Weave's IPAM section (the ring's entries), then our own fields."""
    paxos: GoPointer | None = None  # as Weave's: only while awaiting consensus
    if ipam.quorum is not None and ipam.status.startswith("awaiting consensus"):
        paxos = GoPointer({"Elector": True, "KnownNodes": ipam.known or 0,
                           "Quorum": ipam.quorum})
    return {
        "Paxos": paxos,
        "Range": ipam.range,
        "RangeNumIPs": ipam.max_ips,
        "ActiveIPs": ipam.ips.get("local-used", 0),
        "DefaultSubnet": ipam.default_subnet,
        "Entries": nil_if_empty([
            {"Token": e.token, "Size": e.size, "Peer": e.peer, "Nickname": e.nickname,
             "IsKnownPeer": e.is_known_peer, "Version": e.version}
            for e in ipam.entries
        ]),
        "PendingClaims": nil_if_empty([
            {"Ident": ident, "CIDR": cidr} for ident, cidr in ipam.pending_claim_list]),
        "PendingAllocates": nil_if_empty(ipam.pending_allocate_list),
        "Status": ipam.status,
        "IPs": GoMap(ipam.ips),
        "UnreachablePeers": ipam.unreachable_peers,
        "Shares": [
            {"Name": share.name, "NickName": share.nickname, "Size": share.ips,
             "IsKnownPeer": share.reachable, "Active": share.active}
            for share in ipam.shares
        ],
    }


def _gomap(value: Mapping[str, object]) -> GoMap:
    """A nested mapping as Go maps (fastdp's diagnostics: our own field names)."""
    return GoMap({k: _gomap(v) if isinstance(v, Mapping) else v for k, v in value.items()})


def _sleeve(stats: Mapping[str, object]) -> GoMap:
    """The data plane's counters; peers keyed by name as the rest of the report writes them."""
    peers = stats.get("peers", {})
    assert isinstance(peers, Mapping)
    drops = stats.get("drops", {})
    return GoMap({
        **{key: value for key, value in stats.items() if key not in ("peers", "drops")},
        "drops": GoMap(drops) if isinstance(drops, Mapping) else drops,
        "peers": GoMap({str(PeerName(int(name))): GoMap(counters)
                        for name, counters in peers.items()}),
    })


def render_report(status: Status) -> str:
    """The report as indented JSON text, ending with a newline."""
    return json.dumps(to_json(build_report(status)), indent=JSON_INDENT,
                      ensure_ascii=False) + "\n"
