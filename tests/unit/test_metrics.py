"""router/metrics/: the collector against hand-built Status snapshots (Weave's names and
label sets as in the Go Weave captures), promtool on the exposition, and the metrics
server over real HTTP on 127.0.0.1 (slow clients, wrong paths, a port in use)."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from dataclasses import replace

import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.dns.entries import Entry
from router.dns.service import DnsStatistics
from router.ipam import IpamStatistics, PeerShare
from router.mesh.names import PeerName
from router.metrics.collector import RouterCollector, dns_entries_metric, flows_metric
from router.metrics.service import make_registry, serve_metrics
from router.status import ConnectionStatus, Status
from tests.unit.api_helpers import Client, request
from tests.unit.test_layouts import H2, H3, sample_status

# go-weave-2.8.1/failures/h1/metrics.txt (shared/reference), its weave_connections family
FAILURES_H1 = """\
# HELP weave_connections Number of peer-to-peer connections.
# TYPE weave_connections gauge
weave_connections{encryption="",state="established",type="sleeve"} 0
weave_connections{encryption="",state="failed",type="unknown"} 1
weave_connections{encryption="yes",state="established",type="sleeve"} 1
weave_connections{encryption="yes",state="failed",type="unknown"} 0
"""
# go-weave-2.8.1/*/h*/metrics.txt: the one family promtool's lint complains about
WEAVE_IPAM = """\
# HELP weave_ipam_unreachable_count Number of unreachable peers.
# TYPE weave_ipam_unreachable_count gauge
weave_ipam_unreachable_count 0
"""
H2_INT = int(H2.replace(":", ""), 16)


def _ipam(*, unreachable: int = 0) -> IpamStatistics:
    shares = (PeerShare("aa:00:00:00:00:01", "host1", 1 << 19, True, 3),
              PeerShare("aa:00:00:00:00:02", "host2", (1 << 19) - unreachable, True, None),
              PeerShare("aa:00:00:00:00:03", "host3", unreachable, False, None))
    return IpamStatistics(
        status="ready", range="10.32.0.0/12", default_subnet="10.32.0.0/12",
        max_ips=1 << 20, ips={"local-used": 3, "local-free": (1 << 19) - 3}, shares=shares,
        unreachable_peers=1 if unreachable else 0, pending_allocates=2, pending_claims=1,
        quorum=None, known=None, counters={})


def _dataplane() -> dict[str, object]:
    return {"frames_captured": 10, "frames_delivered": 20, "frames_relayed": 1, "upcalls": 7,
            "macs": 4, "mac_table_full": 0, "icmp_frag_needed": 2, "egressed_by_rx_thread": 0,
            "drops": {"bad_auth": 5, "no_route": 1},
            "peers": {H2_INT: {"frames_out": 11, "bytes_out": 1100, "datagrams_out": 9,
                               "frames_in": 21, "bytes_in": 2100, "datagrams_in": 19}}}


def _status(**changes: object) -> Status:
    status = sample_status(password=True)
    router = replace(status.router, counters={"connection_terminations": 4,
                                              "handshake_failures": 2})
    return replace(status, router=router, ipam=_ipam(), dataplane=_dataplane(), **changes)


def _scrape(status: Status, collector: RouterCollector | None = None) -> str:
    collector = collector or RouterCollector(lambda: status)
    return generate_latest(make_registry(collector)).decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_weave_names_labels_and_values() -> None:
    got = _samples(_scrape(_status()))
    assert got[("weave_connections", (("encryption", "yes"), ("state", "established"),
                                      ("type", "fastdp")))] == 1
    assert got[("weave_connections", (("encryption", ""), ("state", "established"),
                                      ("type", "sleeve")))] == 0
    assert got[("weave_connection_terminations_total", ())] == 4
    assert got[("weave_mesh_events_total", (("event", "handshake_failures"),))] == 2
    assert got[("weave_ips", (("state", "local-used"),))] == 3
    assert got[("weave_max_ips", ())] == 1 << 20
    assert got[("weave_ipam_pending_allocates", ())] == 2
    assert got[("weave_ipam_pending_claims", ())] == 1
    assert got[("weave_ipam_unreachable_count", ())] == 0
    assert got[("weave_sleeve_frames_total", (("direction", "in"), ("peer", H2)))] == 21
    assert got[("weave_sleeve_bytes_total", (("direction", "out"), ("peer", H2)))] == 1100
    assert got[("weave_dropped_frames_total", (("reason", "bad_auth"),))] == 5
    assert got[("weave_dataplane_frames_total", (("stage", "delivered"),))] == 20
    assert got[("process_open_fds", ())] > 0  # process metrics, as Weave's process_*


def test_unreachable_percentage_is_of_the_whole_range() -> None:
    status = replace(_status(), ipam=_ipam(unreachable=1 << 17))  # 1/8 of the range
    got = _samples(_scrape(status))
    assert got[("weave_ipam_unreachable_count", ())] == 1
    assert got[("weave_ipam_unreachable_percentage", ())] == 12.5  # as ipam3-h3-stopped


def test_connections_as_go_weave_prints_them() -> None:
    """failures/h1: a failed target and an encrypted sleeve connection give exactly the
    four weave_connections series of the capture."""
    conns = (ConnectionStatus(outbound=True, address="192.168.78.99:6783", state="failed",
                              info="no route to host", encrypted=None),
             ConnectionStatus(outbound=True, address="192.168.78.2:6783", state="established",
                              overlay="sleeve", encrypted=True, peer_name=H3))
    status = replace(_status(), router=replace(_status().router, connections=conns))
    got = {k: v for k, v in _samples(_scrape(status)).items() if k[0] == "weave_connections"}
    assert got == {k: v for k, v in _samples(FAILURES_H1).items()
                   if k[0] == "weave_connections"}


DNS_ENTRY = Entry("c1.weave.local.", PeerName(1), "c1", ipaddress.IPv4Address("10.32.0.1"))


def test_dns_entries_are_the_live_entries() -> None:
    dns = DnsStatistics(domain="weave.local.", address="169.254.255.53:53", upstream=(),
                        ttl=1, entries=(DNS_ENTRY, DNS_ENTRY), all_entries=(DNS_ENTRY,) * 3)
    assert _samples(_scrape(_status(dns=dns)))[("weave_dns_entries", ())] == 2
    assert ("weave_dns_entries", ()) not in _samples(_scrape(_status(dns=None)))


def test_no_ipam_no_dataplane_only_the_router_family() -> None:
    text = _scrape(replace(_status(), ipam=None, dataplane=None, dns=None))
    names = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("weave")}
    assert names == {"weave_connections", "weave_connection_terminations", "weave_mesh_events"}


def test_sources_add_dns_entries_and_flows_at_each_scrape() -> None:
    entries = [1]
    collector = RouterCollector(_status)
    collector.add_source(lambda: [dns_entries_metric(entries[0]), flows_metric(7)])
    assert _samples(_scrape(_status(), collector))[("weave_dns_entries", ())] == 1
    entries[0] = 5  # read live, not at registration
    got = _samples(_scrape(_status(), collector))
    assert (got[("weave_dns_entries", ())], got[("weave_flows", ())]) == (5, 7)


FASTDP_ON = {"enabled": True, "disabled_reason": "", "device": "vxlan-6784", "mtu": 1376,
             "peers_on_fastdp": 2, "kernel_passes": 3, "flood_entries": 2,
             "learned_entries": 5, "peers": {}}


def test_weave_flows_are_the_devices_forwarding_entries_while_fastdp_runs() -> None:
    """Flood entries plus learned MACs; no family with fastdp off or before its device
    (Go emits weave_flows only with fastdp too)."""
    assert _samples(_scrape(_status(fastdp=FASTDP_ON)))[("weave_flows", ())] == 7
    off = {"enabled": False, "disabled_reason": "--no-fastdp", "peers": {}}
    no_device = {k: v for k, v in FASTDP_ON.items()
                 if k not in ("kernel_passes", "flood_entries", "learned_entries")}
    for fastdp in (None, off, no_device):
        assert ("weave_flows", ()) not in _samples(_scrape(_status(fastdp=fastdp))), fastdp


def _promtool(text: str) -> tuple[int, str]:
    proc = subprocess.run(["promtool", "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_promtool_check_metrics_finds_only_weaves_own_name() -> None:
    """Clean but for one lint, which Go Weave's output has too: Weave's name
    ``weave_ipam_unreachable_count`` ends in ``_count`` (kept: dashboards use it)."""
    lint = ('weave_ipam_unreachable_count non-histogram and non-summary metrics should not '
            'have "_count" suffix\n')
    assert _promtool(_scrape(_status())) == (3, lint)
    weave_ipam = "".join(line + "\n" for line in WEAVE_IPAM.splitlines())
    assert _promtool(weave_ipam) == (3, lint)  # Go Weave 2.8.1's lines
    without = _scrape(replace(_status(), ipam=None))
    assert _promtool(without) == (0, "")


async def test_server_serves_metrics_and_status_despite_a_slow_client(
        nursery: trio.Nursery) -> None:
    status = _status()
    _, port = await nursery.start(serve_metrics, RouterCollector(lambda: status),
                                  lambda: status, "127.0.0.1", 0)
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]  # say nothing
    await idle[0].send_all(b"GET /metr")  # half a head, then silence
    metrics = await request(port, "GET", "/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "weave_connections{" in metrics.text
    text = await request(port, "GET", "/status")
    assert (text.status, "Service: router" in text.text) == (200, True)
    assert (await request(port, "GET", "/status/connections")).text.startswith("->")
    assert (await request(port, "GET", "/nope")).status == 404
    assert (await request(port, "POST", "/metrics")).status == 405
    client = await Client.open(port)
    page = await client.request("GET", "/metrics", headers=[("Origin", "http://evil")])
    assert page.status == 403  # a web page may not read it (the API's guard)
    for stream in idle:
        await stream.aclose()


async def test_status_is_503_until_ready(nursery: trio.Nursery) -> None:
    status = replace(_status(), ready=False)
    _, port = await nursery.start(serve_metrics, RouterCollector(lambda: status),
                                  lambda: status, "127.0.0.1", 0)
    assert (await request(port, "GET", "/status")).status == 503
    assert (await request(port, "GET", "/metrics")).status == 200


async def test_port_in_use_is_an_os_error(nursery: trio.Nursery) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = _status()
        with pytest.raises(OSError, match="Address already in use"):
            await nursery.start(serve_metrics, RouterCollector(lambda: status),
                                lambda: status, "127.0.0.1", port)
