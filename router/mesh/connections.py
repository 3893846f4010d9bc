"""The live connections of one router: who they are to, which survives a duplicate, what
they carry to and from gossip, and the line each shows in ``status connections``.

Sans-IO: ``MeshService`` (``service.py``) owns the sockets, tasks and cancel scopes of its
connections and keeps them here once their handshake is done. A connection is anything
with the attributes of :class:`LiveConnection` (the service's own record).

Duplicates: two connections to the same peer (both dialled at once, or a peer that
reconnects before we noticed the old one die) are resolved the same way on both ends:
the connection dialled by the greater peer name survives. The dial targets the loser
stood for move to the survivor, so the connection maker sees them satisfied.

A name is bound to its connection: once a connection is *settled* (it has lived
``settle_time`` seconds and was heard from within ``alive_within`` seconds: heartbeats
come every TCP heartbeat interval) a second connection claiming the same name is
refused, whoever dialled it. It is a liar (any authenticated peer may claim any name) or
a restart whose old connection we have not seen die yet; either way the old one stays
while it heartbeats, and a genuine restart gets in on its next try, once the old
connection has closed (the restarted host's kernel closes it at once) or gone quiet.
Only young connections (simultaneous dials finish within a handshake of each other) and
quiet ones go through the tie-break.

The registry keeps the connection maker (``targets.py``) told: which targets a live
connection satisfies, which peers we are connected to, and why a connection ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from router.errors import RemoteProtocolError
from router.mesh.gossip import (
    BroadcastIn,
    BroadcastOut,
    GossipIn,
    InEvent,
    OutEvent,
    UnicastIn,
    UnicastOut,
)
from router.mesh.handshake import HandshakeResult
from router.mesh.names import PeerName
from router.mesh.targets import ConnectionMaker
from router.mesh.topology import LocalConnection
from router.status import ConnectionStatus
from router.wire.messages import Gossip, GossipBroadcast, GossipUnicast, Message


class LiveConnection(Protocol):
    """What the registry needs of a connection that finished its handshake."""

    outbound: bool
    address: str  # the remote TCP address, "ip:port"
    target: str | None  # the dial target this connection satisfies, if we dialled
    satisfies: set[str]  # targets whose duplicate dial lost to this connection
    close_reason: str
    started: float  # when its handshake finished

    @property
    def last_heard(self) -> float:
        """When bytes last arrived on it."""
        ...

    @property
    def result(self) -> HandshakeResult: ...

    @property
    def remote(self) -> PeerName: ...

    def close(self, reason: str) -> None: ...


C = TypeVar("C", bound=LiveConnection)

DEFAULT_SETTLE_TIME = 10.0  # seconds: a connection this old is no simultaneous dial
DEFAULT_ALIVE_WITHIN = 45.0  # seconds: heard from this recently, it is alive


@dataclass(frozen=True, eq=False)
class Admission(Generic[C]):
    """What :meth:`ConnectionRegistry.admit` decided about one connection.

    ``admitted``: it is now live. ``duplicate``: another connection to the same peer
    existed. ``displaced``: that other connection, which lost and left the registry (the
    caller closes it). ``winner``: the surviving connection when this one lost.
    ``refused``: the name is bound to a settled connection (``close_reason`` says so).
    """

    admitted: bool
    duplicate: bool = False
    displaced: C | None = None
    winner: C | None = None
    refused: bool = False


class ConnectionRegistry(Generic[C]):
    """The live connections, by peer (at most one each) and by connection id."""

    def __init__(self, ourself: PeerName, maker: ConnectionMaker, *,
                 settle_time: float = DEFAULT_SETTLE_TIME,
                 alive_within: float = DEFAULT_ALIVE_WITHIN) -> None:
        self._ourself = ourself
        self._maker = maker
        self._settle_time = settle_time
        self._alive_within = alive_within
        self._by_peer: dict[PeerName, C] = {}
        self._by_id: dict[int, C] = {}  # the same connections, by connection id

    def __len__(self) -> int:
        return len(self._by_peer)

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._by_peer.values()))

    def peers(self) -> set[PeerName]:
        """The peers we have a live connection to."""
        return set(self._by_peer)

    def get(self, peer: PeerName) -> C | None:
        """The live connection to ``peer``, if any."""
        return self._by_peer.get(peer)

    def by_id(self, conn_id: int) -> C | None:
        """The live connection with this connection id, if any."""
        return self._by_id.get(conn_id)

    def admit(self, conn: C, now: float) -> Admission[C]:
        """Make ``conn`` live unless it loses to a duplicate (or reuses a live id).

        The survivor's targets are reported connected to the maker either way.
        """
        if conn.result.conn_id in self._by_id:
            self._refuse(conn, "connection id already in use", now)
            return Admission(admitted=False)
        existing = self._by_peer.get(conn.remote)
        displaced = None
        if existing is not None and self._settled(existing, now):
            heard = now - existing.last_heard
            conn.close_reason = (f"peer {conn.remote} is already connected at "
                                 f"{existing.address} (heard {heard:.0f} s ago)")
            self._move_targets(conn, existing)  # a dial of ours reached a peer we have
            self._satisfy_targets(existing, now)
            return Admission(admitted=False, duplicate=True, winner=existing, refused=True)
        if existing is not None:
            # Both ends decide alike: the connection dialled by the greater name survives.
            keep_new = conn.outbound == (self._ourself > conn.remote)
            loser, winner = (existing, conn) if keep_new else (conn, existing)
            self._move_targets(loser, winner)
            if loser is conn:
                self._satisfy_targets(winner, now)
                return Admission(admitted=False, duplicate=True, winner=winner)
            self._detach(existing, now, "duplicate connection")
            displaced = existing
        self._by_peer[conn.remote] = conn
        self._by_id[conn.result.conn_id] = conn
        if not conn.outbound:  # the maker skips targets without a port at this host
            self._maker.connected(conn.address, conn.remote, now, outbound=False)
        self._satisfy_targets(conn, now)
        return Admission(admitted=True, duplicate=existing is not None, displaced=displaced)

    def _settled(self, conn: C, now: float) -> bool:
        """Old enough not to be half of a simultaneous dial, and heartbeating."""
        return (now - conn.started >= self._settle_time
                and now - conn.last_heard < self._alive_within)

    @staticmethod
    def _move_targets(loser: C, winner: C) -> None:
        """The dial targets ``loser`` stood for are now satisfied by ``winner``."""
        if loser.target is not None:
            winner.satisfies.add(loser.target)
            loser.target = None
        winner.satisfies |= loser.satisfies
        loser.satisfies.clear()

    def _refuse(self, conn: C, reason: str, now: float) -> None:
        """``conn`` never becomes live; a dial it answered failed (retried with backoff)."""
        conn.close_reason = reason
        if conn.target is not None:
            self._maker.dial_failed(conn.target, now, reason, retry=True)
            conn.target = None

    def remove(self, conn: C, now: float) -> bool:
        """``conn`` ended (``close_reason`` says why): take it out if it is live, and tell
        the maker its targets are disconnected. True if it was live."""
        reason = conn.close_reason or "connection closed"
        was_live = self._detach(conn, now, reason)
        for target in _targets(conn):
            self._maker.disconnected(target, conn.remote, now, reason)
        self._maker.set_connected_peers(self.peers())
        return was_live

    def _detach(self, conn: C, now: float, reason: str) -> bool:
        if self._by_peer.get(conn.remote) is not conn:
            return False
        del self._by_peer[conn.remote]
        del self._by_id[conn.result.conn_id]
        if not conn.outbound:
            self._maker.disconnected(conn.address, conn.remote, now, reason, inbound=True)
        return True

    def _satisfy_targets(self, conn: C, now: float) -> None:
        for target in _targets(conn):
            self._maker.connected(target, conn.remote, now, outbound=True)
        self._maker.set_connected_peers(self.peers())

    def local_connections(self, established: Callable[[int], bool]) -> list[LocalConnection]:
        """Our connections as the topology gossips them (``established`` by conn id)."""
        return [
            LocalConnection(
                remote_name=conn.remote,
                remote_addr=conn.target if conn.target else conn.address,
                outbound=conn.outbound,
                established=established(conn.result.conn_id),
            )
            for conn in self._by_peer.values()
        ]


def _targets(conn: LiveConnection) -> set[str]:
    """Every dial target ``conn`` stands for (its own and duplicates' that lost)."""
    return ({conn.target} if conn.target else set()) | conn.satisfies


def connection_status(conn: LiveConnection, *, established: bool, mtu: int,
                      password: bool, overlay: str = "sleeve") -> ConnectionStatus:
    """The ``status connections`` line of a live connection; ``mtu`` is Weave's ``mtu=``
    (what a container fits), shown once established; ``encrypted`` only with a password."""
    return ConnectionStatus(
        outbound=conn.outbound,
        address=conn.target if conn.target else conn.address,
        state="established" if established else "pending",
        overlay=overlay,
        encrypted=conn.result.encrypted if password else None,
        peer_name=str(conn.remote),
        peer_nickname=conn.result.remote_nickname,
        attrs={"mtu": str(mtu)} if established and mtu else {},
    )


def gossip_event(msg: Message) -> InEvent:
    """A gossip message received on a connection, as the gossip router's event.

    RemoteProtocolError for any other message (the caller handles the non-gossip ones).
    """
    if isinstance(msg, GossipUnicast):
        return UnicastIn(msg.channel, msg.src, msg.dst, msg.payload)
    if isinstance(msg, GossipBroadcast):
        return BroadcastIn(msg.channel, msg.src, msg.payload)
    if isinstance(msg, Gossip):
        return GossipIn(msg.channel, msg.src, msg.payload)
    raise RemoteProtocolError(f"unexpected message {type(msg).__name__}")


def gossip_message(event: OutEvent) -> Message:
    """The message that carries one of the gossip router's outgoing events."""
    if isinstance(event, UnicastOut):
        return GossipUnicast(event.channel, event.src, event.dst, event.payload)
    if isinstance(event, BroadcastOut):
        return GossipBroadcast(event.channel, event.src, event.payload)
    return Gossip(event.channel, event.src, event.payload)
