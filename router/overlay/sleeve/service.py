"""The sleeve overlay's trio driver: owns UDP ``--port`` and the per-connection paths.

Stages:

1. **receive**  datagrams from the UDP socket go to ``SleeveDemux`` (sans-IO, in
   ``demux.py``), which finds the connection's ``HeartbeatPath`` by connection id and
   counts anything malformed, forged or replayed as a drop.
2. **timers**   the demux says when the next heartbeat is due; due datagrams are sent.
3. **events**   after each step, path state changes go to the mesh: ``on_heard`` (tell the
   peer over TCP that its heartbeats arrive), ``on_established`` (UDP works both ways),
   ``on_failed`` (the path died: close the connection).

With a data plane (a real host; simulations run without), the native receive thread owns
the socket: frames never reach Python, and heartbeats come back as upcalls to
:meth:`SleeveService.receive_control`. Once a path is established its session (address,
key, path MTU) is handed to the data plane; it is removed with the connection.

Path MTU: the data plane starts with the kernel's estimate for the route to the peer
(``IP_MTU`` of a connected UDP socket), so traffic flows at once; the path then verifies
it with probe heartbeats (``pmtu.py``) and the data plane is re-programmed (same
connection id and key: the session goes on) whenever the verified value differs. The
socket sends with ``IP_PMTUDISC_PROBE`` (DF set, the kernel's PMTU cache ignored), so a
probe that crosses is an honest answer; a send refused with EMSGSIZE fails its probe at
once. The data plane cuts frames into datagrams of the path's size, so no frame is too big.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from router.config import MeshConfig
from router.crypto.ciphers import SECRETBOX, choose, frame_key
from router.crypto.keys import SessionKey
from router.dataplane.service import DataplaneService
from router.mesh.handshake import HandshakeResult
from router.mesh.names import PeerName
from router.mesh.routes import Routes
from router.network.service import Datagrams, Network
from router.overlay.sleeve.demux import SleeveDemux
from router.overlay.sleeve.forwarder import HeartbeatPath
from router.overlay.sleeve.pmtu import FEATURE as PMTU_FEATURE
from router.overlay.sleeve.pmtu import peer_answers_probes
from router.overlay.switch import SleeveState
from router.wire.sleeve import MAX_IP_DATAGRAM, max_datagram, overlay_mtu

log = logging.getLogger("weave-router.sleeve")

SOCKET_BUFFER = 16 * 1024 * 1024  # bytes (the kernel doubles it): the threads work in bursts
SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>: SO_SNDBUF past wmem_max (CAP_NET_ADMIN)
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: SO_RCVBUF past rmem_max (CAP_NET_ADMIN)
IP_MTU = 14  # <linux/in.h>: the path MTU of a connected socket
IP_MTU_DISCOVER = 10  # <linux/in.h>: per-socket path MTU discovery mode
IP_PMTUDISC_PROBE = 3  # <linux/in.h>: set DF, ignore the kernel's path MTU cache


class PathEvents(Protocol):
    """What the sleeve tells the mesh about a connection's UDP path."""

    def on_heard(self, conn_id: int) -> None: ...

    def on_established(self, conn_id: int) -> None: ...

    def on_failed(self, conn_id: int, reason: str) -> None: ...


class ConnectionWatcher(Protocol):
    """Who else wants to know about connections (fastdp: ``router.overlay.service``)."""

    def connection_added(self, result: HandshakeResult, remote_ip: str) -> None: ...

    def connection_removed(self, peer: PeerName) -> None: ...

    def overlay_name(self, peer: PeerName) -> str | None: ...  # None: the sleeve's

    def overlay_mtu(self, peer: PeerName) -> int | None: ...  # None: the sleeve's

    def kernel_peers(self) -> frozenset[PeerName]: ...  # the kernel carries our frames

    def on_kernel_peers_changed(self, listener: Callable[[], None]) -> None: ...

    def sleeve_changed(self, peer: PeerName, state: SleeveState, path_mtu: int) -> None: ...


