"""A sniffed sleeve datagram or heartbeat resent with a forged counter, against real routers.

Issue 9 item 5: on an unencrypted sleeve, one datagram captured on the underlay and
resent with its counter raised by 2**20 made the receiving router drop every later
frame of that direction as "replay", for good, while status still said established.
Here two hosts run ``weave-router`` (a third host on the LAN runs none: a stranger's
address), host 2 captures a real datagram from host 1 on its ``eth0``, and it is sent
again: with the counter raised, spoofed from host 1's address and port (a raw IPv4
packet from host 1's namespace), from the stranger, and unchanged (a replay). Pings go
on working and ``weave-router report`` counts the drops.

The same for a heartbeat (type 1, handled by the sleeve's Python paths): before the fix a
forged counter made host 2 drop host 1's real heartbeats as replays until the path timed
out and the connection was closed, and a forged heartbeat from the stranger moved host
2's heartbeats (and frames) to the stranger. Here the connection has to outlive two
heartbeat timeouts unchanged (the routers run with short heartbeat timers, set through
``WEAVE_ROUTER_TIMINGS``, so that takes seconds rather than minutes).
"""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Iterator

import pytest

from router.testing.namespace import wait_until
from router.testing.netns import Host, Mesh, Namespace
from tests.integration.test_sleeve import PREFIXLEN, assert_pings, capture, container_ip

pytestmark = pytest.mark.integration

SLEEVE_PORT = 6783
PASSWORD = "replay-s3cret"
SEND = """
import socket, struct, sys
payload, src, dst, sport = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
if sport:  # a raw IPv4 packet with a forged source address and port
    udp = struct.pack(">HHHH", sport, 6783, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(ip + udp, (dst, 0))
else:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, (dst, 6783))
"""


HEARTBEAT_TIMEOUT = 8.0  # s: a silent path fails after this
HEARTBEAT_INTERVAL = 2.0  # s: between heartbeats once established
TIMINGS = {"WEAVE_ROUTER_TIMINGS": f"udp_heartbeat_slow={HEARTBEAT_INTERVAL},"
                                   f"udp_heartbeat_timeout={HEARTBEAT_TIMEOUT}"}


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Mesh, bool]]:
    with Mesh.build(n_hosts=3) as mesh:
        h1, h2, _ = mesh.hosts
        # the sleeve's datagrams are what is forged (fastdp: test_fastdp_router.py)
        args = ("--no-fastdp", *(("--password", PASSWORD) if request.param else ()))
        h1.launch(*args, env=TIMINGS)
        h2.launch(*args, h1.ip, env=TIMINGS)
        h1.wait_established(1, timeout=30)
        h2.wait_established(1, timeout=30)
        mesh.wait_routes(n=2, timeout=30)
        for n, host in enumerate((h1, h2), 1):
            mesh.add_bare_container(host).attach(f"ip:{container_ip(n)}/{PREFIXLEN}")
        yield mesh, request.param


def sniff(mesh: Mesh) -> bytes:
    """A frames datagram (type 2) from host 1 as host 2's eth0 receives it."""
    h1, h2, _ = mesh.hosts
    c1 = mesh.bare_containers[0]
    with capture(h2, "eth0", f"udp and src host {h1.ip} and dst port {SLEEVE_PORT}",
                 mesh.run_dir / "sniffed.pcap") as packets:
        assert_pings(c1, container_ip(2), count=2, mesh=mesh)
    for packet in packets:
        ihl = (packet[14] & 15) * 4
        payload = packet[14 + ihl + 8:]
        if payload[1:2] == b"\x02":
            return payload
    raise AssertionError(f"no frames datagram among {len(packets)} captured")


def send(ns: Namespace, payload: bytes, src: str, dst: str, sport: int = 0) -> None:
    ns.run([sys.executable, "-c", SEND, payload.hex(), src, dst, str(sport)])


def raised(datagram: bytes, by: int) -> bytes:
    (counter,) = struct.unpack_from(">Q", datagram, 12)
    return datagram[:12] + struct.pack(">Q", counter + by) + datagram[20:]


