"""The pure-Python twin of ``router._fastpath``: same API, same bytes, no threads.

Everything the compiled data plane does per packet, written for clarity: the sleeve
frames format (``docs/wire-format.md``, "Sleeve frames"), packing, fragmentation and
reassembly, the MAC table, routing and relaying, replay windows, sealing with the agreed
cipher (:class:`router.crypto.ciphers.FrameCipher`) and ICMP "fragmentation needed"
(:mod:`router.dataplane.icmp`); the format's constants and size arithmetic live in
:mod:`router.wire.sleeve`, its record codec in :mod:`router.dataplane.frames`.
``tests/fastpath/`` runs one suite against both and compares outputs byte for byte.
The twin is sans-IO: ``start()`` is refused (``THREADED`` is False) and a driver pumps
frames through :meth:`Dataplane.egress` / :meth:`Dataplane.ingress`. Select it with
``load_backend("reference")`` (``router/dataplane/backend.py``); it is about 100 times
slower than the extension.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from router.crypto.ciphers import PREFERENCE, SECRETBOX, FrameCipher
from router.crypto.keys import KEY_SIZE
from router.crypto.nonces import PlainReplayWindow, ReplayWindow
from router.dataplane.backend import Address, Datagram, PeerCounters, Statistics, Upcall
from router.dataplane.frames import (
    VNET_HOST,
    VNET_WIRE,
    address_arg,
    mac_arg,
    peer_name_arg,
    record,
    same_address,
    split_records,
    swap_vnet,
    vnet_ok,
)
from router.dataplane.icmp import frag_needed
from router.errors import DecodeError, LocalProtocolError
from router.wire.sleeve import (
    BODY,
    FLAG_BROADCAST,
    FRAG,
    FRAME_COUNTER_BASE,
    HEADER,
    HEADER_SIZE,
    INITIAL_TTL,
    MAX_DATAGRAM,
    MAX_ELEMENT_SIZE,
    MAX_FRAGMENTS,
    MAX_FRAME_SIZE,
    MIN_DATAGRAM,
    MIN_FRAME,
    SEALED_OVERHEAD,
    VERSION,
    VNET_HEADER_SIZE,
    PacketType,
    frame_mtu,
)

__all__ = [
    "CIPHERS",
    "DROP_REASONS",
    "HEARTBEAT_ETHERTYPE",
    "MAX_DATAGRAM_SIZE",
    "MAX_ELEMENT_SIZE",
    "MAX_FRAME_SIZE",
    "MIN_DATAGRAM_SIZE",
    "THREADED",
    "TTL",
    "UPCALL_CONTROL",
    "UPCALL_HEARTBEAT",
    "UPCALL_UNKNOWN_CONN",
    "VNET_HEADER_SIZE",
    "Dataplane",
]

THREADED = False
CIPHERS = PREFERENCE  # the ciphers set_peer takes (router.crypto.ciphers)
DROP_REASONS = ("no_route", "auth", "replay", "too_big", "queue_full", "malformed", "ttl",
                "reassembly", "local_dst", "loop", "tap_write", "send", "source",
                "kernel_peer")
UPCALL_CONTROL = 1  # a non-frame packet (heartbeat) for the sleeve demux
UPCALL_UNKNOWN_CONN = 2  # frames for a connection id the data plane does not know
UPCALL_HEARTBEAT = 3  # a fastdp heartbeat frame from the TAP (no vnet header)
HEARTBEAT_ETHERTYPE = 0x88B5  # router/overlay/fastdp/heartbeat.py
HEARTBEAT_UPCALL_LIMIT = 128  # heartbeat upcalls waiting at most (half the native queue)
_HEARTBEAT_TYPE = HEARTBEAT_ETHERTYPE.to_bytes(2, "big")
MIN_DATAGRAM_SIZE = MIN_DATAGRAM  # the backend API's names for router.wire.sleeve's
MAX_DATAGRAM_SIZE = MAX_DATAGRAM
TTL = INITIAL_TTL
MAX_PEERS = 4096
MAX_BCAST_POOL = 65536
MAX_MACS = 8192
MAC_SWEEP_INTERVAL = 60.0  # seconds
REASM_SLOTS = 64
REASM_PER_PEER = 8  # reassembly slots one neighbour may hold
RETIRED_SESSIONS = 256  # removed sessions whose counters are remembered


@dataclass(eq=False)
class _Session:
    conn_id: int
    key: FrameCipher | None
    high: bool  # our name is the greater: the direction byte of our nonces
    max_datagram: int
    addr: Address
    send_counter: int = FRAME_COUNTER_BASE
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    counters: PeerCounters = field(default_factory=lambda: PeerCounters(
        frames_out=0, bytes_out=0, datagrams_out=0, frames_in=0, bytes_in=0, datagrams_in=0))


@dataclass(eq=False)
class _Open:
    header: bytes
    records: list[bytes]
    length: int  # datagram bytes so far, sleeve header and seal overhead included


@dataclass(eq=False)
class _Reasm:
    neighbour: int
    counter: int  # the element's: its nonce
    length: int  # payload bytes
    fsize: int
    count: int
    started: float
    seq: int  # allocation order: the oldest has the least
    parts: dict[int, bytes] = field(default_factory=dict)


class Dataplane:
    """Pure-Python twin of ``router._fastpath.Dataplane`` (see that class's stub)."""

    def __init__(
        self, ourself: int, *, mac_expiry: float = 600.0, reassembly_timeout: float = 1.0
    ) -> None:
        self._ourself = peer_name_arg(ourself, "ourself")
        if not mac_expiry > 0 or not reassembly_timeout > 0:
            raise LocalProtocolError("mac_expiry and reassembly_timeout must be positive")
        self._mac_expiry = mac_expiry
        self._reasm_timeout = reassembly_timeout
        self._sessions: dict[int, _Session] = {}
        self._retired: dict[int, _Session] = {}  # oldest first
        self._unicast: dict[int, int] = {}
        self._broadcast: dict[int, list[int]] = {}
        self._macs: dict[int, tuple[int, float]] = {}
        self._next_sweep = math.inf
        self._reasm: list[_Reasm | None] = [None] * REASM_SLOTS
        self._reasm_seq = 0
        self._open: dict[int, _Open] = {}  # insertion order = the order they were opened
        self._outs: list[Datagram] = []
        self._delivered: list[bytes] = []
        self._upcalls: list[Upcall] = []
        self._drops = dict.fromkeys(DROP_REASONS, 0)
        self._totals: dict[str, int] = dict.fromkeys(
            ("frames_captured", "frames_delivered", "frames_relayed", "upcalls",
             "mac_table_full", "icmp_frag_needed"), 0)
        self._local: list[bytes] = []
        self._heartbeat_mac = b""  # frames to it with HEARTBEAT_ETHERTYPE go up
        self._kernel_peers: frozenset[int] = frozenset()  # origins fastdp delivers
        self._heartbeats: list[Upcall] = []  # waiting for get_upcalls()

    @property
    def ourself(self) -> int:
        """Our peer name (48-bit int)."""
        return self._ourself

    @property
    def running(self) -> bool:
        """Always False: the twin has no threads."""
        return False

    # ---- tables ----------------------------------------------------------------------

    def set_peer(
        self, name: int, conn_id: int, addr: Address, key: bytes | None, max_datagram: int,
        cipher: str = SECRETBOX,
    ) -> None:
        """Add or update the session with neighbour ``name`` (see the extension's stub)."""
        name = peer_name_arg(name, "name")
        if name == self._ourself:
            raise LocalProtocolError("a peer cannot have our own name")
        if not isinstance(conn_id, int) or not 0 <= conn_id < (1 << 64):
            raise LocalProtocolError(f"connection id out of range: {conn_id!r}")
        if key is not None and (not isinstance(key, bytes) or len(key) != KEY_SIZE):
            raise LocalProtocolError(f"a session key has {KEY_SIZE} bytes")
        if cipher not in CIPHERS:
            raise LocalProtocolError(f"unknown cipher {cipher!r}; known: {', '.join(CIPHERS)}")
        if not isinstance(max_datagram, int) or not (
            MIN_DATAGRAM_SIZE <= max_datagram <= MAX_DATAGRAM_SIZE
        ):
            raise LocalProtocolError(
                f"max_datagram must be {MIN_DATAGRAM_SIZE}..{MAX_DATAGRAM_SIZE}, "
                f"got {max_datagram!r}")
        host, port = address_arg(addr)
        if any(s.conn_id == conn_id for n, s in self._sessions.items() if n != name):
            raise LocalProtocolError(f"connection id {conn_id:#x} belongs to another peer")
        old = self._sessions.get(name)
        skey = FrameCipher(cipher, key) if key is not None else None
        retired = self._retired.pop(name, None)
        if old is None or old.conn_id != conn_id or old.key != skey:
            self._purge_reasm(name)
            old = _Session(conn_id, skey, self._ourself > name, max_datagram, addr,
                           replay=ReplayWindow() if skey is not None else PlainReplayWindow())
            if retired is not None and (retired.conn_id, retired.key) == (conn_id, skey):
                old.send_counter = retired.send_counter
                old.replay = retired.replay  # the same connection again: no nonce reuse
            self._sessions[name] = old
        old.max_datagram = max_datagram
        old.addr = (host, port)

    def remove_peer(self, name: int) -> None:
        """End the session with ``name`` (no-op if there is none); remember its counters."""
        session = self._sessions.pop(peer_name_arg(name, "name"), None)
        if session is not None:
            self._purge_reasm(name)
            self._retired.pop(name, None)
            self._retired[name] = session
            while len(self._retired) > RETIRED_SESSIONS:
                del self._retired[next(iter(self._retired))]

    def set_routes(
        self, unicast: Mapping[int, int], broadcast: Mapping[int, Iterable[int]]
    ) -> None:
        """Replace the routes: ``unicast`` dest -> next hop, ``broadcast`` origin -> hops."""
        pairs = {peer_name_arg(d, "destination"): peer_name_arg(h, "next hop")
                 for d, h in unicast.items()}
        trees = {peer_name_arg(o, "origin"): sorted({peer_name_arg(h, "hop") for h in hops})
                 for o, hops in broadcast.items()}
        total = sum(len(h) for h in trees.values())
        if total > MAX_BCAST_POOL:
            raise LocalProtocolError(
                f"broadcast routes name {total} hops, more than {MAX_BCAST_POOL}")
        names = set(pairs) | set(pairs.values()) | set(trees) | set(self._sessions)
        names.update(h for hops in trees.values() for h in hops)
        if len(names) > MAX_PEERS:
            raise LocalProtocolError(f"peer table full ({MAX_PEERS} peers)")
        self._unicast, self._broadcast = pairs, trees

    def learn_mac(self, mac: bytes, peer: int, now: float) -> bool:
        """Remember ``mac`` behind ``peer`` (ourself: local); False if the table is full."""
        return self._learn(mac_arg(mac), peer_name_arg(peer, "peer"), now)

    def forget_mac(self, mac: bytes) -> bool:
        """Forget ``mac``; True if it was in the table."""
        return self._macs.pop(mac_arg(mac), None) is not None

    def lookup_mac(self, mac: bytes, now: float) -> int | None:
        """The peer behind ``mac`` (ourself for local MACs), None if unknown or expired."""
        return self._lookup(mac_arg(mac), now)

    def _learn(self, mac: int, peer: int, now: float) -> bool:
        if mac not in self._macs and len(self._macs) >= MAX_MACS:
            self._totals["mac_table_full"] += 1
            return False
        self._macs[mac] = (peer, now)
        if self._next_sweep == math.inf:
            self._next_sweep = now + MAC_SWEEP_INTERVAL
        return True

    def _lookup(self, mac: int, now: float) -> int | None:
        entry = self._macs.get(mac)
        if entry is None or not now - entry[1] < self._mac_expiry:
            return None
        return entry[0]

    def _route(self, dest: int) -> int | None:
        hop = self._unicast.get(dest)
        return hop if hop is not None and hop in self._sessions else None

    # ---- batches -------------------------------------------------------------------------

    def set_heartbeat_mac(self, mac: bytes | None) -> None:
        """Frames from the TAP of ethertype 0x88B5 to ``mac`` go up (see the stub)."""
        m = 0 if mac is None else mac_arg(mac)
        self._heartbeat_mac = m.to_bytes(6, "big") if m else b""  # 0: none, as native

    def set_kernel_peers(self, names: Iterable[int]) -> None:
        """Origins the kernel delivers: relayed, not delivered (see the stub)."""
        peers = frozenset(peer_name_arg(n, "kernel peer") for n in names)
        if len(peers) > MAX_PEERS:
            raise LocalProtocolError(f"{len(peers)} kernel peers, more than {MAX_PEERS}")
        self._kernel_peers = peers

    def write_tap(self, frame: bytes) -> bool:
        """No TAP here: the frame (zero vnet header) waits for take_local()."""
        frame = bytes(frame)
        if not MIN_FRAME <= len(frame) <= MAX_FRAME_SIZE:
            raise LocalProtocolError(
                f"a frame is {MIN_FRAME} to {MAX_FRAME_SIZE} bytes, not {len(frame)}")
        self._local.append(bytes(VNET_HEADER_SIZE) + frame)
        return True

    def take_local(self) -> list[bytes]:
        """Frames egress() made for the local TAP since the last call (see the stub)."""
        local, self._local = self._local, []
        return local

    def egress(self, frames: Sequence[bytes], now: float) -> list[Datagram]:
        """Captured frames (vnet header + Ethernet frame each) -> [(addr, datagram)]."""
        for element in frames:
            self._egress_one(bytes(element), now)
        return self._finish()

    def ingress(
        self, datagrams: Sequence[tuple[Address, bytes]], now: float
    ) -> tuple[list[bytes], list[Datagram], list[Upcall]]:
        """[(addr, datagram)] -> (frames for the TAP, relayed datagrams, upcalls)."""
        self._expire_reasm(now)
        for addr, data in datagrams:
            self._ingress_one(addr, bytes(data), now)
        delivered, upcalls = self._delivered, self._upcalls
        self._delivered, self._upcalls = [], []
        return delivered, self._finish(), upcalls

    def deadline(self) -> float:
        """When handle_timer() is next due (inf if never)."""
        starts = [r.started + self._reasm_timeout for r in self._reasm if r is not None]
        return min([*starts, self._next_sweep])

    def handle_timer(self, now: float) -> None:
        """Expire partial frames and sweep expired MACs that are due at ``now``."""
        self._expire_reasm(now)
        if now >= self._next_sweep:
            self._macs = {m: e for m, e in self._macs.items() if now - e[1] < self._mac_expiry}
            self._next_sweep = now + MAC_SWEEP_INTERVAL if self._macs else math.inf

    def statistics(self) -> Statistics:
        """Counters: totals, drops by reason, and per neighbour with a session."""
        return {
            "frames_captured": self._totals["frames_captured"],
            "frames_delivered": self._totals["frames_delivered"],
            "frames_relayed": self._totals["frames_relayed"],
            "upcalls": self._totals["upcalls"],
            "macs": len(self._macs),
            "mac_table_full": self._totals["mac_table_full"],
            "icmp_frag_needed": self._totals["icmp_frag_needed"],
            "egressed_by_rx_thread": 0,  # no threads
            "drops": dict(self._drops),
            "peers": {n: s.counters.copy() for n, s in self._sessions.items()},
        }

    # ---- threads (none) -------------------------------------------------------------------

    def start(self, tap_fd: int, udp_fd: int) -> None:
        """Refused: the twin runs only when a driver calls egress()/ingress()."""
        raise LocalProtocolError(
            "the reference data plane has no threads; drive it with egress()/ingress()")

    def stop(self) -> None:
        """Nothing to stop."""

    def get_upcalls(self, timeout: float, limit: int = 256) -> list[Upcall]:
        """Heartbeat frames egress() passed up (ingress() returns its own upcalls)."""
        out, self._heartbeats = self._heartbeats[:limit], self._heartbeats[limit:]
        return out

    # ---- egress ---------------------------------------------------------------------------

    def _egress_one(self, element: bytes, now: float) -> None:
        self._totals["frames_captured"] += 1
        if len(element) < VNET_HEADER_SIZE + MIN_FRAME:
            self._drops["malformed"] += 1
            return
        if len(element) > MAX_ELEMENT_SIZE:
            self._drops["too_big"] += 1
            return
        if element[VNET_HEADER_SIZE + 12:VNET_HEADER_SIZE + 14] == _HEARTBEAT_TYPE and \
                element[VNET_HEADER_SIZE:VNET_HEADER_SIZE + 6] == self._heartbeat_mac:
            self._heartbeat_up(element[VNET_HEADER_SIZE:])
            return
        element = swap_vnet(element, VNET_HOST, VNET_WIRE)
        frame = element[VNET_HEADER_SIZE:]
        if not frame[6] & 1:
            self._learn(int.from_bytes(frame[6:12], "big"), self._ourself, now)
        dest = None if frame[0] & 1 else self._lookup(int.from_bytes(frame[:6], "big"), now)
        if dest is not None:
            hop = self._route(dest)
            if dest == self._ourself:
                self._drops["local_dst"] += 1
            elif hop is None:
                self._drops["no_route"] += 1
            else:
                session = self._sessions[hop]
                reply = frag_needed(element, frame_mtu(session.max_datagram,
                                                         session.key is not None))
                if reply is None:
                    self._emit(hop, 0, TTL, self._ourself, dest, element)
                else:  # DF and too big for the path: tell the sender
                    self._drops["too_big"] += 1
                    self._totals["icmp_frag_needed"] += 1
                    self._totals["frames_delivered"] += 1
                    self._local.append(reply)
            return
        hops = self._broadcast.get(self._ourself, [])
        if not hops:
            self._drops["no_route"] += 1
        for hop in hops:
            if hop in self._sessions:
                self._emit(hop, FLAG_BROADCAST, TTL, self._ourself, 0, element)
            else:
                self._drops["no_route"] += 1

    def _emit(self, hop: int, flags: int, ttl: int, src: int, dst: int, element: bytes) -> None:
        session = self._sessions[hop]
        base = HEADER_SIZE + (SEALED_OVERHEAD if session.key is not None else 0)
        cap = session.max_datagram
        size = 2 + len(element)  # the record: frame length, then the element
        header = BODY.pack(flags, ttl, src.to_bytes(6, "big"), dst.to_bytes(6, "big"))
        opened = self._open.get(hop)
        if opened is not None:
            if opened.header == header and opened.length + size <= cap:
                opened.records.append(record(element))
                opened.length += size
                session.counters["frames_out"] += 1
                return
            self._close_open(hop)
        if base + BODY.size + size <= cap:
            self._open[hop] = _Open(header, [record(element)], base + BODY.size + size)
            session.counters["frames_out"] += 1
            return
        self._fragment_out(session, header + element)

    def _fragment_out(self, session: _Session, body: bytes) -> None:
        """Seal one body (header + element) once; send its payload as fragments."""
        fsize = session.max_datagram - HEADER_SIZE - FRAG.size
        length = len(body) + (SEALED_OVERHEAD if session.key is not None else 0)
        count = -(-length // fsize)
        if count > MAX_FRAGMENTS:
            self._drops["too_big"] += 1
            return
        counter, session.send_counter = session.send_counter, session.send_counter + 1
        header = HEADER.pack(VERSION, PacketType.FRAGMENT, 0, session.conn_id, counter)
        payload = body
        if session.key is not None:
            payload = session.key.seal(session.high, counter, header[:4] + body)
        for i in range(count):
            part = payload[i * fsize:(i + 1) * fsize]
            datagram = header + FRAG.pack(length, fsize, i, count) + part
            self._outs.append((session.addr, datagram))
            session.counters["datagrams_out"] += 1
            session.counters["bytes_out"] += len(datagram)
        session.counters["frames_out"] += 1

    def _close_open(self, hop: int) -> None:
        opened = self._open.pop(hop)
        self._close(hop, opened.header + b"".join(opened.records))

    def _close(self, hop: int, body: bytes) -> None:
        session = self._sessions[hop]
        counter, session.send_counter = session.send_counter, session.send_counter + 1
        header = HEADER.pack(VERSION, PacketType.FRAMES, 0, session.conn_id, counter)
        datagram = header + (body if session.key is None
                             else session.key.seal(session.high, counter, header[:4] + body))
        self._outs.append((session.addr, datagram))
        session.counters["datagrams_out"] += 1
        session.counters["bytes_out"] += len(datagram)

    def _finish(self) -> list[Datagram]:
        for hop in list(self._open):
            self._close_open(hop)
        outs, self._outs = self._outs, []
        return outs

    # ---- ingress --------------------------------------------------------------------------

    def _ingress_one(self, addr: Address, data: bytes, now: float) -> None:
        if (len(data) < HEADER_SIZE or len(data) > MAX_DATAGRAM_SIZE or data[0] != VERSION
                or data[2:4] != b"\0\0"):
            self._drops["malformed"] += 1
            return
        if data[1] == PacketType.HEARTBEAT:
            self._upcall(UPCALL_CONTROL, addr, data)
            return
        if data[1] not in (PacketType.FRAMES, PacketType.FRAGMENT):
            self._drops["malformed"] += 1
            return
        conn_id, counter = struct.unpack_from(">QQ", data, 4)
        peer = next((n for n, s in self._sessions.items() if s.conn_id == conn_id), None)
        if peer is None:
            self._upcall(UPCALL_UNKNOWN_CONN, addr, data)
            return
        session = self._sessions[peer]
        if session.key is None and not same_address(addr, session.addr):
            self._drops["source"] += 1  # no MAC: the peer's address and port vouch for it
        elif not session.replay.check(counter):
            self._drops["replay"] += 1
        elif data[1] == PacketType.FRAGMENT:
            self._fragment_in(peer, data, counter, now)
        elif session.key is not None and len(data) < HEADER_SIZE + SEALED_OVERHEAD:
            self._drops["malformed"] += 1
        else:
            body = self._unseal(session, data[:4], data[HEADER_SIZE:], counter)
            if body is None:
                return
            session.replay.accept(counter)
            session.counters["datagrams_in"] += 1
            session.counters["bytes_in"] += len(data)
            self._records_in(peer, body, now)

    def _unseal(self, session: _Session, bound: bytes, payload: bytes,
              counter: int) -> bytes | None:
        """The body of a payload: opened (and its bound header checked) if encrypted."""
        if session.key is None:
            return payload
        try:
            plain = session.key.open(not session.high, counter, payload)
        except DecodeError:
            plain = b""
        if plain[:4] != bound:
            self._drops["auth"] += 1
            return None
        return plain[4:]

    def _upcall(self, kind: int, addr: Address, data: bytes) -> None:
        self._upcalls.append((kind, addr, data))
        self._totals["upcalls"] += 1

    def _heartbeat_up(self, frame: bytes) -> None:
        if len(self._heartbeats) >= HEARTBEAT_UPCALL_LIMIT:
            self._drops["queue_full"] += 1
            return
        self._heartbeats.append((UPCALL_HEARTBEAT, ("", 0), frame[:MAX_DATAGRAM_SIZE]))
        self._totals["upcalls"] += 1

    def _body_reason(self, body: bytes) -> str | None:
        """Why a body header is refused, or None."""
        if len(body) < BODY.size:
            return "malformed"
        flags, ttl, src, dst = BODY.unpack_from(body)
        if flags & ~FLAG_BROADCAST or ttl == 0 or (flags & FLAG_BROADCAST and any(dst)):
            return "malformed"
        if int.from_bytes(src, "big") == self._ourself:
            return "loop"
        return None

    def _records_in(self, peer: int, body: bytes, now: float) -> None:
        reason = self._body_reason(body)
        records = split_records(body) if reason is None else None
        if records is None:
            self._drops[reason or "malformed"] += 1
            return
        for element in records:
            self._element(peer, body[:BODY.size], element, now)

    def _fragment_in(self, peer: int, data: bytes, counter: int, now: float) -> None:
        if len(data) <= HEADER_SIZE + FRAG.size:
            self._drops["malformed"] += 1
            return
        session = self._sessions[peer]
        extra = SEALED_OVERHEAD if session.key is not None else 0
        length, fsize, index, count = FRAG.unpack_from(data, HEADER_SIZE)
        part = data[HEADER_SIZE + FRAG.size:]
        if (not extra + BODY.size + VNET_HEADER_SIZE + MIN_FRAME <= length
                <= extra + BODY.size + MAX_ELEMENT_SIZE
                or fsize == 0 or count != -(-length // fsize) or index >= count
                or len(part) != (fsize if index < count - 1 else length - index * fsize)):
            self._drops["malformed"] += 1
            return
        slot = next((i for i, r in enumerate(self._reasm)
                     if r is not None and r.counter == counter and r.neighbour == peer), None)
        if slot is None:
            slot = self._reasm_alloc(peer)
            self._reasm[slot] = _Reasm(peer, counter, length, fsize, count, now, self._reasm_seq)
            self._reasm_seq += 1
        r = self._reasm[slot]
        assert r is not None
        if (r.length, r.fsize) != (length, fsize) or index in r.parts:
            self._drops["malformed"] += 1
            return
        r.parts[index] = part
        if len(r.parts) == r.count:
            self._reasm[slot] = None
            self._reassembled(peer, r, data[:4], b"".join(r.parts[i] for i in range(r.count)), now)

    def _reassembled(self, peer: int, r: _Reasm, bound: bytes, payload: bytes,
                     now: float) -> None:
        session = self._sessions[peer]
        if not session.replay.check(r.counter):
            self._drops["replay"] += 1
            return
        body = self._unseal(session, bound, payload, r.counter)
        if body is None:
            return
        session.replay.accept(r.counter)
        session.counters["datagrams_in"] += r.count
        session.counters["bytes_in"] += r.length + r.count * (HEADER_SIZE + FRAG.size)
        reason = self._body_reason(body)
        if reason is None and not vnet_ok(body[BODY.size:],
                                          len(body) - BODY.size - VNET_HEADER_SIZE):
            reason = "malformed"
        if reason is not None:
            self._drops[reason] += 1
            return
        self._element(peer, body[:BODY.size], body[BODY.size:], now)

    def _reasm_alloc(self, peer: int) -> int:
        """A slot for a new element of ``peer``: one of its own once it holds
        REASM_PER_PEER; else a free one; else one of the neighbour holding most. Of
        those, the one with the fewest pieces received, the oldest among equals."""
        held = {n: 0 for n in self._sessions}
        for r in self._reasm:
            if r is not None:
                held[r.neighbour] = held.get(r.neighbour, 0) + 1
        own = held.get(peer, 0) >= REASM_PER_PEER
        if not own and None in self._reasm:
            return self._reasm.index(None)
        candidates = [(-held[r.neighbour], len(r.parts), r.seq, i)
                      for i, r in enumerate(self._reasm)
                      if r is not None and (not own or r.neighbour == peer)]
        self._drops["reassembly"] += 1
        return min(candidates)[3]

    def _expire_reasm(self, now: float) -> None:
        for i, r in enumerate(self._reasm):
            if r is not None and now - r.started >= self._reasm_timeout:
                self._reasm[i] = None
                self._drops["reassembly"] += 1

    def _purge_reasm(self, peer: int) -> None:
        self._reasm = [None if r is not None and r.neighbour == peer else r for r in self._reasm]

    def _element(self, peer: int, header: bytes, element: bytes, now: float) -> None:
        self._sessions[peer].counters["frames_in"] += 1
        flags, ttl, rsrc, rdst = BODY.unpack_from(header)
        src, dst = int.from_bytes(rsrc, "big"), int.from_bytes(rdst, "big")
        if flags & FLAG_BROADCAST:
            for hop in self._broadcast.get(src, []):
                if hop != peer:
                    self._relay(hop, FLAG_BROADCAST, ttl, src, 0, element)
        elif dst != self._ourself:
            next_hop = self._route(dst)
            if next_hop is None:
                self._drops["no_route"] += 1
            else:
                self._relay(next_hop, 0, ttl, src, dst, element)
            return
        if not element[VNET_HEADER_SIZE + 6] & 1:
            mac = int.from_bytes(element[VNET_HEADER_SIZE + 6:VNET_HEADER_SIZE + 12], "big")
            self._learn(mac, src, now)
        if src in self._kernel_peers:
            self._drops["kernel_peer"] += 1  # the kernel's VXLAN device delivered it
            return
        self._delivered.append(swap_vnet(element, VNET_WIRE, VNET_HOST))
        self._totals["frames_delivered"] += 1

    def _relay(self, hop: int, flags: int, ttl: int, src: int, dst: int, element: bytes) -> None:
        if hop not in self._sessions:
            self._drops["no_route"] += 1
        elif ttl <= 1:
            self._drops["ttl"] += 1
        else:
            self._emit(hop, flags, ttl - 1, src, dst, element)
            self._totals["frames_relayed"] += 1

