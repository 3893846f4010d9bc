"""A scripted mesh peer for tests: the project's own Handshake and Session over a Network.

It authenticates like any router (same password, any name it likes) and then sends
whatever the test tells it to: lies included. It runs over any
:class:`~router.network.service.Network`: a :class:`~router.testing.fakenet.FakeHost` in
the simulation, :class:`~router.network.service.TrioNetwork` against real routers (run
``python -m router.testing.peer`` inside a host's namespace for that)::

    async with open_peer(net.host("10.0.0.9"), "10.0.0.1", 6783, identity) as peer:
        peer.send(Gossip("ipam", peer.name, payload))
        await peer.flush()
        closed = await peer.wait_closed(timeout=5)   # the victim dropped us: True

The peer answers nothing on its own except heartbeats (so it is never timed out).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from router.errors import RemoteProtocolError
from router.mesh.handshake import Handshake, HandshakeResult, LocalIdentity
from router.mesh.names import PeerName, random_short_id, random_uid
from router.mesh.session import Session
from router.network.service import Network, Stream, TrioNetwork
from router.wire.messages import Gossip, Message

READ_SIZE = 65536


@dataclass(eq=False)
class ScriptedPeer:
    """One established connection, driven by the test (see the module docstring)."""

    stream: Stream
    session: Session
    received: list[Message] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)
    close_reason: str = ""

    @property
    def result(self) -> HandshakeResult:
        return self.session.result

    def send(self, msg: Message) -> None:
        """Queue ``msg`` (sent by :meth:`flush` or the background pump)."""
        if not self.session.send(msg):
            raise RemoteProtocolError("scripted peer: send queue full")

    async def flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            await self.stream.send_all(out)

    async def wait_closed(self, timeout: float) -> bool:
        """True once the remote closed the connection (within ``timeout`` seconds)."""
        with trio.move_on_after(timeout):
            await self.closed.wait()
        return self.closed.is_set()

    async def _pump(self) -> None:
        """Read (collect messages), send heartbeats, until the remote closes."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats)
                while True:
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        raise RemoteProtocolError("closed by the remote")
                    self.received += self.session.receive_data(data, trio.current_time())
        except* (RemoteProtocolError, OSError, trio.BrokenResourceError,
                 trio.ClosedResourceError) as group:
            self.close_reason = str(group.exceptions[0])
        self.closed.set()

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep_until(self.session.deadline())
            self.session.handle_timer(trio.current_time())
            await self.flush()


async def handshake(network: Network, host: str, port: int, identity: LocalIdentity,
                    *, timeout: float = 10.0) -> tuple[Stream, HandshakeResult, bytes]:
    """Dial ``host:port`` and run our own Handshake over it; RemoteProtocolError on failure."""
    stream = await network.connect_tcp(host, port)
    hs = Handshake(identity, outbound=True, remote_ip=ipaddress.ip_address(host),
                   now=trio.current_time(), timeout=timeout)
    while not hs.done:
        out = hs.data_to_send()
        if out:
            await stream.send_all(out)
        if hs.done:
            break
        with trio.fail_after(timeout):
            data = await stream.receive_some(READ_SIZE)
        if not data:
            raise RemoteProtocolError("closed during the handshake")
        hs.receive_data(data)
    out = hs.data_to_send()
    if out:
        await stream.send_all(out)
    return stream, hs.result, hs.leftover()


@asynccontextmanager
async def open_peer(network: Network, host: str, port: int,
                    identity: LocalIdentity) -> AsyncIterator[ScriptedPeer]:
    """An established connection to the router at ``host:port``, pumped in the background."""
    stream, result, leftover = await handshake(network, host, port, identity)
    peer = ScriptedPeer(stream, Session(result, now=trio.current_time()))
    peer.received += peer.session.receive_data(leftover, trio.current_time())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer._pump)
            yield peer
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def identity(name: PeerName, nickname: str, password: bytes | None) -> LocalIdentity:
    """A peer identity with a fresh uid and short id."""
    return LocalIdentity(name=name, nickname=nickname, uid=random_uid(),
                         short_id=random_short_id(), password=password)


async def _main(args: argparse.Namespace) -> int:
    host, _, port = args.connect.rpartition(":")
    ident = identity(PeerName.parse(args.name), args.nickname,
                     args.password.encode() if args.password else None)
    try:
        async with open_peer(TrioNetwork(), host, int(port), ident) as peer:
            print("established", flush=True)
            for spec in args.gossip:
                channel, _, hex_payload = spec.partition(":")
                peer.send(Gossip(channel, ident.name, bytes.fromhex(hex_payload)))
            await peer.flush()
            closed = await peer.wait_closed(args.hold)
            print(f"closed by remote: {peer.close_reason}" if closed else "held", flush=True)
    except (RemoteProtocolError, OSError) as exc:
        print(f"refused: {exc}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m router.testing.peer --connect IP:PORT --name NAME [--gossip CH:HEX]...``"""
    parser = argparse.ArgumentParser(prog="python -m router.testing.peer")
    parser.add_argument("--connect", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--nickname", default="scripted")
    parser.add_argument("--password", default="")
    parser.add_argument("--gossip", action="append", default=[],
                        help="CHANNEL:HEXPAYLOAD, sent as Gossip once established")
    parser.add_argument("--hold", type=float, default=5.0,
                        help="seconds to keep the connection up (heartbeating)")
    return trio.run(_main, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