def drops(host: Host) -> dict[str, int]:
    report = json.loads(host.router("report").stdout)
    counted: dict[str, int] = report["Router"]["OverlayDiagnostics"]["sleeve"]["drops"]
    return counted


def test_a_forged_counter_jump_leaves_the_sleeve_working(pair: tuple[Mesh, bool]) -> None:
    mesh, encrypted = pair
    h1, h2, stranger = mesh.hosts
    c1 = mesh.bare_containers[0]
    real = sniff(mesh)
    before = drops(h2)
    send(h1, raised(real, 1 << 20), h1.ip, h2.ip, sport=SLEEVE_PORT)  # spoofed
    send(stranger, raised(real, (1 << 20) + 1), stranger.ip, h2.ip)
    send(h1, real, h1.ip, h2.ip, sport=SLEEVE_PORT)  # a replay
    assert_pings(c1, container_ip(2), count=5, mesh=mesh)
    after = drops(h2)
    grew = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    expected = {"auth": 2, "replay": 1} if encrypted else {"source": 1, "replay": 1}
    assert grew == expected, (grew, mesh.diagnostics())
    assert "established" in h2.status("connections")


def sniff_heartbeat(mesh: Mesh) -> bytes:
    """A heartbeat (type 1) from host 1 as host 2's eth0 receives it."""
    h1, h2, _ = mesh.hosts
    pcap = mesh.run_dir / "heartbeat.pcap"
    with capture(h2, "eth0", f"udp and src host {h1.ip} and dst port {SLEEVE_PORT}"
                 " and udp[9] = 1", pcap) as packets:
        wait_until("a heartbeat from host 1 on host 2's eth0",
                   lambda: (pcap.exists() and pcap.stat().st_size > 24, "nothing captured"),
                   timeout=3 * HEARTBEAT_INTERVAL, interval=0.5)
    payload = packets[0][14 + (packets[0][14] & 15) * 4 + 8:]
    assert payload[1:2] == b"\x01", payload.hex()
    return payload


def failures(host: Host) -> list[str]:
    """The router log lines that say a UDP path failed."""
    text = host.log_file.read_text(errors="replace")
    return [line for line in text.splitlines() if "UDP path to" in line and "failed" in line]


@pytest.mark.timeout(180)
def test_a_forged_heartbeat_neither_silences_nor_redirects_the_peer(
        pair: tuple[Mesh, bool]) -> None:
    mesh, _encrypted = pair
    h1, h2, stranger = mesh.hosts
    c1 = mesh.bare_containers[0]
    real = sniff_heartbeat(mesh)
    def connections(host: Host) -> list[tuple[bool, str, str]]:
        return [(c.outbound, c.address, c.state) for c in host.connections()]

    lines = {host: connections(host) for host in (h1, h2)}
    send(h1, raised(real, 1 << 20), h1.ip, h2.ip, sport=SLEEVE_PORT)  # spoofed from the peer
    send(stranger, raised(real, (1 << 20) + 1), stranger.ip, h2.ip)
    send(stranger, real, stranger.ip, h2.ip, sport=SLEEVE_PORT)  # a replay, from a stranger
    end = time.monotonic() + 2 * HEARTBEAT_TIMEOUT + HEARTBEAT_INTERVAL
    while time.monotonic() < end:  # the same connections, established, all along
        for host, before in lines.items():
            now = connections(host)
            assert now == before, (
                f"{host.nickname}: connections were {before}, now {now}\n{mesh.diagnostics()}")
            assert not failures(host), f"{failures(host)}\n{mesh.diagnostics()}"
        time.sleep(HEARTBEAT_INTERVAL / 2)
    assert_pings(c1, container_ip(2), count=3, mesh=mesh)
    assert [state for _, _, state in lines[h1] + lines[h2]] == ["established"] * 2, lines
    assert "changed to" not in h2.log_file.read_text(errors="replace")
