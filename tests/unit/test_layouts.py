"""router/control/layouts.py against a hand-built Status: Weave's text layouts, golden."""

from __future__ import annotations

from dataclasses import replace

from router.control.layouts import (
    render_connection,
    render_connections,
    render_ipam_shares,
    render_peers,
    render_status,
    render_targets,
)
from router.ipam import IpamStatistics, PeerShare
from router.status import ConnectionStatus, PeerConnection, PeerStatus, RouterStatus, Status

H1, H2, H3 = "5a:b7:04:1c:2d:8e", "a6:66:4f:a5:8a:11", "ce:31:e0:06:45:1a"


def _peer(name: str, nick: str, uid: int, conns: list[tuple[bool, str, str, str, bool]]
          ) -> PeerStatus:
    return PeerStatus(
        name=name, nickname=nick, uid=uid, short_id=uid % 4096, version=uid % 7,
        connections=tuple(PeerConnection(outbound=o, address=a, peer_name=n, peer_nickname=k,
                                         established=e) for o, a, n, k, e in conns),
    )


def sample_status(*, password: bool = False, ready: bool = True) -> Status:
    """Three peers in a full mesh, seen from host1 (the cli.md example)."""
    enc = True if password else None
    connections = (
        ConnectionStatus(outbound=True, address="192.168.77.2:6783", state="established",
                         overlay="fastdp", encrypted=enc, peer_name=H2, peer_nickname="host2",
                         attrs={"mtu": "1376"}),
        ConnectionStatus(outbound=False, address="192.168.77.3:41234", state="established",
                         overlay="sleeve", encrypted=enc, peer_name=H3, peer_nickname="host3",
                         attrs={"mtu": "1438", "name": "sleeve"}),
    )
    peers = (
        _peer(H1, "host1", 11, [(True, "192.168.77.2:6783", H2, "host2", True),
                                (False, "192.168.77.3:41234", H3, "host3", True)]),
        _peer(H2, "host2", 22, [(False, "192.168.77.1:50000", H1, "host1", True),
                                (False, "192.168.77.3:41235", H3, "host3", True)]),
        _peer(H3, "host3", 33, [(True, "192.168.77.1:6783", H1, "host1", True),
                                (True, "192.168.77.2:6783", H2, "host2", True)]),
    )
    router = RouterStatus(
        version="0.1.0", protocol="weave-router", protocol_min_version=1,
        protocol_max_version=1, name=H1, nickname="host1", port=6783, encryption=password,
        peer_discovery=True, trusted_subnets=(), targets=("192.168.77.2",),
        connections=connections, peers=peers,
        unicast_routes={H3: H3, H2: H2}, broadcast_routes={H1: (H3, H2)}, conn_limit=200,
    )
    return Status(ready=ready, router=router)


def _with_connections(status: Status, *conns: ConnectionStatus) -> Status:
    return replace(status, router=replace(status.router, connections=conns))


STATUS_GOLDEN = """\
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
"""


def test_status_is_the_cli_md_layout() -> None:
    assert render_status(sample_status()) == STATUS_GOLDEN


def test_status_counts_every_state_in_weaves_order() -> None:
    conns = [ConnectionStatus(outbound=True, address=f"10.0.0.{i}:6783", state=state)
             for i, state in enumerate(
                 ["connecting", "failed", "established", "pending", "retrying", "pending"])]
    status = _with_connections(sample_status(password=True), *conns)
    router = replace(status.router, trusted_subnets=("10.0.0.0/8", "192.168.0.0/16"),
                     peer_discovery=False, targets=(),
                     peers=(replace(status.router.peers[0], connections=(
                         PeerConnection(True, "10.0.0.2:6783", H2, "host2", True),
                         PeerConnection(True, "10.0.0.3:6783", H3, "host3", False))),))
    text = render_status(replace(status, router=router))
    assert "     Encryption: enabled\n" in text
    assert "  PeerDiscovery: disabled\n" in text
    assert "        Targets: 0\n" in text
    assert ("    Connections: 6 (1 established, 2 pending, 1 retrying, 1 failed, 1 connecting)\n"
            in text)
    assert "          Peers: 1 (with 1 established, 1 pending connections)\n" in text
    assert " TrustedSubnets: 10.0.0.0/8, 192.168.0.0/16\n" in text


