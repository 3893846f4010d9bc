"""Per-connection UDP path state: heartbeats prove the sleeve path works (sans-IO).

Every mesh connection has a :class:`HeartbeatPath`. From the moment the handshake ends
it sends UDP heartbeats (:mod:`router.overlay.sleeve.packet`) to the peer, every
``fast_interval`` while the path is *pending*, every ``slow_interval`` once it is
*established*::

    pending --(heard: their heartbeats reach us)------------+
       |    --(remote_heard_us: their TCP ConnectionEstablished)--+--> established
       |                                                            |
       +-- neither both within ``timeout`` --> failed <-- nothing heard for ``timeout``

* *heard*: an authentic heartbeat from the peer arrived (path remote -> us works). The
  first time, :meth:`HeartbeatPath.take_newly_heard` returns True once: the driver then
  sends the TCP message ``ConnectionEstablished``.
* *remote_heard_us*: the peer's ``ConnectionEstablished`` arrived (path us -> remote
  works); the driver calls :meth:`HeartbeatPath.remote_heard_us`.
* *failed*: :attr:`HeartbeatPath.failed_reason` says why; the driver closes the connection.

Path MTU: once the driver hands the path to the data plane it calls
:meth:`HeartbeatPath.verify_path_mtu` with the route's estimate; a
:class:`~router.overlay.sleeve.pmtu.PathMtuProber` then searches the largest datagram the
path carries with padded probe heartbeats, and this path answers the peer's probes with
acks (at most :data:`MAX_PENDING_ACKS` waiting; more are counted drops).
:attr:`HeartbeatPath.path_mtu` is the result; :meth:`HeartbeatPath.take_path_mtu_changed`
tells the driver to re-program the data plane.

Anything wrong in a datagram (truncated, malformed, another connection's, forged,
replayed, for another peer) is a counted drop, never an exception. The source address
of authentic heartbeats is learnt, so replies follow the peer through NAT.

:class:`SleeveDemux` holds the paths of all connections by connection id and routes the
datagrams of the one UDP socket the trio driver owns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from router.crypto.keys import SessionKey
from router.crypto.nonces import ReplayWindow
from router.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from router.mesh.names import PeerName
from router.overlay.sleeve.packet import (
    FRAME_COUNTER_BASE,
    HEADER_SIZE,
    HeartbeatKind,
    PacketType,
    SleeveHeartbeat,
    decode_header_untrusted,
    decode_heartbeat_body_untrusted,
    encode_heartbeat,
    encode_probe,
    encode_probe_ack,
    open_packet_untrusted,
)
from router.overlay.sleeve.pmtu import PathMtuProber, PmtuSettings, PmtuStatistics

__all__ = ["DemuxStatistics", "HeartbeatPath", "PathStatistics", "SleeveDemux"]

Address = tuple[str, int]
Datagram = tuple[bytes, Address]

#: Drop reasons a path counts (fixed, so the counters stay bounded).
PATH_DROP_REASONS = (
    "truncated",  # shorter than a header
    "malformed",  # bad header or body
    "wrong_conn_id",  # another connection's packet
    "unexpected_type",  # not a heartbeat (frames go to the data plane)
    "replay",  # counter seen before or older than the replay window
    "auth",  # did not open with the session key
    "wrong_peer",  # names do not match this connection
    "failed",  # arrived after the path failed
    "ack_queue_full",  # a probe arrived with MAX_PENDING_ACKS acks already waiting
)
#: Drop reasons the demux counts before a path is found.
DEMUX_DROP_REASONS = ("truncated", "malformed", "unknown_conn_id")
MAX_PATHS = 4096  # paths in one demux (conn_limit is far lower)
MAX_PENDING_ACKS = 8  # probe acks waiting to be sent, per path


@dataclass(frozen=True)
class PathStatistics:
    """A snapshot of one connection's UDP path."""

    conn_id: int
    remote: str  # peer name
    remote_addr: Address  # where heartbeats go (learnt from the peer's heartbeats)
    state: str  # "pending", "established" or "failed"
    heard: bool
    heard_by_remote: bool
    sent: int
    received: int
    drops: Mapping[str, int]
    address_changes: int
    failed_reason: str
    pmtu: PmtuStatistics | None = None  # None until verify_path_mtu


