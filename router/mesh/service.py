"""The mesh service: trio driver of the sans-IO mesh cores.

Pipeline of one connection (each stage a sans-IO object fed bytes and ``now``):

1. **dial or accept**  the connection maker (``targets.py``) says whom to dial; the
   listener accepts, limited by ``AcceptLimiter`` and ``--conn-limit``.
2. **handshake**       ``handshake.py``: version range, identities, keys, proof of key.
3. **register**        ``connections.py``: a duplicate connection to the same peer is
   resolved the same way on both ends (the one dialled by the greater name survives); the
   sleeve overlay starts UDP heartbeats for it.
4. **session**         ``session.py``: framed (sealed) messages, TCP heartbeats, timeout.
   Gossip messages go to ``gossip.py``; ``ConnectionEstablished`` to the overlay.
5. **topology**        every change of our connections is gossiped (``topology.py``); routes
   (``routes.py``) and discovery targets are recomputed from the merged topology.
6. **close**           any error closes this connection only; its reason is logged (per-
   connection warnings through ``router/ratelimit.py``: a storm costs a few lines), kept
   for ``status connections``, and the connection maker schedules a retry. Whatever a
   peer's bytes or gossip provoke (a gossiper's exception included, even a bug of ours)
   ends that peer's connection, never the router; only BaseExceptions (cancellation,
   KeyboardInterrupt) pass.

Task tree: ``run`` owns a nursery with the accept loop, the dialler loop, the gossip timer
and one child per connection; each connection's child owns its reader, writer and timer.
All state lives on the trio thread; nothing here blocks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from router.config import MeshConfig
from router.errors import HandshakeError, RemoteProtocolError
from router.mesh.connections import ConnectionRegistry, gossip_event, gossip_message
from router.mesh.gossip import GossipChannel, Gossiper, GossipRouter
from router.mesh.handshake import Handshake, HandshakeResult, LocalIdentity
from router.mesh.names import PeerName
from router.mesh.routes import Routes, compute_routes
from router.mesh.session import Session
from router.mesh.statistics import COUNTERS, MeshStatistics, OverlayView, mesh_statistics
from router.mesh.targets import AcceptLimiter, BackoffPolicy, ConnectionMaker, parse_address
from router.mesh.topology import Topology
from router.mesh.topology_gossip import DIGEST_PROTOCOL_VERSION, TopologyGossiper
from router.network.service import Listener, Network, Stream
from router.overlay.fastdp.offer import offer_overlays
from router.overlay.fastdp.plan import LocalConfig
from router.overlay.sleeve.service import SleeveService
from router.ratelimit import RateLimitedLog
from router.wire.messages import ConnectionEstablished, Message

__all__ = ["MeshService", "MeshStatistics"]

log = logging.getLogger("weave-router.mesh")

READ_SIZE = 65536
ROUTES_MIN_INTERVAL = 0.05  # seconds between route recomputations (coalesces bursts)
FLUSH_ON_FAILURE_TIMEOUT = 1.0  # seconds to hand a failing peer our last handshake bytes
_PEER_ERRORS = (RemoteProtocolError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class _Wakeup:
    """A level-triggered wake-up: ``set`` any number of times, ``wait`` consumes it."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