def test_status_with_no_connections_and_no_peer_connections() -> None:
    status = _with_connections(sample_status())
    router = replace(status.router, peers=(replace(status.router.peers[0], connections=()),))
    text = render_status(replace(status, router=router))
    assert "    Connections: 0\n" in text
    assert "          Peers: 1\n" in text


def test_targets_one_per_line() -> None:
    status = sample_status()
    assert render_targets(status) == "192.168.77.2\n"
    router = replace(status.router, targets=("a:1", "b", "[fe80::1]:6783"))
    assert render_targets(replace(status, router=router)) == "a:1\nb\n[fe80::1]:6783\n"
    assert render_targets(replace(status, router=replace(router, targets=()))) == ""


def test_connections_without_password_omit_encryption() -> None:
    assert render_connections(sample_status()) == (
        "-> 192.168.77.2:6783     established fastdp a6:66:4f:a5:8a:11(host2) mtu=1376\n"
        "<- 192.168.77.3:41234    established sleeve ce:31:e0:06:45:1a(host3) mtu=1438\n"
    )


def test_connections_with_password_show_encryption_column() -> None:
    status = sample_status(password=True)
    plain = ConnectionStatus(outbound=False, address="192.168.48.12:33866", state="pending",
                             overlay="fastdp", encrypted=False, peer_name="7e:21:4a:70:2f:45",
                             peer_nickname="host2")
    text = render_connections(_with_connections(status, *status.router.connections, plain))
    assert text == (
        "-> 192.168.77.2:6783     established encrypted   fastdp a6:66:4f:a5:8a:11(host2) "
        "mtu=1376\n"
        "<- 192.168.77.3:41234    established encrypted   sleeve ce:31:e0:06:45:1a(host3) "
        "mtu=1438\n"
        "<- 192.168.48.12:33866   pending     unencrypted fastdp 7e:21:4a:70:2f:45(host2)\n"
    )


def test_failed_retrying_and_connecting_lines() -> None:
    failed = ConnectionStatus(outbound=True, address="192.168.48.15:6783", state="failed",
                              info="dial tcp4 192.168.48.15:6783: no route to host",
                              retry="2015-08-06 18:55:38 UTC")
    never = replace(failed, info="cannot connect to ourself", retry="never")
    retrying = ConnectionStatus(outbound=True, address="192.168.48.14:6783", state="retrying",
                                info="dial tcp4 192.168.48.14:6783: no route to host")
    connecting = ConnectionStatus(outbound=True, address="192.168.48.16:6783",
                                  state="connecting")
    lines = [render_connection(c, password_set=True)
             for c in (retrying, failed, never, connecting)]
    assert lines == [
        "-> 192.168.48.14:6783    retrying    dial tcp4 192.168.48.14:6783: no route to host",
        "-> 192.168.48.15:6783    failed      dial tcp4 192.168.48.15:6783: no route to host, "
        "retry: 2015-08-06 18:55:38 UTC",
        "-> 192.168.48.15:6783    failed      cannot connect to ourself, retry: never",
        "-> 192.168.48.16:6783    connecting",
    ]


def test_pending_before_the_overlay_is_known() -> None:
    conn = ConnectionStatus(outbound=False, address="10.0.0.9:40000", state="pending",
                            peer_name=H2, peer_nickname="host2")
    assert render_connection(conn, password_set=False) == (
        "<- 10.0.0.9:40000        pending     a6:66:4f:a5:8a:11(host2)"
    )


def test_peers_layout() -> None:
    assert render_peers(sample_status()) == (
        "5a:b7:04:1c:2d:8e(host1)\n"
        "   -> 192.168.77.2:6783     a6:66:4f:a5:8a:11(host2)              established\n"
        "   <- 192.168.77.3:41234    ce:31:e0:06:45:1a(host3)              established\n"
        "a6:66:4f:a5:8a:11(host2)\n"
        "   <- 192.168.77.1:50000    5a:b7:04:1c:2d:8e(host1)              established\n"
        "   <- 192.168.77.3:41235    ce:31:e0:06:45:1a(host3)              established\n"
        "ce:31:e0:06:45:1a(host3)\n"
        "   -> 192.168.77.1:6783     5a:b7:04:1c:2d:8e(host1)              established\n"
        "   -> 192.168.77.2:6783     a6:66:4f:a5:8a:11(host2)              established\n"
    )


