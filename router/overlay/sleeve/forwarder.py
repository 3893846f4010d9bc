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
replayed, for another peer, from a stranger) is a counted drop, never an exception.

Who may move the path (``docs/wire-format.md``, "Heartbeat sources and replay"):

* *Encrypted*: the MAC proves the sender. An authentic heartbeat newer than any before
  moves :attr:`HeartbeatPath.remote_addr` to its source (a peer behind a NAT that
  rebinds), and :meth:`HeartbeatPath.take_address_changed` tells the driver to
  re-program the data plane. A forged one fails the MAC and changes nothing; the replay
  window (:class:`~router.crypto.nonces.ReplayWindow`) moves only after the MAC.
* *Unencrypted*: nothing proves the sender, so the address is the one the mesh gave
  (the TCP connection's remote IP, the UDP port of the peer's Hello) and never moves; a
  heartbeat from any other source is a ``source`` drop before anything looks at it. The
  window is a :class:`~router.crypto.nonces.PlainReplayWindow`: a forged counter far
  ahead cannot make the real heartbeats look old.

:class:`~router.overlay.sleeve.demux.SleeveDemux` holds the paths of all connections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from router.crypto.keys import SessionKey
from router.crypto.nonces import PlainReplayWindow, ReplayWindow
from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import PeerName
from router.overlay.sleeve.packet import (
    FRAME_COUNTER_BASE,
    HEADER_SIZE,
    HeartbeatKind,
    PacketType,
    decode_header_untrusted,
    decode_heartbeat_body_untrusted,
    encode_heartbeat,
    encode_probe,
    encode_probe_ack,
    open_packet_untrusted,
)
from router.overlay.sleeve.pmtu import PathMtuProber, PmtuSettings, PmtuStatistics

__all__ = ["HeartbeatPath", "PathStatistics"]

Address = tuple[str, int]
Datagram = tuple[bytes, Address]

#: Drop reasons a path counts (fixed, so the counters stay bounded).
PATH_DROP_REASONS = (
    "truncated",  # shorter than a header
    "malformed",  # bad header or body
    "wrong_conn_id",  # another connection's packet
    "unexpected_type",  # not a heartbeat (frames go to the data plane)
    "source",  # unencrypted, and not from the peer's registered address and port
    "replay",  # counter seen before or older than the replay window
    "auth",  # did not open with the session key
    "wrong_peer",  # names do not match this connection
    "failed",  # arrived after the path failed
    "ack_queue_full",  # a probe arrived with MAX_PENDING_ACKS acks already waiting
)
MAX_PENDING_ACKS = 8  # probe acks waiting to be sent, per path


@dataclass(frozen=True)
class PathStatistics:
    """A snapshot of one connection's UDP path."""

    conn_id: int
    remote: str  # peer name
    remote_addr: Address  # where heartbeats go (encrypted: moved by authentic heartbeats)
    state: str  # "pending", "established" or "failed"
    heard: bool
    heard_by_remote: bool
    sent: int
    received: int
    drops: Mapping[str, int]
    address_changes: int
    failed_reason: str
    pmtu: PmtuStatistics | None = None  # None until verify_path_mtu


@dataclass(frozen=True)
class _Heard:
    """What an accepted heartbeat tells its path."""

    kind: HeartbeatKind
    size: int  # of a probe or ack
    newest: bool  # authenticated, and above every counter accepted before


def _normal(addr: Address) -> Address:
    """``(host, port)`` of a socket address (IPv6 ones have 4 fields), an IPv4-mapped IPv6
    host as plain IPv4, so the same peer always compares equal."""
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return host, port


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
        self._remote_addr = _normal(remote_addr)
        self._key = key
        self._sender_high = sender_high
        self._fast = fast_interval
        self._slow = slow_interval
        self._timeout = timeout
        self._replay = (ReplayWindow(replay_window) if key is not None
                        else PlainReplayWindow(replay_window))
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
        self._address_changed = False
        self._stranger: Address | None = None  # the last source of a ``source`` drop
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
        """Where heartbeats go: the peer's UDP address (see the module docstring)."""
        return self._remote_addr

    def take_address_changed(self) -> bool:
        """True once after an authentic heartbeat moved :attr:`remote_addr`."""
        changed, self._address_changed = self._address_changed, False
        return changed

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
            self._fail(f"no UDP heartbeat from peer for {t}{self._strangers()}")
        elif self._heard:
            self._fail(f"peer did not receive our UDP heartbeats within {t}")
        elif self._heard_by_remote:
            self._fail(f"no UDP heartbeat received from peer within {t}{self._strangers()}")
        else:
            self._fail(f"no UDP heartbeat exchanged with peer within {t}{self._strangers()}")

    def _strangers(self) -> str:
        """Why heartbeats may have gone unheard: some came from another address."""
        if self._stranger is None:
            return ""
        n, (ip, port), (mine, my_port) = self._drops["source"], self._stranger, self._remote_addr
        return (f" ({n} from other addresses ignored, the last from {ip}:{port}: unencrypted,"
                f" only {mine}:{my_port} counts)")

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
        source = _normal(addr)
        reason, heartbeat = self._check(data, source)
        if heartbeat is None:
            self._drops[reason] += 1
            if reason == "source":
                self._stranger = source
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
        if heartbeat.newest and source != self._remote_addr:  # authentic (see _check)
            self._remote_addr = source
            self._address_changes += 1
            self._address_changed = True

    def _check(self, data: bytes, source: Address) -> tuple[str, _Heard | None]:
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
        if self._key is None and source != self._remote_addr:
            return "source", None
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
        newest = self._key is not None and header.counter > self._replay.highest
        self._replay.accept(header.counter)
        return "", _Heard(heartbeat.kind, heartbeat.size, newest)

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
