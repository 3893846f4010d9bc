"""fastdp with ``--password`` and ``--trusted-subnets``: trusted pairs on the kernel path.

Three hosts, all ``--password``; host1 and host2 trust their two underlay addresses,
host3 trusts nothing (and so makes no VXLAN device). Checked:

* host1 <-> host2 is ``established fastdp``, host1 <-> host3 and host2 <-> host3 stay on
  the encrypted sleeve (report: "encryption required"); pings between all containers;
* a capture on host1's underlay sees a ping's marker payload in plaintext towards host2
  (fastdp: plain VXLAN, the control) and never towards host3 (sealed);
* a VXLAN datagram forged from host3's address to host1's port 6784, carrying a frame for
  host1's container, is dropped and counted by host1's ``inet weave-vxlan-guard``; with
  that table deleted the same datagram reaches the container (so the check can fail);
* a deleted guard is put back by a running router within 3 s (it hears nftables change),
  and by a restarted one;
* ``reset`` removes the guard.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.testing.netns import BareContainer, Host, run_parallel, wait_until
from tests.integration.conftest import MeshFactory
from tests.integration.test_fastdp_router import (
    VXLAN,
    _attach,
    _fastdp,
    _overlays,
    _pings,
    _wait_overlay,
    container_ip,
)

pytestmark = pytest.mark.integration

GUARD = ("inet", "weave-vxlan-guard")
VXLAN_PORT = 6784
VNI = 6782
MARKER = b"whtmarker"
FORGED_PORT = 5099

RECEIVER = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {FORGED_PORT}))
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    data, _ = s.recvfrom(2048)
    print("got " + data.hex(), flush=True)
except TimeoutError:
    print("nothing", flush=True)
"""


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _forged_vxlan(dst_mac: str, src_ip: str, dst_ip: str, payload: bytes) -> bytes:
    """VXLAN (VNI 6782) around Ethernet/IPv4/UDP to ``dst_ip``:FORGED_PORT."""
    udp = struct.pack("!HHHH", 40000, FORGED_PORT, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, socket.IPPROTO_UDP,
                     0, ipaddress.IPv4Address(src_ip).packed,
                     ipaddress.IPv4Address(dst_ip).packed)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("020000aabbcc") + b"\x08\x00"
    return struct.pack("!II", 0x08000000, VNI << 8) + eth + ip + udp


def _guard_drops(host: Host) -> int:
    text = host.run(["nft", "list", "table", *GUARD]).stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", text))


def _send_forged(sender: Host, target: Host, c: BareContainer, payload: bytes) -> str:
    """Send the forged datagram from ``sender`` to ``target``; what ``c`` received."""
    mac = c.run(["cat", "/sys/class/net/ethwe/address"]).stdout.strip()
    datagram = _forged_vxlan(mac, container_ip(3), container_ip(1), payload)
    receiver = c.popen([sys.executable, "-c", RECEIVER, "3"])
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready"
    send = ("import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(({sender.ip!r}, 0))\n"
            "for _ in range(3):\n"
            f"    s.sendto(bytes.fromhex(sys.argv[1]), ({target.ip!r}, {VXLAN_PORT}))\n")
    sender.run([sys.executable, "-c", send, datagram.hex()])
    out, _ = receiver.communicate(timeout=15)
    return out.strip()


def _capture(host: Host, peer: Host, path: Path) -> subprocess.Popen[str]:
    proc = host.popen(["tcpdump", "-i", "eth0", "-n", "-U", "-s", "0", "-w", str(path),
                       "host", peer.ip])
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on" in line, line
    return proc


