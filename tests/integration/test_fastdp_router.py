"""fastdp in real routers: the kernel's VXLAN device carries container traffic.

Hosts in namespaces (``router/testing/netns.py``) run ``weave-router launch``; bare
container namespaces are attached at 172.31.1.N/16 (container N on host N). Checked:

* two hosts show ``established fastdp ... mtu=1376``; an iperf3 between their
  containers leaves the sleeve's counters still, and the VXLAN device counts it;
* ``--no-fastdp`` stays on sleeve (report: "disabled by flag"), ``--password`` on the
  encrypted sleeve ("encryption required");
* UDP 6784 dropped by nftables in one host's own table: the connection shows ``sleeve``
  within seconds while pings go on; unblocked, it is back on fastdp by itself;
* a router stop keeps the device and fastdp traffic flowing; ``reset`` removes the device,
  its FDB entries and the bridge filter;
* a mixed mesh (host1 --no-fastdp, host2 and host3 fastdp): one broadcast datagram from
  each container reaches every other container exactly once.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from router.testing.netns import BareContainer, Host, Mesh, run_parallel, wait_until
from tests.integration.conftest import MeshFactory

pytestmark = pytest.mark.integration

PREFIXLEN = 16
BROADCAST = "172.31.255.255"
PORT = 5007
VXLAN = "vxlan-6784"


def container_ip(n: int) -> str:
    return f"172.31.1.{n}"


def _attach(mesh: Mesh) -> list[BareContainer]:
    containers = [mesh.add_bare_container(host) for host in mesh.hosts]
    run_parallel(*(functools.partial(c.attach, f"ip:{container_ip(n)}/{PREFIXLEN}")
                   for n, c in enumerate(containers, 1)))
    return containers


def _overlays(host: Host, text: str | None = None) -> list[str]:
    """The overlay column of each established connection of ``status connections``."""
    text = host.status("connections") if text is None else text
    return re.findall(r"established (?:encrypted\s+)?(\w+) ", text)


def _wait_overlay(host: Host, overlay: str, n: int, timeout: float) -> str:
    def probe() -> tuple[bool, str]:
        text = host.status("connections")
        return _overlays(host, text).count(overlay) == n, text
    return host.wait(f"{n} connections on {overlay}", probe, timeout=timeout)


def _fastdp(host: Host) -> dict[str, object]:
    out = host.router("report", "-f", "{{json .Router.OverlayDiagnostics.fastdp}}").stdout
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


def _sleeve_frames(host: Host) -> int:
    """Frames the sleeve sent to and received from peers (the TAP also sees the
    containers' own multicast, ND and MLD, which the bridge floods to every port: those
    are captured and, with every peer on fastdp, sent nowhere)."""
    out = host.router("report", "-f", "{{json .Router.OverlayDiagnostics.sleeve}}").stdout
    stats = json.loads(out)
    return sum(int(p["frames_out"]) + int(p["frames_in"]) for p in stats["peers"].values())


def _vxlan_packets(host: Host) -> int:
    shown = host.run(["ip", "-s", "-j", "link", "show", VXLAN]).stdout
    stats = json.loads(shown)[0]["stats64"]
    return int(stats["tx"]["packets"]) + int(stats["rx"]["packets"])


def _ping(c: BareContainer, ip: str, *args: str,
          count: int = 1) -> subprocess.CompletedProcess[str]:
    return c.run(["ping", "-q", "-c", str(count), "-W", "1", *args, ip], check=False,
                 timeout=60)


def _pings(c: BareContainer, ip: str) -> None:
    wait_until(f"ping {ip}", lambda: (_ping(c, ip).returncode == 0, ""), timeout=20)


@pytest.fixture
def pair(make_mesh: MeshFactory) -> Iterator[tuple[Mesh, list[BareContainer]]]:
    mesh = make_mesh(2)
    mesh.launch_star()
    mesh.wait_full_mesh(timeout=30)
    containers = _attach(mesh)
    yield mesh, containers


def test_pair_on_fastdp_keeps_the_sleeve_still_and_survives_block_restart_reset(
        pair: tuple[Mesh, list[BareContainer]]) -> None:
    mesh, (c1, c2) = pair
    h1, h2 = mesh.hosts
    for h in (h1, h2):
        text = _wait_overlay(h, "fastdp", 1, timeout=30)
        assert re.search(r"established fastdp \S+\(host\d\) mtu=1376", text), text
    _pings(c1, container_ip(2))
    time.sleep(1.5)  # ARP settled, the bridge learned where the MACs are

    before = [_sleeve_frames(h) for h in (h1, h2)]
    vx_before = _vxlan_packets(h1)
    server = c2.popen(["iperf3", "-s", "-1", "--forceflush", "-B", container_ip(2)])
    assert server.stdout is not None
    for _ in range(3):  # "-----", "Server listening on 5201 ...", "-----"
        if "listening" in server.stdout.readline():
            break
    client = c1.run(["iperf3", "-c", container_ip(2), "-t", "2", "-J"], timeout=30)
    server.wait(timeout=10)
    sent = json.loads(client.stdout)["end"]["sum_received"]["bytes"]
    assert sent > 10 << 20, sent  # at least 10 MiB crossed in 2 s
    assert [_sleeve_frames(h) for h in (h1, h2)] == before  # never touched the router
    assert _vxlan_packets(h1) - vx_before >= sent // 65536  # through the VXLAN device
    peers = _fastdp(h1)["peers"]
    assert isinstance(peers, dict)
    assert [p["overlay"] for p in peers.values()] == ["fastdp"]

    # Block UDP 6784 in host2's own table: host2 then host1 fall back; pings go on.
    h2.run(["nft", "-f", "-"], input=(
        "table inet wrtest {\n chain input { type filter hook input priority 0;"
        " udp dport 6784 drop; }\n}\n"))
    pinger = c1.popen(["ping", "-i", "0.2", "-W", "1", container_ip(2)])
    try:
        start = time.monotonic()
        for h in (h1, h2):
            _wait_overlay(h, "sleeve", 1, timeout=20)
        fell_back = time.monotonic() - start
        reasons = [p["reason"] for p in _fastdp(h1)["peers"].values()]  # type: ignore[union-attr]
        assert reasons and reasons[0].startswith("heartbeats lost since "), reasons
        _pings(c1, container_ip(2))
        h2.run(["nft", "delete", "table", "inet", "wrtest"])
        start = time.monotonic()
        for h in (h1, h2):
            _wait_overlay(h, "fastdp", 1, timeout=60)
        came_back = time.monotonic() - start
        time.sleep(3)  # pings go on over fastdp
    finally:
        pinger.send_signal(2)  # SIGINT: ping prints its summary
        out, _ = pinger.communicate(timeout=10)
    sent = int(re.findall(r"(\d+) packets transmitted", out)[0])
    answered = {int(n) for n in re.findall(r"icmp_seq=(\d+) ", out)}
    lost = sorted(set(range(1, sent + 1)) - answered)
    # Lost only while the block is being noticed (the 5 s heartbeat timeout, at 0.2 s a
    # ping) and at the switch back; nothing after it.
    assert len(lost) <= 45 and all(n < sent - 10 for n in lost), (sent, lost, fell_back,
                                                                   came_back)
    assert fell_back < 15 and came_back < 60, (fell_back, came_back)

    # stop keeps the device and the kernel path (host1 keeps its entries for a grace);
    # a new router takes the device over and goes back to fastdp.
    h2.router("stop")
    h2.wait_stopped()
    assert VXLAN in h2.links()
    _pings(c1, container_ip(2))
    h2.launch(h1.ip)
    for h in (h1, h2):
        _wait_overlay(h, "fastdp", 1, timeout=30)
    _pings(c1, container_ip(2))
    h2.router("reset")
    assert VXLAN not in h2.links()
    assert h2.run(["bridge", "fdb", "show"]).stdout.count("dst ") == 0
    tables = h2.run(["nft", "list", "tables"]).stdout
    assert "weave-fastdp" not in tables, tables


def test_no_fastdp_and_password_stay_on_sleeve(make_mesh: MeshFactory) -> None:
    mesh = make_mesh(4)
    h1, h2, h3, h4 = mesh.hosts
    run_parallel(lambda: h1.launch("--no-fastdp"), lambda: h3.launch("--password", "pw"))
    run_parallel(lambda: h2.launch(h1.ip), lambda: h4.launch("--password", "pw", h3.ip))
    run_parallel(*(lambda h=h: h.wait_established(1, timeout=30) for h in mesh.hosts))
    assert _overlays(h1) == ["sleeve"] and _overlays(h2) == ["sleeve"]
    assert VXLAN not in h1.links()
    reason = next(iter(_fastdp(h1)["peers"].values()))["reason"]  # type: ignore[union-attr]
    assert reason.startswith("disabled by flag"), reason
    reason = next(iter(_fastdp(h2)["peers"].values()))["reason"]  # type: ignore[union-attr]
    assert reason == "no fastdp offered", reason
    text = h3.status("connections")
    assert "established encrypted   sleeve" in text, text
    assert "FastDP: disabled (--password: this kernel has no ESP or WireGuard" in h3.status()
    assert VXLAN not in h3.links()
    fastdp = _fastdp(h4)
    assert "no ESP or WireGuard" in str(fastdp["disabled_reason"])
    reason = next(iter(fastdp["peers"].values()))["reason"]  # type: ignore[union-attr]
    assert reason == "encryption required", reason


RECEIVER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[1])))
s.settimeout(0.5)
print("ready", flush=True)
got = []
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        got.append(s.recv(100).decode())
    except socket.timeout:
        pass
print(" ".join(sorted(got)), flush=True)
"""

SENDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""


def _broadcast_once_each(containers: list[BareContainer]) -> list[list[str]]:
    """Each container sends one broadcast datagram; what each container received."""
    listen = 6.0
    receivers = [c.popen(["python3", "-c", RECEIVER, str(PORT), str(listen)])
                 for c in containers]
    try:
        for r in receivers:
            assert r.stdout is not None and r.stdout.readline().strip() == "ready"
        for n, c in enumerate(containers, 1):
            c.run(["python3", "-c", SENDER, BROADCAST, str(PORT), f"from{n}"])
        return [r.communicate(timeout=listen + 10)[0].split() for r in receivers]
    finally:
        for r in receivers:
            if r.poll() is None:
                r.kill()


def _block_vxlan_from(host: Host, source: Host) -> None:
    """Drop UDP 6784 from ``source`` in ``host``'s own nftables table."""
    host.run(["nft", "-f", "-"], input=(
        "table inet wrtest {\n chain input { type filter hook input priority 0;"
        f" ip saddr {source.ip} udp dport 6784 drop; }}\n}}\n"))


def test_mixed_mesh_broadcast_reaches_every_container_exactly_once(
        make_mesh: MeshFactory) -> None:
    """host1 --no-fastdp; host2..4 fastdp, but UDP 6784 from host3 to host4 dropped:
    host3-host4 stay on sleeve, host2-host3 and host2-host4 are on fastdp."""
    mesh = make_mesh(4)
    h1, h2, h3, h4 = mesh.hosts
    _block_vxlan_from(h4, h3)
    h1.launch("--no-fastdp")
    run_parallel(*(lambda h=h: h.launch(h1.ip) for h in (h2, h3, h4)))
    mesh.wait_full_mesh(timeout=30)
    containers = _attach(mesh)
    _wait_overlay(h2, "fastdp", 2, timeout=30)
    for h in (h3, h4):
        _wait_overlay(h, "fastdp", 1, timeout=30)
    assert _overlays(h1) == ["sleeve"] * 3
    reasons = {p["address"]: p["reason"]
               for p in _fastdp(h4)["peers"].values()}  # type: ignore[union-attr]
    assert reasons[h3.ip] == "waiting for fastdp heartbeats", reasons
    for i, c in enumerate(containers):  # every container reaches every other
        for n in range(1, 5):
            if n != i + 1:
                _pings(c, container_ip(n))

    outputs = _broadcast_once_each(containers)
    for got in outputs:
        # Every container's datagram exactly once (its own comes back through loopback).
        assert sorted(got) == ["from1", "from2", "from3", "from4"], outputs


def test_relay_host_carries_a_pair_that_is_not_connected(make_mesh: MeshFactory) -> None:
    """host1 <- host2 <- host3 without discovery, all fastdp: host1 and host3 talk through
    host2, and a broadcast reaches each container once."""
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    h1.launch("--no-discovery")
    run_parallel(lambda: h2.launch("--no-discovery", h1.ip),
                 lambda: h3.launch("--no-discovery", h2.ip))
    run_parallel(lambda: h1.wait_established(1, timeout=30),
                 lambda: h2.wait_established(2, timeout=30),
                 lambda: h3.wait_established(1, timeout=30))
    mesh.wait_routes(timeout=30)
    containers = _attach(mesh)
    _wait_overlay(h2, "fastdp", 2, timeout=30)
    for h in (h1, h3):  # both ends of each pair: until then a frame can take the old path
        _wait_overlay(h, "fastdp", 1, timeout=30)
    _pings(containers[0], container_ip(3))
    _pings(containers[2], container_ip(1))
    outputs = _broadcast_once_each(containers)
    for got in outputs:
        assert sorted(got) == ["from1", "from2", "from3"], outputs
