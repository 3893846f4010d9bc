"""An in-process network for simulations: TCP streams and UDP datagrams between fake hosts.

Each fake host is a :class:`~router.network.service.Network` bound to one IP address, so the
real mesh and sleeve services run on it unchanged. The network can be cut in two
(:meth:`FakeNetwork.partition`), heal, lose UDP datagrams at random, or drop a host off the
network entirely (:meth:`FakeNetwork.isolate`). Under a partition, TCP bytes already in
flight wait (as a real TCP retransmits) and new connections fail; they flow again on heal,
unless a side's heartbeat timeout closed the connection first, exactly the race a real
network has. Nothing here reads a wall clock: it runs under trio's virtual clock.
"""

from __future__ import annotations

import errno
import itertools
import random
import weakref
from collections import deque
from collections.abc import Iterable

import trio

Address = tuple[str, int]

MAX_PIPE_BYTES = 4 * 1024 * 1024  # a direction's buffer; senders block beyond it (TCP window)
MAX_UDP_QUEUE = 1024  # datagrams waiting in a socket; more are dropped (a full socket buffer)


class _Pipe:
    """One direction of a fake TCP connection."""

    def __init__(self, net: FakeNetwork, src: str, dst: str) -> None:
        self.net, self.src, self.dst = net, src, dst
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.broken = False
        self.lot = trio.lowlevel.ParkingLot()
        net.pipes.add(self)

    def deliverable(self) -> bool:
        return self.net.reachable(self.src, self.dst)


class FakeStream:
    """One end of a fake TCP connection."""

    def __init__(self, local: Address, remote: Address, inbound: _Pipe, outbound: _Pipe) -> None:
        self.local, self.remote = local, remote
        self._in, self._out = inbound, outbound
        self._closed = False

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        pipe = self._out
        while pipe.size + len(data) > MAX_PIPE_BYTES and not pipe.broken:
            await pipe.lot.park()
        if pipe.broken:
            raise trio.BrokenResourceError("connection reset by peer")
        pipe.chunks.append(bytes(data))
        pipe.size += len(data)
        pipe.net.tcp_bytes += len(data)
        pipe.lot.unpark_all()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int) -> bytes:
        pipe = self._in
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            if pipe.chunks and pipe.deliverable():
                chunk = pipe.chunks.popleft()
                if len(chunk) > max_bytes:
                    pipe.chunks.appendleft(chunk[max_bytes:])
                    chunk = chunk[:max_bytes]
                pipe.size -= len(chunk)
                pipe.lot.unpark_all()
                await trio.lowlevel.checkpoint()
                return chunk
            if pipe.eof and not pipe.chunks:
                await trio.lowlevel.checkpoint()
                return b""
            await pipe.lot.park()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._in.broken = True
            self._out.lot.unpark_all()
            self._in.lot.unpark_all()
        await trio.lowlevel.checkpoint()


class FakeListener:
    def __init__(self, host: FakeHost, address: Address) -> None:
        self._host = host
        self.address = address
        self._send, self._recv = trio.open_memory_channel[FakeStream](128)

    def offer(self, stream: FakeStream) -> bool:
        try:
            self._send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    async def accept(self) -> FakeStream:
        return await self._recv.receive()

    async def aclose(self) -> None:
        self._host.net.listeners.pop(self.address, None)
        await self._send.aclose()
        await self._recv.aclose()


class FakeDatagrams:
    def __init__(self, host: FakeHost, address: Address) -> None:
        self._host = host
        self.address = address
        self._send, self._recv = trio.open_memory_channel[tuple[bytes, Address]](MAX_UDP_QUEUE)

    def deliver(self, data: bytes, src: Address) -> None:
        try:
            self._send.send_nowait((data, src))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._host.net.udp_dropped += 1

    async def sendto(self, data: bytes, addr: Address) -> None:
        self._host.net.send_datagram(self.address, addr, bytes(data))
        await trio.lowlevel.checkpoint()

    async def recvfrom(self, max_bytes: int) -> tuple[bytes, Address]:
        data, src = await self._recv.receive()
        return data[:max_bytes], src

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "a fake socket has no descriptor (no data plane in sims)")

    def close(self) -> None:
        self._host.net.udp_sockets.pop(self.address, None)
        self._send.close()