def test_trusted_pair_on_fastdp_others_sealed_and_guarded(make_mesh: MeshFactory,
                                                          tmp_path: Path) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    trusted = f"{h1.ip}/32,{h2.ip}/32"
    secret = ("--password", "pw")
    h1.launch(*secret, "--trusted-subnets", trusted)
    run_parallel(lambda: h2.launch(*secret, "--trusted-subnets", trusted, h1.ip),
                 lambda: h3.launch(*secret, h1.ip))
    run_parallel(*(lambda h=h: h.wait_established(2, timeout=40) for h in mesh.hosts))
    c1, c2, _c3 = _attach(mesh)

    # Overlays: the trusted pair on fastdp, every other connection on the sealed sleeve.
    for h in (h1, h2):
        text = _wait_overlay(h, "fastdp", 1, timeout=40)
        assert _overlays(h, text).count("sleeve") == 1, text
        # "encrypted": the TCP control connection is (a password); the overlay is fastdp.
        assert re.search(r"established encrypted\s+fastdp \S+\(host[12]\) mtu=1376",
                         text), text
        assert re.search(r"established encrypted\s+sleeve \S+\(host3\)", text), text
        assert VXLAN in h.links()
        fastdp = _fastdp(h)
        assert fastdp["enabled"] is True and fastdp["disabled_reason"] == "", fastdp
        peers = fastdp["peers"]
        assert isinstance(peers, dict)
        reasons = sorted((p["overlay"], p["reason"]) for p in peers.values())
        assert reasons == [("fastdp", ""), ("sleeve", "encryption required")], reasons
    text = h3.status("connections")
    assert _overlays(h3, text) == ["sleeve", "sleeve"], text
    assert VXLAN not in h3.links()
    fastdp = _fastdp(h3)
    assert "--trusted-subnets" in str(fastdp["disabled_reason"]), fastdp
    reasons = [p["reason"] for p in fastdp["peers"].values()]  # type: ignore[union-attr]
    assert reasons == ["encryption required"] * 2, reasons
    assert h3.run(["nft", "list", "tables"]).stdout.count("weave-vxlan-guard") == 0

    _pings(c1, container_ip(2))
    _pings(c1, container_ip(3))
    _pings(c2, container_ip(3))

    # No plaintext towards host3; plaintext towards host2 (plain VXLAN: the control).
    to3, to2 = tmp_path / "h1-h3.pcap", tmp_path / "h1-h2.pcap"
    captures = [_capture(h1, h3, to3), _capture(h1, h2, to2)]
    try:
        for c, ip in ((c1, container_ip(3)), (c1, container_ip(2))):
            proc = c.run(["ping", "-q", "-c", "5", "-i", "0.2", "-W", "1", "-s", "200",
                          "-p", MARKER.hex(), ip], check=False, timeout=30)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        time.sleep(0.5)
    finally:
        for proc in captures:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
    sealed, plain = to3.read_bytes(), to2.read_bytes()
    assert len(sealed) > 5 * 200, len(sealed)  # the pings crossed, sealed
    assert MARKER not in sealed
    assert plain.count(MARKER) >= 5, len(plain)

    # A forged VXLAN datagram from host3's address: dropped and counted by the guard...
    drops = _guard_drops(h1)
    got = _send_forged(h3, h1, c1, MARKER)
    assert got == "nothing", got
    assert _guard_drops(h1) >= drops + 3
    # ... and delivered without it (the same datagram, so the check above can fail). With
    # h1's router stopped (``stop`` leaves the data path up), nothing puts it back meanwhile.
    h1.router("stop")
    h1.wait_stopped()
    h1.run(["nft", "delete", "table", *GUARD])
    assert _send_forged(h3, h1, c1, MARKER) == "got " + MARKER.hex()

    # A restart puts the guard back...
    h1.launch(*secret, "--trusted-subnets", trusted, h2.ip, h3.ip)
    wait_until("guard back", lambda: (
        "weave-vxlan-guard" in h1.run(["nft", "list", "tables"]).stdout, ""), timeout=20)
    _wait_overlay(h1, "fastdp", 1, timeout=40)
    assert _send_forged(h3, h1, c1, MARKER) == "nothing"
    # ... and a running router puts a deleted one back at once: it hears nftables change
    # (kernel/nft_events.py) instead of waiting for its 10 s repair pass.
    h1.run(["nft", "delete", "table", *GUARD])
    wait_until("guard put back", lambda: (
        "weave-vxlan-guard" in h1.run(["nft", "list", "tables"]).stdout, ""), timeout=3)
    assert _send_forged(h3, h1, c1, MARKER) == "nothing"

    # Reset removes it with the device.
    h1.router("reset")
    assert VXLAN not in h1.links()
    tables = h1.run(["nft", "list", "tables"]).stdout
    assert "weave-vxlan-guard" not in tables and "weave-fastdp" not in tables, tables