class HeartbeatPath:
    """The UDP heartbeat state machine of one connection (see the module docstring)."""

    def __init__(
        self,
        *,
        local: PeerName,
        remote: PeerName,
        conn_id: int,
        remote_addr: Address,
        key: SessionKey | None,
        sender_high: bool,
        now: float,
        fast_interval: float = 0.5,
        slow_interval: float = 10.0,
        timeout: float = 60.0,
        replay_window: int = 1024,
        pmtu: PmtuSettings | None = None,
    ) -> None:
        if local == remote:
            raise LocalProtocolError("a heartbeat path needs two different peers")
        if not 0 < fast_interval <= slow_interval < timeout:
            raise LocalProtocolError("need 0 < fast_interval <= slow_interval < timeout")
        self._local = local
        self._remote = remote
        self._conn_id = conn_id
        self._remote_addr = (remote_addr[0], remote_addr[1])
        self._key = key
        self._sender_high = sender_high
        self._fast = fast_interval
        self._slow = slow_interval
        self._timeout = timeout
        self._replay = ReplayWindow(replay_window)
        self._counter = 0  # the next counter to send
        self._started = now
        self._next_send = now  # the first heartbeat goes out at once
        self._last_heard = now
        self._heard = False
        self._newly_heard = False
        self._heard_by_remote = False
        self._failed_reason = ""
        self._sent = 0
        self._received = 0
        self._address_changes = 0
        self._drops = dict.fromkeys(PATH_DROP_REASONS, 0)
        self._pmtu_settings = pmtu
        self._prober: PathMtuProber | None = None
        self._pending_acks: list[int] = []  # lengths of probes to acknowledge
        self._acks_due = math.inf  # when the first of them arrived

    # -- state ----------------------------------------------------------------------------

    @property
    def local(self) -> PeerName:
        """Our peer name."""
        return self._local

    @property
    def remote(self) -> PeerName:
        """The peer at the other end."""
        return self._remote

    @property
    def conn_id(self) -> int:
        """The connection id in every packet of this connection."""
        return self._conn_id

    @property
    def remote_addr(self) -> Address:
        """Where heartbeats go: the peer's UDP address, as last seen."""
        return self._remote_addr

    @property
    def heard(self) -> bool:
        """Whether authentic heartbeats from the peer reach us."""
        return self._heard

    @property
    def heard_by_remote(self) -> bool:
        """Whether the peer said (TCP ``ConnectionEstablished``) that ours reach it."""
        return self._heard_by_remote

    @property
    def established(self) -> bool:
        """UDP works both ways (and the path has not failed)."""
        return self._heard and self._heard_by_remote and not self._failed_reason

    @property
    def failed_reason(self) -> str:
        """Why the path failed; empty while it has not."""
        return self._failed_reason

    def take_newly_heard(self) -> bool:
        """True exactly once, after the first authentic heartbeat from the peer."""
        newly, self._newly_heard = self._newly_heard, False
        return newly

    def remote_heard_us(self) -> None:
        """The peer's ``ConnectionEstablished`` arrived: our heartbeats reach it."""
        self._heard_by_remote = True

    # -- path MTU -------------------------------------------------------------------------

    def verify_path_mtu(self, estimate: int, now: float) -> None:
        """Search the path MTU from ``estimate`` (the route's) now; again with a new one."""
        if self._prober is None:
            self._prober = PathMtuProber(estimate, now, self._pmtu_settings)
        else:
            self._prober.restart(now, estimate)

    @property
    def path_mtu(self) -> int:
        """The path MTU to send with: verified, or the estimate until then; 0 before
        :meth:`verify_path_mtu`."""
        return self._prober.path_mtu if self._prober is not None else 0

    @property
    def path_mtu_verified(self) -> bool:
        """Whether a probe search has confirmed :attr:`path_mtu`."""
        return self._prober is not None and self._prober.verified > 0

    def take_path_mtu_changed(self) -> bool:
        """True once after :attr:`path_mtu` changed (re-program the data plane)."""
        return self._prober is not None and self._prober.take_changed()

    def message_too_big(self, size: int, now: float) -> None:
        """Our kernel refused to send a datagram of ``size`` bytes of ours (EMSGSIZE)."""
        if self._prober is not None:
            self._prober.message_too_big(size, now)

    # -- timers and output ----------------------------------------------------------------

    def deadline(self) -> float:
        """The next heartbeat or failure check; ``math.inf`` once failed."""
        if self._failed_reason:
            return math.inf
        soonest = min(self._next_send, self._failure_deadline())
        if self._pending_acks:
            soonest = min(soonest, self._acks_due)
        if self._prober is not None:
            soonest = min(soonest, self._prober.deadline())
        return soonest

    def handle_timer(self, now: float) -> None:
        """Fail the path if it did not establish, or went silent, within ``timeout``;
        run the path MTU search's timers."""
        if self._failed_reason:
            return
        if self._prober is not None:
            self._prober.handle_timer(now)
        if now < self._failure_deadline():
            return
        t = f"{self._timeout:g} s"
        if self.established:
            self._fail(f"no UDP heartbeat from peer for {t}")
        elif self._heard:
            self._fail(f"peer did not receive our UDP heartbeats within {t}")
        elif self._heard_by_remote:
            self._fail(f"no UDP heartbeat received from peer within {t}")
        else:
            self._fail(f"no UDP heartbeat exchanged with peer within {t}")

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Heartbeats, probe acks and probes due at ``now``, with the address to send to."""
        if self._failed_reason:
            return []
        out: list[Datagram] = []
        if now >= self._next_send:
            self._next_send = now + (self._slow if self.established else self._fast)
            self._emit(out, HeartbeatKind.PLAIN, 0)
        acks, self._pending_acks = self._pending_acks, []
        for size in acks:
            self._emit(out, HeartbeatKind.ACK, size)
        if self._prober is not None:
            for size in self._prober.probes_to_send(now):
                self._emit(out, HeartbeatKind.PROBE, size)
        return out

    def _emit(self, out: list[Datagram], kind: HeartbeatKind, size: int) -> None:
        """Append one heartbeat of ``kind`` under the next counter, unless they ran out."""
        if self._failed_reason:
            return
        if self._counter >= FRAME_COUNTER_BASE:  # above it, the data plane's frames count
            self._fail("UDP packet counter exhausted")
            return
        args = (self._conn_id, self._counter, self._local, self._remote)
        key, high = self._key, self._sender_high
        if kind is HeartbeatKind.PROBE:
            data = encode_probe(*args, key=key, sender_high=high, size=size)
        elif kind is HeartbeatKind.ACK:
            data = encode_probe_ack(*args, key=key, sender_high=high, acked=size)
        else:
            data = encode_heartbeat(*args, key=key, sender_high=high)
        self._counter += 1
        self._sent += 1
        out.append((data, self._remote_addr))

    # -- input ----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Take one datagram; anything not an authentic heartbeat for us is a counted drop."""
        reason, heartbeat = self._check(data)
        if heartbeat is None:
            self._drops[reason] += 1
            return
        self._received += 1
        if heartbeat.kind is HeartbeatKind.PROBE:
            if not self._pending_acks:
                self._acks_due = now
            if len(self._pending_acks) < MAX_PENDING_ACKS:
                self._pending_acks.append(len(data))
            else:
                self._drops["ack_queue_full"] += 1
        elif heartbeat.kind is HeartbeatKind.ACK and self._prober is not None:
            self._prober.receive_ack(heartbeat.size, now)
        self._last_heard = max(self._last_heard, now)
        if not self._heard:
            self._heard = True
            self._newly_heard = True
        source = (addr[0], addr[1])
        if source != self._remote_addr:
            self._remote_addr = source
            self._address_changes += 1

    def _check(self, data: bytes) -> tuple[str, SleeveHeartbeat | None]:
        """Validate, authenticate and record one datagram: the heartbeat, or why not."""
        if self._failed_reason:
            return "failed", None
        if len(data) < HEADER_SIZE:
            return "truncated", None
        try:
            header = decode_header_untrusted(data)
        except DecodeError:
            return "malformed", None
        if header.conn_id != self._conn_id:
            return "wrong_conn_id", None
        if header.type is not PacketType.HEARTBEAT:
            return "unexpected_type", None
        if not self._replay.check(header.counter):
            return "replay", None
        try:
            _, body = open_packet_untrusted(data, key=self._key, sender_high=not self._sender_high)
        except DecodeError:
            return ("auth" if self._key is not None else "malformed"), None
        try:
            heartbeat = decode_heartbeat_body_untrusted(body)
        except DecodeError:
            return "malformed", None
        if heartbeat.kind is HeartbeatKind.PROBE and heartbeat.size != len(data):
            return "malformed", None
        if heartbeat.sender != self._remote or heartbeat.receiver != self._local:
            return "wrong_peer", None
        self._replay.accept(header.counter)
        return "", heartbeat

    # -- status ---------------------------------------------------------------------------

    def statistics(self) -> PathStatistics:
        """A frozen snapshot of this path."""
        if self._failed_reason:
            state = "failed"
        else:
            state = "established" if self.established else "pending"
        return PathStatistics(
            conn_id=self._conn_id,
            remote=str(self._remote),
            remote_addr=self._remote_addr,
            state=state,
            heard=self._heard,
            heard_by_remote=self._heard_by_remote,
            sent=self._sent,
            received=self._received,
            drops=dict(self._drops),
            address_changes=self._address_changes,
            failed_reason=self._failed_reason,
            pmtu=self._prober.statistics() if self._prober is not None else None,
        )

    def _failure_deadline(self) -> float:
        if self.established:
            return self._last_heard + self._timeout
        return self._started + self._timeout

    def _fail(self, reason: str) -> None:
        self._failed_reason = reason


