"""What the services ask of the network, and the real implementation over trio sockets.

The mesh and sleeve services never touch trio's socket API directly: they take a
:class:`Network` in their constructor. :class:`TrioNetwork` is the real one;
``router/testing/fakenet.py`` implements the same protocol in memory (loss, partitions,
virtual time) so a whole mesh of routers can run in one test process.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Protocol

import trio

Address = tuple[str, int]


class Stream(Protocol):
    """A connected, reliable byte stream (TCP)."""

    @property
    def remote(self) -> Address: ...

    @property
    def local(self) -> Address: ...

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int) -> bytes:
        """Bytes received; ``b""`` at end of stream. Raises OSError/BrokenResourceError."""
        ...

    async def aclose(self) -> None: ...


class Listener(Protocol):
    """A bound, listening TCP socket."""

    @property
    def address(self) -> Address: ...

    async def accept(self) -> Stream: ...

    async def aclose(self) -> None: ...


class Datagrams(Protocol):
    """A bound UDP socket."""

    @property
    def address(self) -> Address: ...

    async def sendto(self, data: bytes, addr: Address) -> None: ...

    async def recvfrom(self, max_bytes: int) -> tuple[bytes, Address]: ...

    def fileno(self) -> int:
        """The socket's descriptor, for the native data plane (real sockets only)."""
        ...

    def close(self) -> None: ...


class Network(Protocol):
    """Opens listeners, connections and datagram sockets; resolves host names."""

    async def listen_tcp(self, host: str, port: int) -> Listener: ...

    async def connect_tcp(self, host: str, port: int) -> Stream: ...

    async def open_udp(self, host: str, port: int) -> Datagrams: ...

    async def resolve(self, host: str) -> str:
        """One IP address for ``host`` (IPv4 preferred); OSError when it does not resolve."""
        ...


def _addr(sockaddr: object) -> Address:
    assert isinstance(sockaddr, tuple)
    return (str(sockaddr[0]), int(sockaddr[1]))


class _TrioStream:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.remote = _addr(stream.socket.getpeername())
        self.local = _addr(stream.socket.getsockname())

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int) -> bytes:
        return bytes(await self._stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self._stream.aclose()


class _TrioListener:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self.address = _addr(sock.getsockname())

    async def accept(self) -> _TrioStream:
        sock, _ = await self._sock.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _TrioStream(trio.SocketStream(sock))

    async def aclose(self) -> None:
        self._sock.close()
        await trio.lowlevel.checkpoint()


class _TrioDatagrams:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self.address = _addr(sock.getsockname())

    async def sendto(self, data: bytes, addr: Address) -> None:
        try:
            await self._sock.sendto(data, addr)
        except OSError as exc:
            # An unreachable destination (ICMP errors surfacing as ECONNREFUSED etc.) is a
            # lost datagram, as UDP promises nothing more.
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                 errno.EMSGSIZE, errno.EPERM, errno.ENOBUFS):
                raise

    async def recvfrom(self, max_bytes: int) -> tuple[bytes, Address]:
        while True:
            try:
                data, addr = await self._sock.recvfrom(max_bytes)
            except ConnectionRefusedError:
                continue  # an earlier sendto's ICMP error reported on this socket
            return bytes(data), _addr(addr)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


class ListenError(OSError):
    """Binding a socket failed: ``cannot listen on HOST:PORT (TCP): [Errno 99] ...``.

    An :class:`OSError` with the original ``errno``, so callers that handle OSError still
    do; its text names what could not be bound, for the one-line start failure.
    """

    def __init__(self, host: str, port: int, proto: str, exc: OSError) -> None:
        reason = f"[Errno {exc.errno}] {os.strerror(exc.errno)}" if exc.errno else str(exc)
        super().__init__(exc.errno, f"cannot listen on {host}:{port} ({proto}): {reason}")

    def __str__(self) -> str:
        return str(self.strerror)


class TrioNetwork:
    """The real network: IPv4 TCP and UDP through trio sockets."""

    async def listen_tcp(self, host: str, port: int) -> _TrioListener:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            await sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ListenError(host, port, "TCP", exc) from exc
        return _TrioListener(sock)

    async def connect_tcp(self, host: str, port: int) -> _TrioStream:
        stream = await trio.open_tcp_stream(host, port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _TrioStream(stream)

    async def open_udp(self, host: str, port: int) -> _TrioDatagrams:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ListenError(host, port, "UDP", exc) from exc
        return _TrioDatagrams(sock)

    async def resolve(self, host: str) -> str:
        infos = await trio.socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
        if not infos:
            raise OSError(errno.EHOSTUNREACH, f"{host}: no address")
        return str(infos[0][4][0])
