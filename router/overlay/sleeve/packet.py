"""The sleeve UDP packet codec: one fixed header, then the payload, sealed when encrypted.

Every datagram on UDP ``--port`` (6783) has this layout; all integers big-endian. The
Cython data plane implements the same layout for frames (types 2 and 3, see
``docs/wire-format.md``, "Sleeve frames")::

    offset  size  field
         0     1  version        1
         1     1  type           1 = heartbeat, 2 = frames, 3 = fragment; others refused
         2     2  reserved       0 (a receiver refuses anything else)
         4     8  connection id  agreed in the TCP handshake (XOR of both sides' random ids)
        12     8  counter        per sender and connection: 0, 1, 2, ... never repeated
        20     -  payload        unencrypted: the body
                                 encrypted:   MAC (16) || ciphertext (4 + len(body))

Encrypted connections seal ``header[0:4] || body`` with the connection's session key
(NaCl secretbox) under ``make_nonce(Transport.UDP, sender_high, counter)``, where
``sender_high`` says whether the *sender's* peer name is the greater. The key binds the
connection id and the nonce binds the counter and the direction; the repeated first four
header bytes bind version and type, so no header bit can be changed unnoticed.
Unencrypted connections carry the same header and the bare body (no MAC).

Heartbeat body (type 1)::

         0     6  sender peer name
         6     6  receiver peer name (a heartbeat for another peer is refused)
        12     -  nothing, or zero bytes (a plain heartbeat), or a path MTU record:
        12     1  kind           1 = probe (answer with an ack), 2 = ack of a probe; 0 = plain
        13     1  reserved       0
        14     2  size           probe: this datagram's length (UDP payload bytes);
                                 ack:   the length of the probe as received
        16     -  padding        zero bytes: pads a probe to the size under test

A plain heartbeat is 32 bytes (52 sealed); a probe or ack at least 36 (56 sealed). A
kind above 2, a reserved byte or padding not zero, a size of 0, a record cut short, an
ack with padding, or a probe whose size is not its datagram's length is refused.

Datagrams are at most :data:`MAX_DATAGRAM` bytes (the IPv4 UDP payload limit). The
format's numbers (sizes, version, types, ``FRAME_COUNTER_BASE``) live in
:mod:`router.wire.sleeve`; this module re-exports the ones its callers use.
``decode_*_untrusted`` raise only :class:`~router.errors.DecodeError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from router.crypto.keys import SessionKey
from router.crypto.nonces import MAX_COUNTER, Transport, make_nonce
from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import PeerName
from router.wire.sleeve import (
    BOUND_SIZE,
    FRAME_COUNTER_BASE,
    HEADER_SIZE,
    HEARTBEAT_BODY_SIZE,
    MAX_DATAGRAM,
    PMTU_RECORD_SIZE,
    SEALED_OVERHEAD,
    VERSION,
    PacketType,
)
from router.wire.sleeve import HEADER as _HEADER

__all__ = [
    "FRAME_COUNTER_BASE",
    "HEADER_SIZE",
    "HEARTBEAT_BODY_SIZE",
    "MAX_DATAGRAM",
    "PMTU_RECORD_SIZE",
    "SEALED_OVERHEAD",
    "VERSION",
    "HeartbeatKind",
    "PacketHeader",
    "PacketType",
    "SleeveHeartbeat",
    "decode_header_untrusted",
    "decode_heartbeat_body_untrusted",
    "decode_heartbeat_untrusted",
    "encode_heartbeat",
    "encode_packet",
    "encode_probe",
    "encode_probe_ack",
    "heartbeat_min_size",
    "open_packet_untrusted",
    "probe_min_size",
]

_NAMES = struct.Struct(">6s6s")
_RECORD = struct.Struct(">BBH")


_TYPES = frozenset(int(t) for t in PacketType)


class HeartbeatKind(IntEnum):
    """Byte 12 of a heartbeat body (absent or 0 in a plain heartbeat)."""

    PLAIN = 0
    PROBE = 1  # padded to a size under test; the receiver answers with an ACK
    ACK = 2  # carries the length of the probe it answers


@dataclass(frozen=True)
class PacketHeader:
    """The clear header of a sleeve packet."""

    type: PacketType
    conn_id: int
    counter: int


@dataclass(frozen=True)
class SleeveHeartbeat:
    """A heartbeat body: who sent it, for whom, how many zero bytes pad it, and its kind.

    ``size`` is 0 for a plain heartbeat, a probe's own datagram length, or the length of
    the probe an ack answers (UDP payload bytes).
    """

    sender: PeerName
    receiver: PeerName
    padding: int = 0
    kind: HeartbeatKind = HeartbeatKind.PLAIN
    size: int = 0


def encode_packet(
    ptype: PacketType,
    conn_id: int,
    counter: int,
    body: bytes,
    *,
    key: SessionKey | None,
    sender_high: bool,
) -> bytes:
    """A complete datagram; sealed when ``key`` is given. LocalProtocolError if too big."""
    if not (0 <= conn_id <= MAX_COUNTER and 0 <= counter <= MAX_COUNTER):
        raise LocalProtocolError(f"connection id or counter out of range: {conn_id}, {counter}")
    header = _HEADER.pack(VERSION, ptype, 0, conn_id, counter)
    if key is None:
        payload = body
    else:
        payload = key.seal(make_nonce(Transport.UDP, sender_high, counter), header[:4] + body)
    if HEADER_SIZE + len(payload) > MAX_DATAGRAM:
        raise LocalProtocolError(f"sleeve packet of {HEADER_SIZE + len(payload)} bytes is too big")
    return header + payload


def decode_header_untrusted(data: bytes) -> PacketHeader:
    """The clear header of a datagram (not authenticated yet); DecodeError if malformed."""
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"sleeve packet of {len(data)} bytes is shorter than its header")
    if len(data) > MAX_DATAGRAM:
        raise DecodeError(f"sleeve packet of {len(data)} bytes is too big")
    version, ptype, reserved, conn_id, counter = _HEADER.unpack_from(data)
    if version != VERSION:
        raise DecodeError(f"unknown sleeve packet version {version}")
    if ptype not in _TYPES:
        raise DecodeError(f"unknown sleeve packet type {ptype}")
    if reserved:
        raise DecodeError(f"reserved sleeve header bits set: {reserved:#06x}")
    return PacketHeader(PacketType(ptype), conn_id, counter)


def open_packet_untrusted(
    data: bytes, *, key: SessionKey | None, sender_high: bool
) -> tuple[PacketHeader, bytes]:
    """Header and authenticated body of a datagram; DecodeError if malformed or forged.

    ``sender_high`` is the *sender's* view: True when the remote's name is the greater.
    Replay screening is the caller's job (the counter is in the header).
    """
    header = decode_header_untrusted(data)
    payload = bytes(data[HEADER_SIZE:])
    if key is None:
        return header, payload
    if len(payload) < SEALED_OVERHEAD:
        raise DecodeError(f"sealed sleeve payload of {len(payload)} bytes is truncated")
    plain = key.open(make_nonce(Transport.UDP, sender_high, header.counter), payload)
    if plain[:BOUND_SIZE] != bytes(data[:BOUND_SIZE]):
        raise DecodeError("sleeve header does not match its sealed copy")
    return header, plain[BOUND_SIZE:]


def heartbeat_min_size(encrypted: bool) -> int:
    """The size of an unpadded heartbeat datagram (32 bytes, 52 when sealed)."""
    return HEADER_SIZE + HEARTBEAT_BODY_SIZE + (SEALED_OVERHEAD if encrypted else 0)


def probe_min_size(encrypted: bool) -> int:
    """The size of an unpadded probe or ack datagram (36 bytes, 56 when sealed)."""
    return heartbeat_min_size(encrypted) + PMTU_RECORD_SIZE


def encode_heartbeat(
    conn_id: int,
    counter: int,
    sender: PeerName,
    receiver: PeerName,
    *,
    key: SessionKey | None,
    sender_high: bool,
    size: int = 0,
) -> bytes:
    """A plain heartbeat datagram, zero-padded to ``size`` bytes when ``size`` is given.

    LocalProtocolError if ``size`` is below :func:`heartbeat_min_size` or above
    :data:`MAX_DATAGRAM`.
    """
    minimum = heartbeat_min_size(key is not None)
    padding = _padding(size, minimum) if size else 0
    body = _names(sender, receiver) + bytes(padding)
    return encode_packet(
        PacketType.HEARTBEAT, conn_id, counter, body, key=key, sender_high=sender_high
    )


def encode_probe(
    conn_id: int,
    counter: int,
    sender: PeerName,
    receiver: PeerName,
    *,
    key: SessionKey | None,
    sender_high: bool,
    size: int,
) -> bytes:
    """A path MTU probe: a datagram of exactly ``size`` bytes (UDP payload).

    LocalProtocolError if ``size`` is below :func:`probe_min_size` or above
    :data:`MAX_DATAGRAM`.
    """
    padding = _padding(size, probe_min_size(key is not None))
    body = _names(sender, receiver) + _RECORD.pack(HeartbeatKind.PROBE, 0, size) + bytes(padding)
    return encode_packet(
        PacketType.HEARTBEAT, conn_id, counter, body, key=key, sender_high=sender_high
    )


def encode_probe_ack(
    conn_id: int,
    counter: int,
    sender: PeerName,
    receiver: PeerName,
    *,
    key: SessionKey | None,
    sender_high: bool,
    acked: int,
) -> bytes:
    """The answer to a probe that arrived as a datagram of ``acked`` bytes (unpadded)."""
    if not 0 < acked <= MAX_DATAGRAM:
        raise LocalProtocolError(f"acked probe size {acked} outside 1..{MAX_DATAGRAM}")
    body = _names(sender, receiver) + _RECORD.pack(HeartbeatKind.ACK, 0, acked)
    return encode_packet(
        PacketType.HEARTBEAT, conn_id, counter, body, key=key, sender_high=sender_high
    )


def _names(sender: PeerName, receiver: PeerName) -> bytes:
    return _NAMES.pack(sender.to_bytes(6, "big"), receiver.to_bytes(6, "big"))


def _padding(size: int, minimum: int) -> int:
    if not minimum <= size <= MAX_DATAGRAM:
        raise LocalProtocolError(f"heartbeat size {size} outside {minimum}..{MAX_DATAGRAM}")
    return size - minimum


def decode_heartbeat_body_untrusted(body: bytes) -> SleeveHeartbeat:
    """A heartbeat body (after opening); DecodeError if malformed (see the module docstring).

    A probe's size is not compared with its datagram here (the body does not know it):
    :func:`decode_heartbeat_untrusted` does that, as must any other caller.
    """
    if len(body) < HEARTBEAT_BODY_SIZE:
        raise DecodeError(f"heartbeat body of {len(body)} bytes is truncated")
    sender, receiver = _NAMES.unpack_from(body)
    names = (PeerName(int.from_bytes(sender, "big")), PeerName(int.from_bytes(receiver, "big")))
    rest = bytes(body[HEARTBEAT_BODY_SIZE:])
    if not rest or rest[0] == HeartbeatKind.PLAIN:
        if rest.count(0) != len(rest):
            raise DecodeError("heartbeat padding is not zero")
        return SleeveHeartbeat(*names, len(rest))
    if len(rest) < PMTU_RECORD_SIZE:
        raise DecodeError(f"path MTU record of {len(rest)} bytes is truncated")
    kind, reserved, size = _RECORD.unpack_from(rest)
    padding = rest[PMTU_RECORD_SIZE:]
    if kind not in (HeartbeatKind.PROBE, HeartbeatKind.ACK):
        raise DecodeError(f"unknown heartbeat kind {kind}")
    if reserved or not size:
        raise DecodeError(f"bad path MTU record: reserved {reserved}, size {size}")
    if kind == HeartbeatKind.ACK and padding:
        raise DecodeError("a probe ack is never padded")
    if padding.count(0) != len(padding):
        raise DecodeError("heartbeat padding is not zero")
    return SleeveHeartbeat(*names, len(padding), HeartbeatKind(kind), size)


def decode_heartbeat_untrusted(
    data: bytes, *, key: SessionKey | None, sender_high: bool
) -> tuple[PacketHeader, SleeveHeartbeat]:
    """Open a heartbeat datagram; DecodeError if malformed, forged or not a heartbeat."""
    header, body = open_packet_untrusted(data, key=key, sender_high=sender_high)
    if header.type is not PacketType.HEARTBEAT:
        raise DecodeError(f"expected a heartbeat, got sleeve packet type {header.type.name}")
    heartbeat = decode_heartbeat_body_untrusted(body)
    if heartbeat.kind is HeartbeatKind.PROBE and heartbeat.size != len(data):
        raise DecodeError(f"probe says {heartbeat.size} bytes, arrived with {len(data)}")
    return header, heartbeat