def test_peers_pending_connection() -> None:
    status = sample_status()
    lonely = _peer(H2, "host2", 1, [(True, "10.0.0.1:6783", H1, "host1", False)])
    text = render_peers(replace(status, router=replace(status.router, peers=(lonely,))))
    assert text.splitlines()[1].endswith(" pending")


def _ipam(*shares: tuple[str, str, int, bool, int | None]) -> IpamStatistics:
    return IpamStatistics(
        status="ready", range="10.32.0.0/12", default_subnet="10.32.0.0/12", max_ips=1 << 20,
        ips={}, shares=tuple(PeerShare(name=n, nickname=k, ips=i, reachable=r, active=a)
                             for n, k, i, r, a in shares),
        unreachable_peers=sum(1 for s in shares if not s[3]), pending_allocates=0,
        pending_claims=0, quorum=None, known=None, counters={},
    )


P1, P2, P3 = "7a:77:72:00:00:01", "7a:77:72:00:00:02", "7a:77:72:00:00:03"


def test_ipam_shares_are_weaves_bytes_ours_first() -> None:
    """As Go Weave 2.8.1 printed them (reference ipam3/h2 and failures/h1): ours first with
    ``(N active)``, the others after; ``%-37v %8d IPs (%04.1f%% of total) %s``."""
    h2 = _ipam((P1, "wrw-h1", 393216, True, None), (P2, "wrw-h2", 524288, True, 1),
               (P3, "wrw-h3", 131072, True, None))
    assert render_ipam_shares(h2) == (
        "7a:77:72:00:00:02(wrw-h2)               524288 IPs (50.0% of total) (1 active)\n"
        "7a:77:72:00:00:01(wrw-h1)               393216 IPs (37.5% of total) \n"
        "7a:77:72:00:00:03(wrw-h3)               131072 IPs (12.5% of total) \n")
    h1 = _ipam((P1, "wrw-h1", 524288, True, 1), (P2, "wrw-h2", 524288, True, None))
    assert render_ipam_shares(h1) == (
        "7a:77:72:00:00:01(wrw-h1)               524288 IPs (50.0% of total) (1 active)\n"
        "7a:77:72:00:00:02(wrw-h2)               524288 IPs (50.0% of total) \n")


def test_ipam_shares_unreachable_and_small_percentages() -> None:
    stats = _ipam((P1, "wrw-h1", 393216, True, 1), (P2, "wrw-h2", 524288, True, None),
                  (P3, "wrw-h3", 131072, False, None), ("7a:77:72:00:00:04", "h4", 1024, True,
                                                        None))
    lines = render_ipam_shares(stats).splitlines(keepends=True)
    assert lines[0] == ("7a:77:72:00:00:01(wrw-h1)               393216 IPs (37.5% of total) "
                        "(1 active)\n")
    assert ("7a:77:72:00:00:03(wrw-h3)               131072 IPs (12.5% of total) "
            "- unreachable!\n") in lines
    assert "7a:77:72:00:00:04(h4)                     1024 IPs (00.1% of total) \n" in lines


def test_status_says_whether_fastdp_runs_and_why_not() -> None:
    on = {"enabled": True, "peers_on_fastdp": 1, "peers": {H2: {}, H3: {}}}
    off = {"enabled": False, "disabled_reason": "--password: this kernel has no ESP or "
           "WireGuard, so encrypted traffic stays on the sleeve", "peers": {}}
    assert render_status(replace(sample_status(), fastdp=on)).endswith(
        " TrustedSubnets: none\n         FastDP: enabled (1 of 2 peers)\n")
    text = render_status(replace(sample_status(), fastdp=off))
    assert "         FastDP: disabled (--password: this kernel has no ESP or WireGuard" in text
