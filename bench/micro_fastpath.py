"""Micro benchmark of the sleeve data plane: encapsulate, seal, open, per core.

Drives ``Dataplane.egress`` / ``ingress`` of one backend in this process (one core, no
devices, no sockets): two peers back to back, frames from peer 1 to peer 2. Cases:

* ``gso``:   64 KiB TCP super-frames (what a TAP with TSO hands over), cut into datagrams
  for a 1400-byte path, sealed per datagram; ingress reassembles them.
* ``mtu``:   1414-byte frames (a 1400-byte IP packet each), one or more per datagram.
* ``small``: 100-byte frames (ACKs), packed many per datagram.
* ``jumbo``: the ``gso`` case on a path taking 65507-byte datagrams (2 per super-frame):
  the floor of the per-datagram costs. ``mtu`` sealed against ``gso`` sealed shows what
  sealing each 1.4 KB datagram costs against sealing a 64 KiB element once.

Each runs plain and encrypted. Throughput counts Ethernet frame bytes (what a container
sends), per second of one core, and includes the Python batch overhead of the API (a
copy in and a ``bytes`` object out per datagram) that the native threads do not pay.

``--threads`` (root) also measures the native threads themselves: two namespaces, each
with a TAP (vnet header, TSO) and a data plane, their UDP sockets on one loopback, and
iperf3 TCP between the TAP addresses (1 stream), plain and sealed. Every process on the
machine shares its cores with iperf3 and the kernel here, as in the end-to-end bench.
Not run by the tests. Usage (from the repository root)::

    .venv/bin/python -m bench.micro_fastpath [--backend native|reference|both]
                                             [--seconds S] [--threads]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import time

from router.dataplane.backend import Backend, DataplaneLike, load_backend

A, B = 0x020000000001, 0x020000000002
MAC_A, MAC_B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
CASES = {  # name: (frame payload bytes, frames per batch, path max datagram)
    "gso": (65535 - 20, 16, 1400),
    "mtu": (1400, 64, 1400),
    "small": (86, 256, 1400),
    "jumbo": (65535 - 20, 16, 65507),
}


def _pair(backend: Backend, key: bytes | None,
          max_datagram: int) -> tuple[DataplaneLike, DataplaneLike]:
    a, b = backend.Dataplane(A), backend.Dataplane(B)
    a.set_peer(B, 1, ("192.0.2.2", 6783), key, max_datagram)
    b.set_peer(A, 1, ("192.0.2.1", 6783), key, max_datagram)
    a.set_routes({B: B}, {A: [B]})
    b.set_routes({A: A}, {B: [A]})
    a.learn_mac(MAC_B, B, 0.0)
    return a, b


def _frames(payload: int, count: int) -> list[bytes]:
    gso = payload > 1500
    meta = struct.pack("=BBHHHH", 1, 1 if gso else 0, 54, 1448 if gso else 0, 34, 16)
    body = bytes(i & 0xFF for i in range(payload))
    return [meta + MAC_B + MAC_A + b"\x08\x00" + body for _ in range(count)]


def measure(backend: Backend, case: str, encrypted: bool, seconds: float) -> dict[str, float]:
    """Gbit/s of frame bytes through egress and ingress, and datagrams per second."""
    payload, count, max_datagram = CASES[case]
    a, b = _pair(backend, bytes(range(32)) if encrypted else None, max_datagram)
    frames = _frames(payload, count)
    frame_bytes = sum(len(f) - 10 for f in frames)
    egress_time = ingress_time = 0.0
    batches = datagrams = 0
    now = 1.0
    while egress_time + ingress_time < seconds:
        t0 = time.perf_counter()
        out = a.egress(frames, now)
        t1 = time.perf_counter()
        delivered, _, _ = b.ingress(out, now)
        t2 = time.perf_counter()
        assert len(delivered) == count, "frames lost in the benchmark"
        egress_time += t1 - t0
        ingress_time += t2 - t1
        batches += 1
        datagrams += len(out)
        now += 0.001
    bits = frame_bytes * batches * 8
    return {
        "egress_gbps": bits / egress_time / 1e9,
        "ingress_gbps": bits / ingress_time / 1e9,
        "egress_mdps": datagrams / egress_time / 1e6,
        "datagrams_per_batch": datagrams / batches,
    }


def measure_threads(seconds: float, encrypted: bool) -> float:
    """iperf3 TCP Gbit/s between two TAPs joined by two native data planes."""
    from tests.fastpath.devices import Namespaces, in_netns, open_tap

    backend = load_backend("native")
    key = bytes(range(32)) if encrypted else None
    with contextlib.ExitStack() as stack:
        namespaces = stack.enter_context(Namespaces())
        ns_a, ns_b = namespaces.add("benchA"), namespaces.add("benchB")
        taps = [open_tap(ns_a, "fpa", "10.98.0.1/24"), open_tap(ns_b, "fpb", "10.98.0.2/24")]
        for fd in taps:
            stack.callback(os.close, fd)

        def udp() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            sock.bind(("127.0.0.1", 0))
            return sock

        socks = in_netns(ns_a, lambda: [udp(), udp()])
        for sock in socks:
            stack.callback(sock.close)
        a, b = backend.Dataplane(A), backend.Dataplane(B)
        stack.callback(a.stop)
        stack.callback(b.stop)
        a.set_peer(B, 1, socks[1].getsockname(), key, 1400)
        b.set_peer(A, 1, socks[0].getsockname(), key, 1400)
        a.set_routes({B: B}, {A: [B]})
        b.set_routes({A: A}, {B: [A]})
        a.start(taps[0], socks[0].fileno())
        b.start(taps[1], socks[1].fileno())
        server = subprocess.Popen(["ip", "netns", "exec", ns_b, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(server.wait, 10)
        stack.callback(server.terminate)
        for _ in range(50):  # the server is up once it listens
            probe = subprocess.run(["ip", "netns", "exec", ns_b, "ss", "-ltn", "sport = :5201"],
                                   capture_output=True, text=True)
            if "5201" in probe.stdout:
                break
            time.sleep(0.05)
        out = subprocess.run(
            ["ip", "netns", "exec", ns_a, "iperf3", "-c", "10.98.0.2", "-t", str(seconds),
             "-J"], capture_output=True, text=True, timeout=seconds + 30)
        result = json.loads(out.stdout)
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["native", "reference", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=1.0, help="per case and backend")
    parser.add_argument("--threads", action="store_true", help="also iperf3 over the threads")
    args = parser.parse_args()
    names = ["native", "reference"] if args.backend == "both" else [args.backend]
    print(f"{'backend':<10} {'case':<6} {'crypto':<9} {'egress Gbit/s':>14} "
          f"{'ingress Gbit/s':>15} {'egress Mdgram/s':>16} {'dgrams/batch':>13}")
    for name in names:
        backend = load_backend(name)
        seconds = args.seconds if name == "native" else args.seconds / 4
        for case in CASES:
            for encrypted in (False, True):
                r = measure(backend, case, encrypted, seconds)
                print(f"{name:<10} {case:<6} {'sealed' if encrypted else 'plain':<9} "
                      f"{r['egress_gbps']:>14.2f} {r['ingress_gbps']:>15.2f} "
                      f"{r['egress_mdps']:>16.3f} {r['datagrams_per_batch']:>13.1f}")
    if args.threads:
        for encrypted in (False, True):
            gbps = measure_threads(max(args.seconds, 3.0), encrypted)
            print(f"threads    iperf3 {'sealed' if encrypted else 'plain':<9} {gbps:>14.2f}"
                  " Gbit/s (TCP, 1 stream, TAP to TAP)")


if __name__ == "__main__":
    main()