class FakeHost:
    """The :class:`~router.network.service.Network` seen from one IP address."""

    def __init__(self, net: FakeNetwork, ip: str) -> None:
        self.net = net
        self.ip = ip
        self._ports = itertools.count(40000)

    def _bind_addr(self, host: str, port: int) -> Address:
        if host not in ("0.0.0.0", self.ip):
            raise OSError(errno.EADDRNOTAVAIL, f"cannot bind {host}: not this host's address")
        return (self.ip, port or next(self._ports))

    async def listen_tcp(self, host: str, port: int) -> FakeListener:
        await trio.lowlevel.checkpoint()
        addr = self._bind_addr(host, port)
        if addr in self.net.listeners:
            raise OSError(errno.EADDRINUSE, f"{addr[0]}:{addr[1]}: address already in use")
        listener = FakeListener(self, addr)
        self.net.listeners[addr] = listener
        return listener

    async def connect_tcp(self, host: str, port: int) -> FakeStream:
        await trio.sleep(self.net.latency)
        if not self.net.reachable(self.ip, host) or not self.net.reachable(host, self.ip):
            await trio.sleep(self.net.connect_timeout)
            raise OSError(errno.EHOSTUNREACH, f"connect {host}:{port}: no route to host")
        listener = self.net.listeners.get((host, port))
        if listener is None:
            raise OSError(errno.ECONNREFUSED, f"connect {host}:{port}: connection refused")
        local = (self.ip, next(self._ports))
        to_server, to_client = _Pipe(self.net, self.ip, host), _Pipe(self.net, host, self.ip)
        client = FakeStream(local, (host, port), to_client, to_server)
        server = FakeStream((host, port), local, to_server, to_client)
        if not listener.offer(server):
            raise OSError(errno.ECONNREFUSED, f"connect {host}:{port}: connection refused")
        return client

    async def open_udp(self, host: str, port: int) -> FakeDatagrams:
        await trio.lowlevel.checkpoint()
        addr = self._bind_addr(host, port)
        if addr in self.net.udp_sockets:
            raise OSError(errno.EADDRINUSE, f"{addr[0]}:{addr[1]}: address already in use")
        sock = FakeDatagrams(self, addr)
        self.net.udp_sockets[addr] = sock
        return sock

    async def resolve(self, host: str) -> str:
        await trio.lowlevel.checkpoint()
        if host in self.net.hosts:
            return host
        raise OSError(errno.ENOENT, f"{host}: name does not resolve")


class FakeNetwork:
    """All fake hosts and the links between them."""

    def __init__(self, *, rng: random.Random | None = None, udp_loss: float = 0.0,
                 latency: float = 0.0005, connect_timeout: float = 3.0) -> None:
        self.rng = rng or random.Random(0)
        self.udp_loss = udp_loss
        self.latency = latency
        self.connect_timeout = connect_timeout
        self.hosts: dict[str, FakeHost] = {}
        self.listeners: dict[Address, FakeListener] = {}
        self.udp_sockets: dict[Address, FakeDatagrams] = {}
        self._group: dict[str, int] = {}  # host -> partition group; absent = group 0
        self._isolated: set[str] = set()
        self.pipes: weakref.WeakSet[_Pipe] = weakref.WeakSet()
        self.udp_dropped = 0
        self.tcp_bytes = 0  # written to every fake TCP connection (the control plane)
        self.udp_bytes = 0  # datagrams delivered (sleeve heartbeats in a simulation)

    def host(self, ip: str) -> FakeHost:
        if ip not in self.hosts:
            self.hosts[ip] = FakeHost(self, ip)
        return self.hosts[ip]

    def reachable(self, a: str, b: str) -> bool:
        if a == b:
            return True
        if a in self._isolated or b in self._isolated:
            return False
        return self._group.get(a, 0) == self._group.get(b, 0)

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network: hosts in different groups cannot reach each other."""
        self._group = {ip: i + 1 for i, group in enumerate(groups) for ip in group}
        self._wake_all()

    def isolate(self, ip: str) -> None:
        """Take one host off the network (pulled cable): nothing in or out."""
        self._isolated.add(ip)
        self._wake_all()

    def heal(self) -> None:
        self._group.clear()
        self._isolated.clear()
        self._wake_all()

    def send_datagram(self, src: Address, dst: Address, data: bytes) -> None:
        if not self.reachable(src[0], dst[0]) or self.rng.random() < self.udp_loss:
            self.udp_dropped += 1
            return
        sock = self.udp_sockets.get(dst)
        if sock is None:
            self.udp_dropped += 1
            return
        self.udp_bytes += len(data)
        sock.deliver(data, src)

    def _wake_all(self) -> None:
        # Readers park on their pipe's lot; a heal must wake those waiting for deliverability.
        for pipe in list(self.pipes):
            pipe.lot.unpark_all()
