"""Weave's text layouts for ``status``, ``status targets|connections|peers|ipam|dns``.

Pure functions from a :class:`~router.status.Status` snapshot to text (every line ends
with ``\\n``, no trailing blanks). The layouts are Weave Net's, so scripts that read
``weave status`` read these too::

    status              (labels right-aligned to 15 columns, then ": ")
            Version: 0.1.0
            Service: router
           Protocol: weave-router 1..1
               Name: 5a:b7:04:1c:2d:8e(host1)
         Encryption: disabled
      PeerDiscovery: enabled
            Targets: 1
        Connections: 2 (2 established)
              Peers: 3 (with 6 established connections)
     TrustedSubnets: none
             FastDP: enabled (2 of 2 peers)    (ours; "disabled (--no-fastdp)" etc.)

            Service: ipam                      (only when IPAM runs; after a blank line)
             Status: ready
              Range: 10.32.0.0/12
      DefaultSubnet: 10.32.0.0/12

            Service: dns                       (unless --no-dns; after a blank line)
             Domain: weave.local.
           Upstream: 192.0.2.53, 192.0.2.54    (or none)
                TTL: 1
            Entries: 3

    status dns          name (domain cut off) 12 wide, address 15, container id 12 right
    c1           10.32.0.1       23913da5e322 7a:77:72:00:00:01

    status targets      one target per line

    status connections  direction, address (21 wide), state (11 wide), info, attrs
    -> 192.168.48.14:6783    established encrypted   sleeve 7e:21:4a:70:2f:45(host2) mtu=1376
    <- 192.168.48.13:60773   pending     fastdp 7e:ae:cd:d5:23:8d(host3)
    -> 192.168.48.15:6783    failed      dial: no route to host, retry: 2024-05-01 10:00:02
    -> 192.168.48.16:6783    connecting

    status peers        each peer, then its connections: address 21 wide, peer 37 wide
    ce:31:e0:06:45:1a(host1)
       <- 192.168.48.12:39634   ea:2d:b2:e6:e4:f5(host2)              established

    status ipam         each peer's share: peer 37 wide, count 8 wide; ours first
    7a:77:72:00:00:01(wrw-h1)               393216 IPs (37.5% of total) (1 active)
    7a:77:72:00:00:03(wrw-h3)               131072 IPs (12.5% of total) - unreachable!
    7a:77:72:00:00:02(wrw-h2)               524288 IPs (50.0% of total)
    (the last line ends in a blank, as Weave's does)

The info column of a pending or established connection is Weave's: ``encrypted`` or
``unencrypted`` (11 wide, only when this router has a password), the overlay (``sleeve`` or
``fastdp``) and the remote peer. Failed and retrying connections show the error instead,
failed ones followed by ``, retry: <time>`` (or ``never``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from router.dns.service import DnsStatistics
from router.ipam import IpamStatistics
from router.status import CONNECTION_STATES, ConnectionStatus, RouterStatus, Status

LABEL_WIDTH = 15
ADDRESS_WIDTH = 21
STATE_WIDTH = 11
ENCRYPTION_WIDTH = 11
OVERLAY_WIDTH = 6
PEER_WIDTH = 37
IPAM_COUNT_WIDTH = 8  # status ipam: the count after the 37-wide peer

# The order Weave lists connection counts in (``Connections: 5 (1 established, ...)``).
CONNECTION_COUNT_ORDER = ("established", "pending", "retrying", "failed", "connecting")
assert set(CONNECTION_COUNT_ORDER) == set(CONNECTION_STATES)


def _peer(name: str, nickname: str) -> str:
    return f"{name}({nickname})"


def _lines(lines: Iterable[str]) -> str:
    return "".join(f"{line.rstrip()}\n" for line in lines)


def _field(label: str, value: object) -> str:
    return f"{label:>{LABEL_WIDTH}}: {value}"


def _enabled(flag: bool) -> str:
    return "enabled" if flag else "disabled"


def _counts(counts: Counter[str], order: Iterable[str]) -> str:
    """``1 established, 2 pending``: the non-zero counts in ``order``."""
    return ", ".join(f"{counts[key]} {key}" for key in order if counts[key])


def _connections_summary(router: RouterStatus) -> str:
    counts = Counter(conn.state for conn in router.connections)
    detail = _counts(counts, CONNECTION_COUNT_ORDER)
    total = len(router.connections)
    return f"{total} ({detail})" if detail else str(total)


def _peers_summary(router: RouterStatus) -> str:
    counts: Counter[str] = Counter()
    for peer in router.peers:
        for conn in peer.connections:
            counts["established" if conn.established else "pending"] += 1
    detail = _counts(counts, ("established", "pending"))
    total = len(router.peers)
    return f"{total} (with {detail} connections)" if detail else str(total)


def ipam_section(ipam: IpamStatistics) -> list[str]:
    """The ``Service: ipam`` lines of ``status`` (preceded by a blank line)."""
    return [
        "",
        _field("Service", "ipam"),
        _field("Status", ipam.status),
        _field("Range", ipam.range),
        _field("DefaultSubnet", ipam.default_subnet),
    ]


def render_status(status: Status) -> str:
    """The text of ``weave-router status``: the router section, then IPAM's if it runs."""
    router = status.router
    subnets = ", ".join(router.trusted_subnets) if router.trusted_subnets else "none"
    ipam = status.ipam
    return _lines([
        _field("Version", router.version),
        _field("Service", "router"),
        _field(
            "Protocol",
            f"{router.protocol} {router.protocol_min_version}..{router.protocol_max_version}",
        ),
        _field("Name", _peer(router.name, router.nickname)),
        _field("Encryption", _enabled(router.encryption)),
        _field("PeerDiscovery", _enabled(router.peer_discovery)),
        _field("Targets", len(router.targets)),
        _field("Connections", _connections_summary(router)),
        _field("Peers", _peers_summary(router)),
        _field("TrustedSubnets", subnets),
        *([_field("FastDP", fastdp_summary(status.fastdp))] if status.fastdp is not None
          else []),
        *(ipam_section(ipam) if ipam is not None else []),
        *(dns_section(status.dns) if status.dns is not None else []),
    ])


