"""The native data-plane threads (the compiled backend only).

* Without privileges: a datagram socketpair stands in for each TAP (it keeps message
  boundaries, as a TAP does), so the test writes elements in and reads them out.
* On real devices (integration, root): two namespaces, each with a TAP opened like the
  router's capture device (vnet header, checksum and TSO offloads) and an address; two
  data planes whose UDP sockets sit on one loopback. The kernel's own ping and TCP talk
  across: ARP broadcasts, unicast replies, TSO super-frames fragmented and reassembled,
  encrypted or not. Everything is removed afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.dataplane.backend import Backend, DataplaneLike
from router.mesh.names import PeerName
from router.overlay.sleeve.packet import encode_heartbeat
from tests.fastpath.devices import Namespaces, in_netns, open_tap
from tests.fastpath.mesh import BROADCAST_MAC, frame, mac, name_of

A, B = name_of(1), name_of(2)
ADDR_A, ADDR_B = "10.99.0.1", "10.99.0.2"
CONN = 0x5EED


@dataclass
class Pair:
    ns_a: str
    ns_b: str
    a: DataplaneLike
    b: DataplaneLike
    udp_a: socket.socket
    udp_b: socket.socket
    key: bytes | None

    def ping(self, count: int = 3, wait: int = 2) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns_a, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
             "-W", str(wait), ADDR_B], capture_output=True, text=True, timeout=30)


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize("cipher", ["secretbox", "aes256gcm"])
def test_threads_carry_elements_between_socketpairs(native: Backend, cipher: str) -> None:
    key = os.urandom(32)
    with contextlib.ExitStack() as stack:
        taps = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
        udp = [_udp_socket(), _udp_socket()]
        for sock in [*udp, *(end for ends in taps for end in ends)]:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            stack.callback(sock.close)
        a, b = native.Dataplane(A), native.Dataplane(B)
        stack.callback(a.stop)
        stack.callback(b.stop)
        a.set_peer(B, CONN, udp[1].getsockname(), key, 1400, cipher)
        b.set_peer(A, CONN, udp[0].getsockname(), key, 1400, cipher)
        a.set_routes({B: B}, {A: [B]})
        b.set_routes({A: A}, {B: [A]})
        a.start(taps[0][0].fileno(), udp[0].fileno())
        b.start(taps[1][0].fileno(), udp[1].fileno())
        with pytest.raises(Exception, match="running"):
            a.start(taps[0][0].fileno(), udp[0].fileno())
        elements = [frame(BROADCAST_MAC, mac(1), n) for n in (60, 1500, 9000, 65000)]
        for element in elements:
            taps[0][1].send(element)
        taps[1][1].settimeout(5)
        assert [taps[1][1].recv(1 << 17) for _ in elements] == elements
        names = [Path(f"/proc/self/task/{t}/comm").read_text().strip()
                 for t in os.listdir("/proc/self/task")]
        assert names.count("weave-dp-tx") == names.count("weave-dp-rx") == 2, names
        a.stop()
        a.stop()  # idempotent
        assert not a.running
        a.start(taps[0][0].fileno(), udp[0].fileno())  # and restartable
        taps[0][1].send(elements[0])
        assert taps[1][1].recv(1 << 17) == elements[0]
        assert b.statistics()["peers"][A]["frames_in"] == len(elements) + 1


@pytest.fixture(params=[True, False], ids=["encrypted", "plain"])
def pair(request: pytest.FixtureRequest, native: Backend) -> Iterator[Pair]:
    key = os.urandom(32) if request.param else None
    with contextlib.ExitStack() as stack:
        namespaces = stack.enter_context(Namespaces())
        ns_a, ns_b = namespaces.add("a"), namespaces.add("b")
        tap_a = open_tap(ns_a, "fpa", f"{ADDR_A}/24")
        stack.callback(os.close, tap_a)
        tap_b = open_tap(ns_b, "fpb", f"{ADDR_B}/24")
        stack.callback(os.close, tap_b)
        udp_a, udp_b = in_netns(ns_a, lambda: (_udp_socket(), _udp_socket()))
        stack.callback(udp_a.close)
        stack.callback(udp_b.close)
        a, b = native.Dataplane(A), native.Dataplane(B)
        stack.callback(a.stop)  # runs before the fds close
        stack.callback(b.stop)
        a.set_peer(B, CONN, udp_b.getsockname(), key, 1400)
        b.set_peer(A, CONN, udp_a.getsockname(), key, 1400)
        a.set_routes({B: B}, {A: [B], B: []})
        b.set_routes({A: A}, {B: [A], A: []})
        a.start(tap_a, udp_a.fileno())
        b.start(tap_b, udp_b.fileno())
        assert a.running and b.running
        yield Pair(ns_a, ns_b, a, b, udp_a, udp_b, key)


@pytest.mark.integration
def test_ping_crosses_the_data_plane(pair: Pair) -> None:
    result = pair.ping()
    assert result.returncode == 0, result.stdout + result.stderr
    stats_a, stats_b = pair.a.statistics(), pair.b.statistics()
    assert stats_a["frames_delivered"] >= 3 and stats_b["frames_delivered"] >= 3
    assert not any(stats_a["drops"].values()) and not any(stats_b["drops"].values())
    # each side learnt the other's TAP MAC from the ARP exchange
    assert stats_a["macs"] == 2 and stats_b["macs"] == 2
    # b's replies are queued in its TAP by the time its RX thread's write returns (the
    # stack runs in the writer's context): the RX thread sends them without waking TX
    assert stats_b["egressed_by_rx_thread"] >= 1, stats_b


@pytest.mark.integration
def test_tcp_stream_travels_as_fragmented_super_frames(pair: Pair) -> None:
    data = os.urandom(8 << 20)
    server = in_netns(pair.ns_b, lambda: socket.create_server((ADDR_B, 0)))
    port = server.getsockname()[1]
    received = hashlib.sha256()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.settimeout(20)
            conn, _ = server.accept()
            with conn:
                conn.settimeout(20)
                while chunk := conn.recv(1 << 16):
                    received.update(chunk)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client = in_netns(pair.ns_a, lambda: socket.create_connection((ADDR_B, port), 20))
        with client:
            client.sendall(data)
    finally:
        thread.join(30)
        server.close()
    assert not errors and not thread.is_alive()
    assert received.digest() == hashlib.sha256(data).digest()
    out = pair.a.statistics()["peers"][B]
    # super-frames: far fewer frames than datagrams, and frames of many KiB on average
    assert out["datagrams_out"] > 2 * out["frames_out"]
    assert pair.b.statistics()["drops"]["reassembly"] == 0


@pytest.mark.integration
def test_heartbeats_become_upcalls(pair: Pair) -> None:
    heartbeat = encode_heartbeat(CONN, 0, PeerName(B), PeerName(A), key=None, sender_high=True)
    sender = in_netns(pair.ns_a, _udp_socket)
    with sender:
        sender.sendto(heartbeat, pair.udp_a.getsockname())
        upcalls = pair.a.get_upcalls(5.0)
        assert upcalls == [(1, sender.getsockname(), heartbeat)]
    assert pair.a.get_upcalls(0.01) == []


@pytest.mark.integration
def test_tables_change_while_the_threads_run(pair: Pair) -> None:
    assert pair.ping(count=1).returncode == 0
    pair.b.remove_peer(A)  # B no longer knows the connection: A's frames go up as unknown
    failed = pair.ping(count=1, wait=1)
    assert failed.returncode != 0
    assert any(kind == 2 for kind, _, _ in pair.b.get_upcalls(1.0))
    pair.b.set_peer(A, CONN, pair.udp_a.getsockname(), pair.key, 1400)
    pair.b.set_routes({A: A}, {B: [A], A: []})
    assert pair.ping(count=2).returncode == 0
    with pytest.raises(Exception, match="running"):
        pair.a.egress([], 0.0)


def _capture_datagram(pair: Pair) -> bytes:
    """A real frames datagram from a to b, captured off the underlay (loopback) while
    ping runs: the UDP payload as b's socket receives it."""
    sniffer = in_netns(pair.ns_a, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                        socket.IPPROTO_UDP))
    with sniffer:
        sniffer.settimeout(5)
        assert pair.ping(count=2).returncode == 0
        port_a, port_b = pair.udp_a.getsockname()[1], pair.udp_b.getsockname()[1]
        while True:
            packet = sniffer.recv(1 << 16)
            ihl = (packet[0] & 15) * 4
            sport, dport = struct.unpack_from(">HH", packet, ihl)
            payload = packet[ihl + 8:]
            if (sport, dport) == (port_a, port_b) and payload[1:2] == b"\x02":
                return payload


