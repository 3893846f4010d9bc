"""The data plane's trio driver: the bridge, the capture TAP and the native threads.

Stages:

1. **plumb**    the bridge ``weave`` (``--mtu``) and the TAP ``vethwe-pcap`` (IFF_VNET_HDR,
   TSO offloads) enslaved to it, through the kernel port; the bridge is left in place
   on stop (containers on this host keep talking), ``reset`` removes it.
2. **start**    ``Dataplane.start(tap_fd, udp_fd)``: the native TX thread reads the TAP in
   batches, looks up MACs and routes, seals and sends; the RX thread receives, opens,
   delivers into the TAP or relays. Python never sees a frame.
3. **tables**   the sleeve sets a peer's session (address, key, path MTU) once its UDP path
   is established and removes it when the connection goes; the mesh sets routes.
4. **upcalls**  datagrams that are not frames (heartbeats) come back through a bounded
   native queue, drained here on a worker thread and handed to the sleeve's demux;
   fastdp heartbeat frames read from the TAP (``set_heartbeats``) go to fastdp's runner.
5. **fastdp**   ``write_tap`` injects fastdp heartbeats into the TAP; ``set_kernel_peers``
   names the peers the kernel delivers from, whose sleeve frames are then not delivered.

With the ``reference`` backend (asked for by name only) there are no native threads:
a trio task pumps the TAP and the socket through ``egress``/``ingress`` in Python, about
100 times slower; it exists so the pure-Python twin runs end to end.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping

import trio

from router.crypto.ciphers import SECRETBOX, offered
from router.dataplane.backend import Address, DataplaneLike, Statistics, load_backend
from router.kernel.plumbing import TAP_NAME, bridge_plan, tap_plan
from router.kernel.port import KernelPort, TapDevice, execute
from router.mesh.names import PeerName

log = logging.getLogger("weave-router.dataplane")

UPCALL_WAIT = 0.5  # seconds a worker thread waits for upcalls before checking for cancel
UPCALL_BATCH = 256
READ_SIZE = 65536 + 64  # a TAP element: vnet header + GSO super-frame

ControlSink = Callable[[bytes, Address, float], None]
HeartbeatSink = Callable[[bytes], None]  # a fastdp heartbeat frame read from the TAP


class DataplaneService:
    """Bridge, TAP and the sleeve's per-packet pipeline for one router."""

    def __init__(self, kernel: KernelPort, *, name: PeerName, mtu: int,
                 backend: str = "native") -> None:
        self._kernel = kernel
        self._mtu = mtu
        self._backend_name = backend
        self._backend = load_backend(backend)  # ConfigError if the extension is missing
        self._dp: DataplaneLike = self._backend.Dataplane(int(name))
        self._on_heartbeat: HeartbeatSink | None = None
        self._tap_fd: int | None = None  # reference backend: write_tap's frames go here

    async def run(self, udp_fd: int, on_control: ControlSink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Plumb, start the pipeline on ``udp_fd``, feed control datagrams to ``on_control``."""
        await execute(self._kernel, bridge_plan(await self._kernel.snapshot(), mtu=self._mtu))
        tap = await self._kernel.open_tap(TAP_NAME)
        self._tap_fd = tap.fileno()
        try:
            await execute(self._kernel, tap_plan(await self._kernel.snapshot(), mtu=self._mtu))
            with contextlib.ExitStack() as stack:
                await self._serve(tap, udp_fd, on_control, stack, task_status)
        finally:
            self._dp.stop()
            self._tap_fd = None
            tap.close()

    async def _serve(self, tap: TapDevice, udp_fd: int, on_control: ControlSink,
                     stack: contextlib.ExitStack, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            if self._backend.THREADED:
                self._dp.start(tap.fileno(), udp_fd)
                nursery.start_soon(self._drain_upcalls, on_control)
            else:
                sock = stack.enter_context(socket.socket(fileno=os.dup(udp_fd)))
                sock.setblocking(False)
                nursery.start_soon(self._pump_tap, tap.fileno(), sock)
                nursery.start_soon(self._pump_udp, tap.fileno(), sock, on_control)
                nursery.start_soon(self._timers)
            log.info("data plane (%s) running on %s (mtu %d)", self._backend_name,
                     TAP_NAME, self._mtu)
            task_status.started()

    # ------------------------------------------------------------------ tables

    @property
    def ciphers(self) -> tuple[str, ...]:
        """The frame ciphers this data plane offers peers, best first."""
        return tuple(c for c in offered() if c in self._backend.CIPHERS)

    def set_peer(self, name: PeerName, conn_id: int, addr: Address, key: bytes | None,
                 max_datagram: int, cipher: str = SECRETBOX) -> None:
        """``key``: the frame key for ``cipher`` (router.crypto.ciphers.frame_key)."""
        self._dp.set_peer(int(name), conn_id, addr, key, max_datagram, cipher)

    def remove_peer(self, name: PeerName) -> None:
        self._dp.remove_peer(int(name))

    def set_routes(self, unicast: Mapping[PeerName, PeerName],
                   broadcast: Mapping[PeerName, Iterable[PeerName]]) -> None:
        self._dp.set_routes({int(d): int(h) for d, h in unicast.items()},
                            {int(s): [int(h) for h in hops] for s, hops in broadcast.items()})

    def statistics(self) -> Statistics:
        return self._dp.statistics()

    # ------------------------------------------------------------------ fastdp

    def set_heartbeats(self, mac: bytes | None, sink: HeartbeatSink | None) -> None:
        """Frames of ethertype 0x88B5 to ``mac`` from the TAP go to ``sink`` (on the trio
        thread) instead of over the sleeve; None: none."""
        self._dp.set_heartbeat_mac(mac)
        self._on_heartbeat = sink

    def set_kernel_peers(self, names: Iterable[PeerName]) -> None:
        """The peers on fastdp with us: the kernel delivers their frames, so their frames
        arriving over the sleeve are relayed but not delivered (no frame twice)."""
        self._dp.set_kernel_peers([int(n) for n in names])

    def write_tap(self, frame: bytes) -> bool:
        """Write an Ethernet frame into the TAP (a fastdp heartbeat): the bridge switches
        it as it would a container's. False if it was not written."""
        ok = self._dp.write_tap(frame)
        if not self._backend.THREADED:  # no threads: the frames wait in take_local()
            for local in self._dp.take_local():
                if self._tap_fd is None:
                    return False
                try:
                    os.write(self._tap_fd, local)
                except OSError:
                    return False
        return ok

    # ------------------------------------------------------------------ loops

    async def _drain_upcalls(self, on_control: ControlSink) -> None:
        control = self._backend.UPCALL_CONTROL
        heartbeat = self._backend.UPCALL_HEARTBEAT
        while True:
            upcalls = await trio.to_thread.run_sync(
                self._dp.get_upcalls, UPCALL_WAIT, UPCALL_BATCH, abandon_on_cancel=True)
            now = trio.current_time()
            for kind, addr, data in upcalls:
                if kind == control:
                    on_control(data, addr, now)
                elif kind == heartbeat and self._on_heartbeat is not None:
                    self._on_heartbeat(data)

    async def _timers(self) -> None:
        """Reference backend only: expire partial frames and old MACs (native threads
        keep their own timers)."""
        while True:
            deadline = self._dp.deadline()
            await trio.sleep(min(1.0, max(0.0, deadline - time.monotonic()))
                             if math.isfinite(deadline) else 1.0)
            self._dp.handle_timer(time.monotonic())

    async def _pump_tap(self, tap_fd: int, sock: socket.socket) -> None:
        """Reference backend only: captured frames through ``egress`` in Python."""
        while True:
            await trio.lowlevel.wait_readable(tap_fd)
            try:
                element = os.read(tap_fd, READ_SIZE)
            except BlockingIOError:
                continue
            for addr, datagram in self._dp.egress([element], time.monotonic()):
                _sendto(sock, datagram, addr)
            for frame in self._dp.take_local():  # ICMP "fragmentation needed"
                os.write(tap_fd, frame)
            self._heartbeats_from_reference()

    async def _pump_udp(self, tap_fd: int, sock: socket.socket, on_control: ControlSink) -> None:
        """Reference backend only: received datagrams through ``ingress`` in Python."""
        control = self._backend.UPCALL_CONTROL
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                continue
            frames, relays, upcalls = self._dp.ingress([((addr[0], addr[1]), data)],
                                                       time.monotonic())
            for frame in frames:
                os.write(tap_fd, frame)
            for to, datagram in relays:
                _sendto(sock, datagram, to)
            now = trio.current_time()
            for kind, src, raw in upcalls:
                if kind == control:
                    on_control(raw, src, now)


    def _heartbeats_from_reference(self) -> None:
        """Reference backend only: heartbeats egress() passed up wait in get_upcalls()."""
        if self._on_heartbeat is None:
            return
        for kind, _addr, data in self._dp.get_upcalls(0.0):
            if kind == self._backend.UPCALL_HEARTBEAT:
                self._on_heartbeat(data)


def _sendto(sock: socket.socket, datagram: bytes, addr: Address) -> None:
    try:
        sock.sendto(datagram, addr)
    except OSError as exc:  # a lost datagram, as UDP promises nothing more
        if exc.errno not in (errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH):
            raise