@dataclass(eq=False)
class _Path:
    path: HeartbeatPath
    events: PathEvents
    key: SessionKey | None
    cipher: str = SECRETBOX  # of the frames, agreed from both ends' offers
    probes: bool = True  # the peer answers path MTU probes (it says so in the handshake)
    established: bool = False
    failed: bool = False
    path_mtu: int = 0  # once established


class SleeveService:
    """UDP heartbeats per connection: ``pending`` until the path works both ways."""

    def __init__(self, network: Network, config: MeshConfig, *, name: PeerName,
                 dataplane: DataplaneService | None = None) -> None:
        self._network = network
        self._dataplane = dataplane
        self._config = config
        self._name = name
        self._demux = SleeveDemux()
        self._paths: dict[int, _Path] = {}
        self._wake = trio.Event()
        self._watcher: ConnectionWatcher | None = None
        self._routes: Routes | None = None

    def watch_connections(self, watcher: ConnectionWatcher) -> None:
        """Tell ``watcher`` of every connection added and removed (fastdp's runner); its
        choice of overlay is what ``status connections`` shows."""
        self._watcher = watcher
        watcher.on_kernel_peers_changed(self._program_routes)

    def features(self) -> dict[str, int | str | bool]:
        """What the handshake offers the peer about this overlay."""
        return {"udp_port": self._config.port, "ciphers": " ".join(self._ciphers()),
                PMTU_FEATURE: True}

    def _ciphers(self) -> tuple[str, ...]:
        """The frame ciphers we offer, best first (without a data plane no frames flow)."""
        return self._dataplane.ciphers if self._dataplane is not None else (SECRETBOX,)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = await self._network.open_udp(self._config.host, self._config.port)
        log.info("sleeve listening on UDP %s:%d", *sock.address)
        try:
            async with trio.open_nursery() as nursery:
                if self._dataplane is not None:
                    fd = sock.fileno()
                    _set_buffers(fd)
                    _set_pmtu_probe(fd)
                    await nursery.start(self._dataplane.run, fd, self.receive_control)
                else:
                    nursery.start_soon(self._receive_loop, sock)
                nursery.start_soon(self._send_loop, sock)
                task_status.started()
        finally:
            sock.close()

    # ---------------------------------------------------------------- mesh-facing

    def add_connection(self, result: HandshakeResult, remote_ip: str, events: PathEvents) -> None:
        remote = result.remote_overlays.get("sleeve", {})
        udp_port = int(remote.get("udp_port", self._config.port))
        timings = self._config.timings
        path = HeartbeatPath(
            local=self._name, remote=result.remote_name, conn_id=result.conn_id,
            remote_addr=(remote_ip, udp_port), key=result.overlay_key,
            sender_high=result.sender_high, now=trio.current_time(),
            fast_interval=timings.udp_heartbeat_fast, slow_interval=timings.udp_heartbeat_slow,
            timeout=timings.udp_heartbeat_timeout,
        )
        self._demux.add(path)  # the mesh never passes a connection id already in use
        cipher = choose(self._ciphers(), remote.get("ciphers"))
        self._paths[result.conn_id] = _Path(path, events, key=result.overlay_key, cipher=cipher,
                                            probes=peer_answers_probes(remote))
        if result.overlay_key is not None:
            log.info("sleeve to %s: frames sealed with %s", result.remote_name, cipher)
        if self._watcher is not None:
            self._watcher.connection_added(result, remote_ip)
        self._wake.set()

    def remove_connection(self, conn_id: int) -> None:
        self._demux.remove(conn_id)
        entry = self._paths.pop(conn_id, None)
        if entry is not None and entry.established and self._dataplane is not None:
            self._dataplane.remove_peer(entry.path.remote)
        if entry is not None and self._watcher is not None:
            self._watcher.connection_removed(entry.path.remote)

    def set_routes(self, routes: Routes) -> None:
        """Frames follow the mesh's routes over established connections."""
        self._routes = routes
        self._program_routes()

    def _program_routes(self) -> None:
        """The routes into the data plane; our own broadcasts skip the peers the kernel
        carries them to (fastdp) that pass them on to no one (no route goes through them):
        the kernel's copy is their only one. A fastdp peer that relays still gets the
        sleeve's copy, relays it and does not deliver it (``set_kernel_peers``)."""
        routes = self._routes
        if self._dataplane is None or routes is None:
            return
        broadcast = dict(routes.broadcast)
        kernel = self._watcher.kernel_peers() if self._watcher is not None else frozenset()
        if kernel and self._name in broadcast:
            relays = {hop for dest, hop in routes.unicast.items() if dest != hop}
            broadcast[self._name] = frozenset(
                hop for hop in broadcast[self._name] if hop not in kernel or hop in relays)
        self._dataplane.set_routes(routes.unicast, broadcast)

    def path_mtu(self, conn_id: int) -> int:
        """The underlay path MTU to this connection's peer, as verified by probes (the
        route's estimate until the first search ends); 0 until established."""
        entry = self._paths.get(conn_id)
        return entry.path_mtu if entry is not None and entry.established else 0

    def overlay_mtu(self, conn_id: int) -> int:
        """What ``status connections`` shows as ``mtu=N``, as Weave does: the largest IP
        packet a container sends to this peer in one datagram; 0 until established."""
        entry = self._paths.get(conn_id)
        if entry is None or not entry.established:
            return 0
        if self._watcher is not None:
            mtu = self._watcher.overlay_mtu(entry.path.remote)
            if mtu is not None:
                return mtu
        return overlay_mtu(entry.path_mtu, encrypted=entry.key is not None)

    def overlay_name(self, conn_id: int) -> str:
        """``fastdp`` or ``sleeve``: which overlay carries this connection's traffic."""
        entry = self._paths.get(conn_id)
        name = None
        if entry is not None and self._watcher is not None:
            name = self._watcher.overlay_name(entry.path.remote)
        return name or "sleeve"

    def receive_control(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """A non-frame datagram (a heartbeat) handed up by the data plane."""
        self._demux.receive_datagram(data, addr, now)
        self._dispatch()
        self._wake.set()

    def remote_heard_us(self, conn_id: int) -> None:
        entry = self._paths.get(conn_id)
        if entry is not None:
            entry.path.remote_heard_us()
            self._dispatch()

    def established(self, conn_id: int) -> bool:
        entry = self._paths.get(conn_id)
        return entry is not None and entry.path.established

    # ---------------------------------------------------------------- loops

    async def _receive_loop(self, sock: Datagrams) -> None:
        while True:
            data, addr = await sock.recvfrom(MAX_IP_DATAGRAM)
            self._demux.receive_datagram(data, addr, trio.current_time())
            self._dispatch()
            self._wake.set()  # a reply may now be due

    async def _send_loop(self, sock: Datagrams) -> None:
        while True:
            now = trio.current_time()
            self._demux.handle_timer(now)
            for data, addr in self._demux.datagrams_to_send(now):
                await self._send(sock, data, addr, now)
            self._dispatch()
            deadline = self._demux.deadline()
            with trio.move_on_at(deadline if math.isfinite(deadline) else math.inf):
                await self._wake.wait()
            self._wake = trio.Event()

    def _dispatch(self) -> None:
        """Turn path state changes into mesh events (each reported once), and tell the
        watcher (the overlay switch) of each: heard, established, path MTU, failed.
        Called after every heartbeat datagram and timer: never per frame (frames stay
        in the data plane)."""
        for conn_id, entry in list(self._paths.items()):
            path = entry.path
            mtu = entry.path_mtu
            if path.take_newly_heard():
                entry.events.on_heard(conn_id)
                if not path.established:
                    self._tell(entry, SleeveState.HEARD)
            if path.established and not entry.established:
                entry.established = True
                self._program(entry)
                self._tell(entry, SleeveState.ESTABLISHED)
                mtu = entry.path_mtu
                entry.events.on_established(conn_id)
            elif entry.established and path.take_address_changed():
                self._moved(entry)
            elif entry.established and path.take_path_mtu_changed():
                self._reprogram(entry)
            if entry.established and entry.path_mtu != mtu and not path.failed_reason:
                self._tell(entry, SleeveState.ESTABLISHED)
            if path.failed_reason and not entry.failed:
                entry.failed = True
                log.info("UDP path to %s failed: %s", path.remote, path.failed_reason)
                self._tell(entry, SleeveState.FAILED)
                entry.events.on_failed(conn_id, path.failed_reason)

    def _tell(self, entry: _Path, state: SleeveState) -> None:
        if self._watcher is not None:
            self._watcher.sleeve_changed(entry.path.remote, state, entry.path_mtu)

    def _program(self, entry: _Path) -> None:
        """Hand an established path's session to the data plane with the route's path
        MTU, and start verifying that MTU with probes."""
        path = entry.path
        path.take_address_changed()  # programmed with the address as it is now
        estimate = _route_mtu(path.remote_addr)
        if entry.probes:
            path.verify_path_mtu(estimate, trio.current_time())
            self._wake.set()  # the first probe is due now
        else:  # an older peer would not answer: probing would end at the floor
            log.info("%s does not answer path MTU probes: using the route's MTU %d",
                     path.remote, estimate)
        self._set_peer(entry, estimate)

    def _moved(self, entry: _Path) -> None:
        """An authentic heartbeat came from a new address (a NAT rebinding): frames follow
        it, and the path MTU of the new route is verified afresh."""
        path = entry.path
        log.info("UDP address of %s changed to %s:%d", path.remote, *path.remote_addr)
        path.take_path_mtu_changed()  # the search below starts over
        self._program(entry)

    def _reprogram(self, entry: _Path) -> None:
        """The verified path MTU differs from the one in use: give the data plane the new
        one (same connection id and key, so the session and its counters go on)."""
        log.info("path MTU to %s verified at %d (was %d)",
                 entry.path.remote, entry.path.path_mtu, entry.path_mtu)
        self._set_peer(entry)

    def _set_peer(self, entry: _Path, estimate: int = 0) -> None:
        path = entry.path
        entry.path_mtu = path.path_mtu or estimate
        if self._dataplane is None:
            return
        self._dataplane.set_peer(
            path.remote, path.conn_id, path.remote_addr,
            frame_key(entry.key.raw, entry.cipher) if entry.key is not None else None,
            max_datagram(entry.path_mtu), entry.cipher,
        )

    async def _send(self, sock: Datagrams, data: bytes, addr: tuple[str, int],
                    now: float) -> None:
        """Send one heartbeat; a refusal is logged (EMSGSIZE also fails its probe): the
        path's timeout handles a peer that cannot be reached."""
        try:
            await sock.sendto(data, addr)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                self._demux.message_too_big(data, now)
            log.debug("UDP send of %d bytes to %s:%d failed: %s", len(data), *addr, exc)


def _route_mtu(addr: tuple[str, int]) -> int:
    """The kernel's path MTU towards ``addr`` (1500 if it cannot say)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
            return int(sock.getsockopt(socket.IPPROTO_IP, IP_MTU))
        except OSError:
            return 1500


def _set_pmtu_probe(fd: int) -> None:
    """Send with DF set and ignore the kernel's path MTU cache: probes tell the truth."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)


def _set_buffers(fd: int) -> None:
    """SOCKET_BUFFER for sending and receiving, past ``net.core.[rw]mem_max`` (208 KiB on
    many hosts) where we may (CAP_NET_ADMIN): a burst of 64 KiB super-frames that
    overflows the receive buffer costs whole frames, which TCP pays for dearly."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        for force, option in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                              (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