def dns_section(dns: DnsStatistics) -> list[str]:
    """The ``Service: dns`` lines of ``status`` (preceded by a blank line)."""
    return [
        "",
        _field("Service", "dns"),
        _field("Domain", dns.domain),
        _field("Upstream", ", ".join(dns.upstream) or "none"),
        _field("TTL", dns.ttl),
        _field("Entries", len(dns.entries)),
    ]


def render_dns(status: Status) -> str:
    """``status dns``: Weave's ``%-12s %-15s %12.12s %s`` (name without the domain,
    address, container id, origin), live entries of reachable peers."""
    dns = status.dns
    if dns is None:
        return ""
    suffix = "." + dns.domain
    lines = []
    for entry in dns.entries:
        name = entry.hostname
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
        lines.append(f"{name:<12} {entry.address!s:<15} {entry.container_id:>12.12} "
                     f"{entry.origin}")
    return _lines(lines)


def fastdp_summary(fastdp: Mapping[str, object]) -> str:
    """Ours (Weave has no such line): ``enabled (1 of 2 peers)`` or ``disabled (WHY)``."""
    if not fastdp.get("enabled"):
        return f"disabled ({fastdp.get('disabled_reason') or 'not offered'})"
    peers = fastdp.get("peers")
    total = len(peers) if isinstance(peers, Mapping) else 0
    return f"enabled ({fastdp.get('peers_on_fastdp', 0)} of {total} peers)"


def render_targets(status: Status) -> str:
    """``status targets``: one target per line."""
    return _lines(status.router.targets)