def _raised(datagram: bytes, by: int) -> bytes:
    (counter,) = struct.unpack_from(">Q", datagram, 12)
    return datagram[:12] + struct.pack(">Q", counter + by) + datagram[20:]


def _spoof(pair: Pair, payload: bytes) -> None:
    """Send ``payload`` to b's socket as if from a's (a raw IPv4 packet, source forged)."""
    port_a, port_b = pair.udp_a.getsockname()[1], pair.udp_b.getsockname()[1]
    udp = struct.pack(">HHHH", port_a, port_b, 8 + len(payload), 0) + payload
    ip_header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                            socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    raw = in_netns(pair.ns_a, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                    socket.IPPROTO_RAW))
    with raw:
        raw.sendto(ip_header + udp, ("127.0.0.1", 0))


@pytest.mark.integration
def test_a_forged_counter_jump_does_not_blackhole_ping(pair: Pair) -> None:
    """Issue 9 item 5 on real devices: a captured datagram resent with its counter
    raised by 2**20, spoofed from a's address and port and from a third address; and
    resent as it was (a replay)."""
    real = _capture_datagram(pair)
    _spoof(pair, _raised(real, 1 << 20))
    _spoof(pair, real)
    stranger = in_netns(pair.ns_a, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with stranger:
        stranger.bind(("127.0.0.2", 0))
        stranger.sendto(_raised(real, (1 << 20) + 1), pair.udp_b.getsockname())
    deadline = time.monotonic() + 5
    expected = {"auth": 2, "replay": 1} if pair.key else {"source": 1, "replay": 1}
    while time.monotonic() < deadline and {
            k: v for k, v in pair.b.statistics()["drops"].items() if v} != expected:
        time.sleep(0.05)
    result = pair.ping(count=3)
    assert result.returncode == 0, result.stdout + result.stderr
    drops = {k: v for k, v in pair.b.statistics()["drops"].items() if v}
    assert drops == expected