@dataclass(frozen=True)
class DemuxStatistics:
    """A snapshot of the sleeve demultiplexer and of each of its paths."""

    received: int  # datagrams handed to a path
    drops: Mapping[str, int]  # dropped before reaching a path, by reason
    paths: tuple[PathStatistics, ...]


class SleeveDemux:
    """The heartbeat paths of all connections, by connection id, behind one UDP socket."""

    def __init__(self, *, max_paths: int = MAX_PATHS) -> None:
        self._paths: dict[int, HeartbeatPath] = {}
        self._max_paths = max_paths
        self._received = 0
        self._drops = dict.fromkeys(DEMUX_DROP_REASONS, 0)

    def add(self, path: HeartbeatPath) -> None:
        """Route the datagrams of ``path.conn_id`` to ``path``.

        RemoteProtocolError if another connection already has that id (the peer chose its
        half of the id badly: close the new connection); LocalProtocolError beyond
        ``max_paths``.
        """
        if path.conn_id in self._paths:
            raise RemoteProtocolError(f"connection id {path.conn_id:#018x} already in use")
        if len(self._paths) >= self._max_paths:
            raise LocalProtocolError(f"more than {self._max_paths} sleeve paths")
        self._paths[path.conn_id] = path

    def remove(self, conn_id: int) -> HeartbeatPath | None:
        """Forget a connection's path (None if it was not there)."""
        return self._paths.pop(conn_id, None)

    def get(self, conn_id: int) -> HeartbeatPath | None:
        """The path of a connection, if any."""
        return self._paths.get(conn_id)

    def __len__(self) -> int:
        return len(self._paths)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Route one datagram to its path by connection id; never raises."""
        if len(data) < HEADER_SIZE:
            self._drops["truncated"] += 1
            return
        try:
            header = decode_header_untrusted(data)
        except DecodeError:
            self._drops["malformed"] += 1
            return
        path = self._paths.get(header.conn_id)
        if path is None:
            self._drops["unknown_conn_id"] += 1
            return
        self._received += 1
        path.receive_datagram(data, addr, now)

    def message_too_big(self, data: bytes, now: float) -> None:
        """Our kernel refused to send ``data`` (one of ours) with EMSGSIZE; never raises."""
        try:
            header = decode_header_untrusted(data)
        except DecodeError:
            return
        path = self._paths.get(header.conn_id)
        if path is not None:
            path.message_too_big(len(data), now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Every heartbeat, probe and probe ack due at ``now``, across all paths."""
        out: list[Datagram] = []
        for path in self._paths.values():
            out.extend(path.datagrams_to_send(now))
        return out

    def deadline(self) -> float:
        """The earliest deadline of any path; ``math.inf`` if none."""
        return min((p.deadline() for p in self._paths.values()), default=math.inf)

    def handle_timer(self, now: float) -> None:
        """Run every path's failure check."""
        for path in self._paths.values():
            path.handle_timer(now)

    def statistics(self) -> DemuxStatistics:
        """A frozen snapshot of the demux and all its paths."""
        return DemuxStatistics(
            received=self._received,
            drops=dict(self._drops),
            paths=tuple(p.statistics() for p in self._paths.values()),
        )