@dataclass(eq=False)
class _Connection:
    """A connection that finished its handshake; lives on the trio thread."""

    stream: Stream
    outbound: bool
    address: str  # the remote TCP address, "ip:port"
    target: str | None  # the dial target this connection satisfies, if we dialled
    result: HandshakeResult
    session: Session
    started: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    wake: _Wakeup = field(default_factory=_Wakeup)
    satisfies: set[str] = field(default_factory=set)  # targets whose duplicate dial lost
    close_reason: str = ""

    @property
    def remote(self) -> PeerName:
        return self.result.remote_name

    @property
    def last_heard(self) -> float:
        return self.session.last_received

    def close(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        self.scope.cancel()


class MeshService:
    """Listener, dialler, connections, gossip and topology of one router."""

    def __init__(
        self, config: MeshConfig, *, network: Network, sleeve: SleeveService, name: PeerName,
        nickname: str, uid: int, short_id: int, targets: list[str],
        save_targets: Callable[[list[str]], None], rng: random.Random | None = None,
        fastdp: LocalConfig | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.nickname = nickname
        self.uid = uid
        self.short_id = short_id
        self._network = network
        self._sleeve = sleeve
        self._save_targets = save_targets
        self._rng = rng or random.Random()
        timings = config.timings
        now = trio.current_time()  # built inside trio.run: the cores run on trio's clock
        self._identity = LocalIdentity(
            name=name, nickname=nickname, uid=uid, short_id=short_id,
            password=config.password, trusted_subnets=config.trusted_subnets,
            overlays={"sleeve": sleeve.features(), **offer_overlays(fastdp)},  # None: no offer
        )
        self._maker = ConnectionMaker(
            ourself=name, port=config.port, discovery=config.discovery,
            conn_limit=config.conn_limit, rng=self._rng, now=now,
            policy=BackoffPolicy.from_timings(timings),
        )
        self._maker.add_targets(targets, replace=True)
        save_targets(self._maker.direct_targets())  # what --resume starts from next time
        self._limiter = AcceptLimiter(rate=timings.accept_rate, burst=timings.accept_burst)
        self.topology = Topology(name, nickname, uid, short_id)
        self.gossip = GossipRouter(name, now=now, interval=timings.gossip_interval, rng=self._rng)
        self._topology_gossiper = TopologyGossiper(
            self.topology, self.gossip, on_change=self._mark_topology_changed
        )
        self._routes: Routes = compute_routes(name, self.topology.peers())
        self._conns: ConnectionRegistry[_Connection] = ConnectionRegistry(
            name, self._maker, settle_time=timings.handshake_timeout,
            alive_within=1.5 * timings.tcp_heartbeat_interval)
        self._maker_wake = _Wakeup()
        self._gossip_wake = _Wakeup()
        self._routes_wake = _Wakeup()
        self._local_dirty = False  # our connections changed since we last gossiped them
        self._routes_listeners: list[Callable[[], None]] = []
        self._nursery: trio.Nursery | None = None
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._rlog = RateLimitedLog(log)  # per-connection warnings: a storm costs a few lines

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the listener, then accept, dial and gossip until cancelled."""
        listener = await self._network.listen_tcp(self.config.host, self.config.port)
        log.info("listening for peers on TCP %s:%d", *listener.address)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._accept_loop, listener)
                nursery.start_soon(self._dial_loop)
                nursery.start_soon(self._gossip_loop)
                nursery.start_soon(self._routes_loop)
                self._local_connections_changed()  # publish our (empty) record
                task_status.started()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await listener.aclose()

    # ------------------------------------------------------------------ control API

    async def connect(self, peers: list[str], *, replace: bool) -> None:
        """Add targets (``connect``); ``replace`` drops the old ones first. Persisted."""
        self._maker.add_targets(peers, replace=replace)
        self._save_targets(self._maker.direct_targets())
        self._maker_wake.set()
        await trio.lowlevel.checkpoint()

    async def forget(self, peers: list[str]) -> None:
        """Drop targets (``forget``); live connections stay until lost. Persisted."""
        self._maker.forget(peers)
        self._save_targets(self._maker.direct_targets())
        self._maker_wake.set()
        await trio.lowlevel.checkpoint()

    def on_routes_changed(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every route recomputation (IPAM: who is reachable)."""
        self._routes_listeners.append(listener)

    def target_count(self) -> int:
        """How many targets we were given (launch PEERs and ``connect``): IPAM's quorum."""
        return len(self._maker.direct_targets())

    def flush_gossip(self) -> None:
        """Wake writers of neighbours with gossip waiting: for services (IPAM) that send
        outside the mesh's own receive path (API calls, their timers)."""
        self._flush_gossip()

    def register_gossiper(self, channel: str, gossiper: Gossiper) -> GossipChannel:
        """A gossip channel for IPAM, DNS and other services."""
        return self.gossip.register(channel, gossiper)

    # ------------------------------------------------------------------ loops

    async def _accept_loop(self, listener: Listener) -> None:
        while True:
            stream = await listener.accept()
            refusal = self._refusal(trio.current_time())
            if refusal:
                self._counters["connections_refused"] += 1
                self._rlog.warning(("refusing", stream.remote[0]), trio.current_time(),
                                   "<-[%s:%d] refusing connection: %s", *stream.remote, refusal)
                await stream.aclose()
                continue
            self._counters["connections_accepted"] += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._run_connection, stream, None)

    def _refusal(self, now: float) -> str:
        if len(self._conns) >= self.config.conn_limit:
            return f"connection limit {self.config.conn_limit} reached"
        if not self._limiter.allow(now):
            return "too many connection attempts"
        return ""

    async def _dial_loop(self) -> None:
        while True:
            now = trio.current_time()
            for addr in self._maker.dials_due(now):
                self._maker.dial_started(addr, now)
                assert self._nursery is not None
                self._nursery.start_soon(self._dial, addr)
            with trio.move_on_at(self._maker.deadline()):
                await self._maker_wake.wait()

    async def _dial(self, addr: str) -> None:
        target = parse_address(addr, default_port=self.config.port)
        try:
            ip = await self._network.resolve(target.host)
        except OSError as exc:
            self._dial_failed(addr, f"dial tcp: lookup {target.host}: {_os_error_text(exc)}")
            return
        try:
            stream = await self._network.connect_tcp(ip, target.port)
        except OSError as exc:
            self._dial_failed(addr, dial_error_text(ip, target.port, exc))
            return
        await self._run_connection(stream, addr)

    def _dial_failed(self, addr: str, reason: str) -> None:
        self._maker.dial_failed(addr, trio.current_time(), reason, retry=True)
        log.info("->[%s] connection failed: %s", addr, reason)
        self._maker_wake.set()

    async def _gossip_loop(self) -> None:
        while True:
            with trio.move_on_at(self.gossip.deadline()):
                await self._gossip_wake.wait()
            self.gossip.handle_timer(trio.current_time())
            self._flush_gossip()

    # ------------------------------------------------------------------ one connection

    async def _run_connection(self, stream: Stream, target: str | None) -> None:
        outbound = target is not None
        address = f"{stream.remote[0]}:{stream.remote[1]}"
        arrow = "->" if outbound else "<-"
        try:
            result, leftover = await self._handshake(stream, outbound)
        except Exception as exc:  # whatever the peer's bytes provoke: its connection ends
            if not isinstance(exc, _PEER_ERRORS):
                log.error("%s[%s] internal error during handshake", arrow, address,
                          exc_info=exc)
            reason = _error_text(exc)
            retry = not isinstance(exc, HandshakeError) or exc.retry
            self._counters["handshake_failures"] += 1
            self._rlog.warning(("handshake", stream.remote[0]), trio.current_time(),
                               "%s[%s] connection shutting down due to error during handshake:"
                               " %s", arrow, address, reason)
            if target is not None:
                self._maker.dial_failed(target, trio.current_time(), reason, retry=retry)
                self._maker_wake.set()
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        now = trio.current_time()
        session = Session(
            result, now=now,
            heartbeat_interval=self.config.timings.tcp_heartbeat_interval,
            timeout=self.config.timings.tcp_timeout,
        )
        conn = _Connection(stream=stream, outbound=outbound, address=address, target=target,
                           result=result, session=session, started=now)
        try:
            if self._register(conn):
                await self._serve(conn, leftover)
        finally:
            self._unregister(conn)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _handshake(self, stream: Stream, outbound: bool) -> tuple[HandshakeResult, bytes]:
        remote_ip = ipaddress.ip_address(stream.remote[0])
        hs = Handshake(self._identity, outbound=outbound, remote_ip=remote_ip,
                       now=trio.current_time(), timeout=self.config.timings.handshake_timeout)
        try:
            while not hs.done:
                out = hs.data_to_send()
                if out:
                    await stream.send_all(out)
                if hs.done:
                    break
                data = b""
                with trio.move_on_at(hs.deadline()) as scope:
                    data = await stream.receive_some(READ_SIZE)
                if scope.cancelled_caught:
                    hs.handle_timer(trio.current_time())
                    continue
                if not data:
                    raise RemoteProtocolError("connection closed by peer during handshake")
                hs.receive_data(data)
        except HandshakeError:
            # What we queued before failing (our Hello, our Ready) lets the peer find the
            # same problem and report it on its side too, instead of a bare "closed".
            await self._send_best_effort(stream, hs.data_to_send())
            raise
        out = hs.data_to_send()
        if out:
            await stream.send_all(out)
        return hs.result, hs.leftover()

    @staticmethod
    async def _send_best_effort(stream: Stream, data: bytes) -> None:
        if not data:
            return
        with trio.move_on_after(FLUSH_ON_FAILURE_TIMEOUT), contextlib.suppress(
            OSError, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            await stream.send_all(data)

    def _register(self, conn: _Connection) -> bool:
        """Admit a connection after its handshake; False when it loses to a duplicate."""
        admission = self._conns.admit(conn, trio.current_time())
        if admission.refused:
            self._counters["connections_refused"] += 1
            self._rlog.warning(("claim", conn.stream.remote[0]), trio.current_time(),
                               "%s[%s %s(%s)] refusing connection: %s", _arrow(conn.outbound),
                               conn.address, conn.remote, conn.result.remote_nickname,
                               conn.close_reason)
            self._maker_wake.set()
            return False
        if admission.duplicate:
            self._counters["duplicate_connections"] += 1
            log.info("%s: duplicate connection to %s; keeping the one dialled by %s",
                     conn.address, conn.remote, max(self.name, conn.remote))
        if admission.winner is not None or admission.admitted:
            self._maker_wake.set()  # the maker saw the winner's targets connected
        if not admission.admitted:
            return False
        if admission.displaced is not None:
            self._sleeve.remove_connection(admission.displaced.result.conn_id)
            admission.displaced.close("duplicate connection")
        self._sleeve.add_connection(conn.result, conn.stream.remote[0], self)
        log.info("%s[%s] connection added %s(%s)%s", "->" if conn.outbound else "<-",
                 conn.address, conn.remote, conn.result.remote_nickname,
                 " encrypted" if conn.result.encrypted else "")
        # Before the routes list the new neighbour: it gets our digest, not everything.
        self._topology_gossiper.speaks_digests(
            conn.remote, conn.result.version >= DIGEST_PROTOCOL_VERSION)
        self._local_connections_changed()
        # After the routes list the new neighbour, so a stale record can be sent to it.
        self._topology_gossiper.note_direct_peer(
            conn.remote, conn.result.remote_nickname, conn.result.remote_uid,
            conn.result.remote_short_id)
        self._flush_gossip()
        return True

    def _unregister(self, conn: _Connection) -> None:
        reason = conn.close_reason or "connection closed"
        if self._conns.remove(conn, trio.current_time()):
            self._sleeve.remove_connection(conn.result.conn_id)
            self._counters["connection_terminations"] += 1
            log.info("%s[%s %s(%s)] connection deleted: %s", "->" if conn.outbound else "<-",
                     conn.address, conn.remote, conn.result.remote_nickname, reason)
            self._local_connections_changed()
        self._maker_wake.set()

    async def _serve(self, conn: _Connection, leftover: bytes) -> None:
        with conn.scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, conn)
                    nursery.start_soon(self._timer, conn)
                    self._deliver(conn, conn.session.receive_data(leftover, trio.current_time()))
                    await self._reader(conn)
            except* RemoteProtocolError as group:
                conn.close(_error_text(_first_leaf(group)))
            except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
                conn.close(_error_text(_first_leaf(group)))
            except* Exception as group:  # a bug provoked by this peer: it alone pays
                exc = _first_leaf(group)
                log.error("%s[%s %s] internal error on this connection", _arrow(conn.outbound),
                          conn.address, conn.remote, exc_info=exc)
                conn.close(f"internal error: {type(exc).__name__}: {exc}")

    async def _reader(self, conn: _Connection) -> None:
        while True:
            data = await conn.stream.receive_some(READ_SIZE)
            if not data:
                raise RemoteProtocolError("connection closed by peer")
            messages = conn.session.receive_data(data, trio.current_time())
            self._deliver(conn, messages)
            conn.wake.set()

    async def _writer(self, conn: _Connection) -> None:
        while True:
            out = conn.session.data_to_send()
            if not out:
                # Pull gossip only once the previous bytes are out: whatever arrived
                # meanwhile has merged into one pending item per channel and source.
                self._pull_gossip(conn)
                out = conn.session.data_to_send()
            if out:
                await conn.stream.send_all(out)
            else:
                await conn.wake.wait()

    async def _timer(self, conn: _Connection) -> None:
        while True:
            deadline = conn.session.deadline()
            await trio.sleep_until(deadline if math.isfinite(deadline) else math.inf)
            conn.session.handle_timer(trio.current_time())
            conn.wake.set()

    def _deliver(self, conn: _Connection, messages: list[Message]) -> None:
        for msg in messages:
            if isinstance(msg, ConnectionEstablished):
                self._sleeve.remote_heard_us(conn.result.conn_id)
                continue
            self.gossip.receive(conn.remote, gossip_event(msg))
        self._flush_gossip()

    # ------------------------------------------------------------------ gossip, topology

    def _flush_gossip(self) -> None:
        """Wake the writers of neighbours that have gossip waiting; they pull it."""
        for neighbour in self.gossip.pending():
            conn = self._conns.get(neighbour)
            if conn is not None:
                conn.wake.set()

    def _pull_gossip(self, conn: _Connection) -> None:
        for event in self.gossip.messages_for(conn.remote):
            if not conn.session.send(gossip_message(event)):
                self._counters["send_queue_drops"] += 1

    def _local_connections_changed(self) -> None:
        """Our connections changed: neighbours now, the gossiped record once per burst.

        A router joining a mesh of N adds N connections (and establishes them) within
        moments; publishing one topology version per change would make every peer
        decode 2N versions of our record. The routes loop publishes them together.
        """
        self.gossip.set_routes(self._routes, frozenset(self._conns.peers()))
        self._local_dirty = True
        self._routes_wake.set()
        self._flush_gossip()

    def _mark_topology_changed(self) -> None:
        """Called by the topology gossiper inside ``gossip.receive``: recompute later."""
        self._routes_wake.set()

    async def _routes_loop(self) -> None:
        """Recompute routes and discovery once per burst of topology changes.

        A burst of gossip (a mesh forming, a partition healing) changes the topology
        hundreds of times in a moment; like Weave's router, we coalesce them. Until the
        recomputation, relays follow the previous trees; periodic gossip repairs any
        update that a stale tree failed to carry.
        """
        while True:
            await self._routes_wake.wait()
            if self._local_dirty:
                self._local_dirty = False
                self._topology_gossiper.set_local_connections(
                    self._conns.local_connections(self._sleeve.established))
            removed = self.topology.garbage_collect()
            if removed:
                log.info("removed unreachable peers: %s", ", ".join(map(str, sorted(removed))))
            self._routes = compute_routes(self.name, self.topology.peers())
            self.gossip.set_routes(self._routes, frozenset(self._conns.peers()))
            self._sleeve.set_routes(self._routes)
            for listener in self._routes_listeners:
                listener()
            self._maker.set_discovered(self.topology.discovery_addresses(self.config.port))
            self._maker.set_connected_peers(self._conns.peers())
            self._maker_wake.set()
            self._gossip_wake.set()  # new neighbours may move the gossip deadline
            self._flush_gossip()
            await trio.sleep(ROUTES_MIN_INTERVAL)

    # ------------------------------------------------------------------ overlay events

    def on_heard(self, conn_id: int) -> None:
        """The sleeve hears this connection's UDP heartbeats: tell the peer over TCP."""
        conn = self._conns.by_id(conn_id)
        if conn is not None and conn.session.send(ConnectionEstablished()):
            conn.wake.set()

    def on_established(self, conn_id: int) -> None:
        """UDP works both ways: the connection is established; gossip it (routes follow)."""
        conn = self._conns.by_id(conn_id)
        if conn is not None:
            log.info("%s[%s %s(%s)] connection fully established",
                     "->" if conn.outbound else "<-", conn.address, conn.remote,
                     conn.result.remote_nickname)
            self._local_connections_changed()

    def on_failed(self, conn_id: int, reason: str) -> None:
        """The UDP path failed: close the connection; the maker retries."""
        conn = self._conns.by_id(conn_id)
        if conn is not None:
            conn.close(reason)

    # ------------------------------------------------------------------ status

    def statistics(self) -> MeshStatistics:
        """The mesh's part of ``status`` and the report."""
        overlay = OverlayView(self._sleeve.established, self._sleeve.overlay_mtu,
                              self._sleeve.overlay_name)
        return mesh_statistics(
            self._conns, overlay, maker=self._maker, topology=self.topology,
            routes=self._routes, counters=self._counters,
            password=self.config.password is not None,
            now=trio.current_time(), wall_now=time.time(),
        )


def _arrow(outbound: bool) -> str:
    return "->" if outbound else "<-"


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def dial_error_text(ip: str, port: int, exc: OSError) -> str:
    """Weave's words for a failed dial: ``dial tcp :0->IP:PORT: connect: REASON``.

    trio reports ``all attempts to connect to ... failed`` with the real errors chained
    (an ExceptionGroup as ``__cause__``): the first with an errno gives the reason.
    """
    host = f"[{ip}]" if ":" in ip else ip
    root = _root_os_error(exc)
    reason = os.strerror(root.errno).lower() if root.errno else _os_error_text(root)
    return f"dial tcp :0->{host}:{port}: connect: {reason}"


def _root_os_error(exc: OSError) -> OSError:
    todo: list[BaseException] = [exc]
    while todo:
        found = todo.pop(0)
        if isinstance(found, OSError) and found.errno is not None:
            return found
        if isinstance(found, BaseExceptionGroup):
            todo.extend(found.exceptions)
        if found.__cause__ is not None:
            todo.append(found.__cause__)
    return exc


def _os_error_text(exc: OSError) -> str:
    """``connection refused`` rather than ``[Errno 111] Connection refused``."""
    return (exc.strerror or str(exc)).lower()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return _os_error_text(exc)
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        return "connection reset by peer"
    return str(exc) or type(exc).__name__

