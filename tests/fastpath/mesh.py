"""Several data planes back to back: the test network of the data-plane suite.

:class:`Mesh` builds one data plane per peer name, connects the given links (a session
with a random connection id and key on both ends, or no key), installs the routes that
``router.mesh.routes`` computes for that topology, and carries datagrams between the
planes by address. Loss and faults are a ``fault`` function applied to every datagram on
the wire (return None to drop it, or other bytes); time is the ``now`` the test passes.
Everything is deterministic for a given ``seed``, so two meshes built from the same
arguments on different backends must produce the same bytes.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from router.dataplane.backend import Address, Backend, Datagram, DataplaneLike, Statistics
from router.mesh.names import PeerName
from router.mesh.routes import compute_routes

Fault = Callable[[int, bytes], bytes | None]  # (sequence number on the wire, datagram)

VNET_PLAIN = bytes(10)


def vnet(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
         csum_start: int = 0, csum_offset: int = 0) -> bytes:
    """A virtio_net_hdr in host order (the order the TAP uses)."""
    return struct.pack("=BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def mac(n: int) -> bytes:
    """A locally administered unicast MAC address."""
    return bytes((0x02, 0, 0, 0, n >> 8 & 0xFF, n & 0xFF))


BROADCAST_MAC = b"\xff" * 6
HEARTBEAT_TYPE = b"\x88\xb5"  # fastdp heartbeat ethertype


def heartbeat_mac(n: int) -> bytes:
    """Peer n's fastdp heartbeat MAC in the mesh (``set_heartbeat_mac``)."""
    return bytes((0x7A, 0, 0, 0, n >> 8 & 0xFF, n & 0xFF))


def frame(dst: bytes, src: bytes, payload: bytes | int, meta: bytes = VNET_PLAIN) -> bytes:
    """vnet header + Ethernet frame (IPv4 ethertype) with ``payload`` (bytes or a length)."""
    if isinstance(payload, int):
        payload = bytes((i * 7 + len(src)) & 0xFF for i in range(payload))
    return meta + dst + src + b"\x08\x00" + payload


def ipv4_frame(dst: bytes, src: bytes, size: int, *, df: bool = True, proto: int = 17,
               first: int = 0, meta: bytes = VNET_PLAIN) -> bytes:
    """vnet header + Ethernet + an IPv4 packet of ``size`` bytes (at least 28) from
    10.0.0.1 to 10.0.0.2; ``first``: the first payload byte (an ICMP type)."""
    payload = bytes((first,)) + bytes((i * 5) & 0xFF for i in range(1, size - 20))
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, 7, 0x4000 if df else 0, 64, proto,
                         0, bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)))
    return meta + dst + src + b"\x08\x00" + header + payload


def name_of(i: int) -> int:
    return 0x020000000000 + i


@dataclass(frozen=True)
class _Conn:
    remote_name: PeerName
    established: bool = True


@dataclass(frozen=True)
class _Peer:
    connections: tuple[_Conn, ...]


@dataclass
class Node:
    name: int
    addr: Address
    dp: DataplaneLike
    delivered: list[bytes] = field(default_factory=list)
    upcalls: list[tuple[int, Address, bytes]] = field(default_factory=list)


class Mesh:
    """Peers 1..n (names ``name_of(i)``, addresses 192.0.2.i:6783) joined by ``links``."""

    def __init__(self, backend: Backend, n: int, links: Iterable[tuple[int, int]], *,
                 encrypted: bool = True, cipher: str = "secretbox",
                 max_datagram: int | dict[int, int] = 1400,
                 seed: int = 0, mac_expiry: float = 600.0,
                 reassembly_timeout: float = 1.0) -> None:
        rng = random.Random(seed)
        self.nodes = {
            i: Node(name_of(i), (f"192.0.2.{i}", 6783),
                    backend.Dataplane(name_of(i), mac_expiry=mac_expiry,
                                      reassembly_timeout=reassembly_timeout))
            for i in range(1, n + 1)
        }
        self.links = sorted({tuple(sorted(link)) for link in links})
        self.by_addr = {node.addr: node for node in self.nodes.values()}
        self.wire: list[tuple[Address, Address, bytes]] = []  # everything ever sent
        self._sent = 0
        for a, b in self.links:
            conn_id = rng.getrandbits(64)
            key = rng.randbytes(32) if encrypted else None
            for x, y in ((a, b), (b, a)):
                md = max_datagram if isinstance(max_datagram, int) else max_datagram[x]
                self.nodes[x].dp.set_peer(name_of(y), conn_id, self.nodes[y].addr, key, md,
                                          cipher)
        for i, node in self.nodes.items():
            node.dp.set_heartbeat_mac(heartbeat_mac(i))
        self.install_routes()

    def install_routes(self) -> None:
        """Routes of the current links, as the mesh computes them."""
        peers: dict[PeerName, _Peer] = {}
        for i in self.nodes:
            conns = [b if a == i else a for a, b in self.links if i in (a, b)]
            peers[PeerName(name_of(i))] = _Peer(tuple(_Conn(PeerName(name_of(c))) for c in conns))
        for node in self.nodes.values():
            routes = compute_routes(PeerName(node.name), peers)
            node.dp.set_routes(
                {int(d): int(h) for d, h in routes.unicast.items()},
                {int(o): [int(h) for h in routes.broadcast[o]] for o in routes.broadcast})

    def send(self, i: int, frames: Sequence[bytes], now: float,
             fault: Fault | None = None) -> None:
        """Frames captured on peer i: egress, then carry everything to quiescence."""
        out = self.nodes[i].dp.egress(list(frames), now)
        self.nodes[i].delivered.extend(self.nodes[i].dp.take_local())  # ICMP replies
        self.nodes[i].upcalls.extend(self.nodes[i].dp.get_upcalls(0.0))  # heartbeats
        self.carry(self.nodes[i].addr, out, now, fault)

    def carry(self, source: Address, datagrams: list[Datagram], now: float,
              fault: Fault | None = None) -> None:
        """Deliver datagrams (and whatever relays they cause) until nothing moves."""
        queue = [(source, to, data) for to, data in datagrams]
        while queue:
            src, to, data = queue.pop(0)
            self.wire.append((src, to, data))
            self._sent += 1
            if fault is not None:
                faulted = fault(self._sent, data)
                if faulted is None:
                    continue
                data = faulted
            node = self.by_addr[to]
            frames, relays, upcalls = node.dp.ingress([(src, data)], now)
            node.delivered.extend(frames)
            node.upcalls.extend(upcalls)
            queue.extend((node.addr, t, d) for t, d in relays)

    def take(self, i: int) -> list[bytes]:
        """Frames delivered to peer i's TAP since the last take."""
        out, self.nodes[i].delivered = self.nodes[i].delivered, []
        return out

    def stats(self, i: int) -> Statistics:
        return self.nodes[i].dp.statistics()

    def drops(self, i: int) -> dict[str, int]:
        return {k: v for k, v in self.stats(i)["drops"].items() if v}


def chain(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(1, n)]


def full(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(1, n + 1) for b in range(a + 1, n + 1)]