def connection_info(conn: ConnectionStatus, *, password_set: bool) -> str:
    """The info column of one connection line (also the report's ``Info``)."""
    if conn.state in ("failed", "retrying", "connecting"):
        if conn.state == "failed" and conn.retry:
            return f"{conn.info}, retry: {conn.retry}" if conn.info else f"retry: {conn.retry}"
        return conn.info
    parts: list[str] = []
    if password_set and conn.encrypted is not None:
        parts.append(f"{'encrypted' if conn.encrypted else 'unencrypted':<{ENCRYPTION_WIDTH}}")
    if conn.overlay:
        parts.append(f"{conn.overlay:<{OVERLAY_WIDTH}}")
    if conn.peer_name:
        parts.append(_peer(conn.peer_name, conn.peer_nickname))
    if conn.info:
        parts.append(conn.info)
    return " ".join(parts)


def connection_attrs(conn: ConnectionStatus) -> str:
    """``mtu=1376 ...``: the attributes of a connection, sorted by key."""
    return " ".join(f"{key}={value}" for key, value in sorted(conn.attrs.items()) if key != "name")


def render_connection(conn: ConnectionStatus, *, password_set: bool) -> str:
    """One line of ``status connections`` (without the newline)."""
    arrow = "->" if conn.outbound else "<-"
    info = connection_info(conn, password_set=password_set)
    line = f"{arrow} {conn.address:<{ADDRESS_WIDTH}} {conn.state:<{STATE_WIDTH}} {info}"
    attrs = connection_attrs(conn)
    return f"{line.rstrip()} {attrs}" if attrs else line.rstrip()


def render_connections(status: Status) -> str:
    """``status connections``: our connections and the targets being dialled."""
    router = status.router
    return _lines(
        render_connection(conn, password_set=router.encryption) for conn in router.connections
    )


def render_peers(status: Status) -> str:
    """``status peers``: every peer we know, each followed by its connections."""
    lines: list[str] = []
    for peer in status.router.peers:
        lines.append(_peer(peer.name, peer.nickname))
        for conn in peer.connections:
            arrow = "->" if conn.outbound else "<-"
            remote = _peer(conn.peer_name, conn.peer_nickname)
            state = "established" if conn.established else "pending"
            address = f"{conn.address:<{ADDRESS_WIDTH}}"
            lines.append(f"   {arrow} {address} {remote:<{PEER_WIDTH}} {state}")
    return _lines(lines)


def render_ipam_shares(ipam: IpamStatistics | None) -> str:
    """``status ipam``: one line per peer owning part of the range (empty without IPAM).

    Weave's bytes: ``%-37v %8d IPs (%04.1f%% of total) %s``, our peer first with ``(N
    active)``, then the others (by name; Weave's order is a Go map's) with ``- unreachable!``
    or nothing, so their lines end in a blank as Weave's do.
    """
    if ipam is None:
        return ""
    ours = [share for share in ipam.shares if share.active is not None]
    others = sorted((s for s in ipam.shares if s.active is None), key=lambda s: s.name)
    lines = []
    for share in [*ours, *others]:
        peer = _peer(share.name, share.nickname)
        pct = 100.0 * share.ips / ipam.max_ips if ipam.max_ips else 0.0
        if share.active is not None:
            info = f"({share.active} active)"
        else:
            info = "" if share.reachable else "- unreachable!"
        lines.append(f"{peer:<{PEER_WIDTH}} {share.ips:{IPAM_COUNT_WIDTH}d} IPs "
                     f"({pct:04.1f}% of total) {info}\n")
    return "".join(lines)


def render_ipam(status: Status) -> str:
    """``status ipam`` of a status snapshot."""
    return render_ipam_shares(status.ipam)


# ``GET /status/<view>`` -> renderer. ``""`` is plain ``/status``.
VIEWS = {
    "": render_status,
    "targets": render_targets,
    "connections": render_connections,
    "peers": render_peers,
    "ipam": render_ipam,
    "dns": render_dns,
}
