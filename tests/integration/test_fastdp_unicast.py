"""fastdp unicast goes to one peer only, and the bridge filter repairs itself.

Three routers on fastdp (``router/testing/netns.py`` hosts, containers at 172.31.1.N):

* once container 1 and container 2 have exchanged a frame, the VXLAN devices have learned
  where each other's MACs are, so an iperf3 stream from 1 to 2 crosses host3's
  ``vxlan-6784`` hardly at all (before kernel learning, every unicast frame went to every
  fastdp peer's flood entry: host3 received the whole stream);
* UDP 6784 dropped between host1 and host2: they fall back to sleeve, host1 keeps no
  flood or learned entry towards host2 (only its heartbeat MAC's, which goes on probing)
  and the containers keep pinging each other;
* ``nft flush ruleset`` on a host: its router puts the ``bridge weave-fastdp`` table back
  within 3 s (it hears nftables change; its repair pass comes every 10 s).
"""

from __future__ import annotations

import json
import time

import pytest

from router.overlay.fastdp.plan import heartbeat_mac
from router.testing.netns import Host, run_parallel, wait_until
from tests.integration.conftest import MeshFactory
from tests.integration.test_fastdp_router import (
    VXLAN,
    _attach,
    _block_vxlan_from,
    _fastdp,
    _ping,
    _pings,
    _wait_overlay,
    container_ip,
)

pytestmark = pytest.mark.integration


def _rx_bytes(host: Host) -> int:
    shown = host.run(["ip", "-s", "-j", "link", "show", VXLAN]).stdout
    return int(json.loads(shown)[0]["stats64"]["rx"]["bytes"])


def _fdb_to(host: Host, dst: str) -> set[str]:
    """The MACs of ``host``'s VXLAN FDB entries that send to ``dst``."""
    rows = json.loads(host.run(["bridge", "-j", "fdb", "show", "dev", VXLAN]).stdout or "[]")
    return {r["mac"] for r in rows if r.get("dst") == dst}


def _peer_name(host: Host) -> str:
    out = host.router("report", "-f", "{{.Router.Name}}").stdout.strip()
    assert out, "no peer name in the report"
    return out


def _iperf(client: object, server: object, ip: str) -> int:
    """Bytes an iperf3 of 2 s from ``client`` to ``server`` at ``ip`` delivered."""
    proc = server.popen(["iperf3", "-s", "-1", "--forceflush", "-B", ip])  # type: ignore[attr-defined]
    assert proc.stdout is not None
    for _ in range(3):
        if "listening" in proc.stdout.readline():
            break
    out = client.run(["iperf3", "-c", ip, "-t", "2", "-J"], timeout=30)  # type: ignore[attr-defined]
    proc.wait(timeout=10)
    return int(json.loads(out.stdout)["end"]["sum_received"]["bytes"])


def test_unicast_reaches_only_its_peer_and_fallback_leaves_no_entry(
        make_mesh: MeshFactory) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    mesh.launch_star()
    mesh.wait_full_mesh(timeout=30)
    c1, c2, _c3 = _attach(mesh)
    run_parallel(*(lambda h=h: _wait_overlay(h, "fastdp", 2, timeout=30) for h in mesh.hosts))
    _pings(c1, container_ip(2))
    _pings(c2, container_ip(1))
    time.sleep(1.5)  # the bridges and VXLAN devices have seen both MACs

    before = _rx_bytes(h3)
    sent = _iperf(c1, c2, container_ip(2))
    on_h3 = _rx_bytes(h3) - before
    print(f"iperf3 h1->h2 {sent} bytes; h3's {VXLAN} received {on_h3} bytes")
    assert sent > 10 << 20, sent
    assert on_h3 < sent * 0.03, (on_h3, sent)

    # host1 <-> host2 fall back to sleeve: host1 keeps nothing that sends to host2 but
    # host2's heartbeat MAC (probing goes on), and the containers still reach each other.
    _block_vxlan_from(h2, h1)
    for h in (h1, h2):
        _wait_overlay(h, "sleeve", 1, timeout=20)
    hb2 = heartbeat_mac(_peer_name(h2))
    wait_until("host1's entries to host2 gone", lambda: (
        _fdb_to(h1, h2.ip) == {hb2}, str(_fdb_to(h1, h2.ip))), timeout=15)
    _pings(c1, container_ip(2))
    assert _ping(c1, container_ip(2), "-i", "0.2", count=10).returncode == 0
    assert _fdb_to(h1, h2.ip) == {hb2}


def _int(value: object) -> int:
    assert isinstance(value, int), value
    return value


def test_bridge_filter_comes_back_after_a_ruleset_flush(make_mesh: MeshFactory) -> None:
    mesh = make_mesh(1)
    [host] = mesh.hosts
    host.launch()
    wait_until("the filter table", lambda: (
        "weave-fastdp" in host.run(["nft", "list", "tables"]).stdout, ""), timeout=20)
    repairs = _fastdp(host)["filter_repairs"]
    assert isinstance(repairs, int)
    # The router hears the flush and is quicker than a second nft run here would be, so
    # what shows it was gone and put back is the router's count of repairs.
    start = time.monotonic()
    host.run(["nft", "flush", "ruleset"])
    wait_until("the filter table put back", lambda: (
        "weave-fastdp" in host.run(["nft", "list", "tables"]).stdout
        and _int(_fastdp(host)["filter_repairs"]) > repairs, ""), timeout=3)
    back = time.monotonic() - start
    out = host.run(["nft", "list", "table", "bridge", "weave-fastdp"]).stdout
    assert "0x88b5" in out and "vethwe-pcap" in out, out
    print(f"filter back after {back:.1f} s")
