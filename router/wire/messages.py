"""Control messages of a mesh TCP connection: typed values and their CBOR schema.

Every message is one CBOR array whose first element is its :class:`MessageTag` and whose
other elements are the fields in the order below (no field names on the wire, no
optional fields: a message with the wrong number of elements is refused)::

    Hello                  [1, version, name, nickname, uid, short_id, conn_id,
                               public_key, trusted, overlays]
    Ready                  [2, conn_id]
    Heartbeat              [3]
    ConnectionEstablished  [4]
    GossipUnicast          [5, channel, src, dst, payload]
    GossipBroadcast        [6, channel, src, payload]
    Gossip                 [7, channel, src, payload]

Field types (CBOR major type in brackets):

* version: uint 1..255; name/src/dst: uint < 2**48 (a :class:`PeerName`);
  uid, conn_id: uint < 2**64; short_id: uint < 2**12
* nickname: text, at most 255 characters
* public_key: 32-byte bstr, or null when the sender has no password
* trusted: bool (the sender trusts the receiver's address, ``--trusted-subnets``)
* overlays: map of overlay name -> map of parameter name -> int | text | bool; names
  1..32 characters of ``[A-Za-z0-9._-]``; at most 16 overlays of 32 parameters each
* channel: text, 1..32 characters of ``[A-Za-z0-9._-]``; payload: bstr (opaque to us)

The same schema checks both directions: :func:`decode_message_untrusted` raises
:class:`DecodeError` for untrusted bytes, :func:`encode_message` raises
:class:`LocalProtocolError` when our own code builds an invalid message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import PeerName
from router.wire import cbor
from router.wire.constants import (
    MAX_CHANNEL_LEN,
    MAX_FRAME_SIZE,
    MAX_NICKNAME_LEN,
    MAX_OVERLAY_KEYS,
    MAX_OVERLAY_NAME_LEN,
    MAX_OVERLAY_STR_LEN,
    MAX_OVERLAYS,
    MESSAGE_MAX_DEPTH,
    MessageTag,
)

__all__ = [
    "ConnectionEstablished",
    "Gossip",
    "GossipBroadcast",
    "GossipUnicast",
    "Heartbeat",
    "Hello",
    "Message",
    "OverlayParams",
    "Ready",
    "decode_message_untrusted",
    "encode_message",
]

OverlayParams = dict[str, int | str | bool]


@dataclass(frozen=True)
class Hello:
    """First frame of each side: who we are and what we can do."""

    version: int
    name: PeerName
    nickname: str
    uid: int
    short_id: int
    conn_id: int
    public_key: bytes | None
    trusted: bool
    overlays: dict[str, OverlayParams]


@dataclass(frozen=True)
class Ready:
    """First session frame of each side (sealed when encrypted): proves the key."""

    conn_id: int


@dataclass(frozen=True)
class Heartbeat:
    """Keeps an idle connection alive; consumed by the session."""


@dataclass(frozen=True)
class ConnectionEstablished:
    """Tells the peer "I receive your UDP heartbeats": its overlay path to us works."""


@dataclass(frozen=True)
class GossipUnicast:
    """Gossip for one peer, relayed hop by hop along unicast routes."""

    channel: str
    src: PeerName
    dst: PeerName
    payload: bytes


@dataclass(frozen=True)
class GossipBroadcast:
    """Gossip for every peer, relayed along the broadcast tree of ``src``."""

    channel: str
    src: PeerName
    payload: bytes


@dataclass(frozen=True)
class Gossip:
    """Gossip for the neighbour only (it merges and re-gossips what is new)."""

    channel: str
    src: PeerName
    payload: bytes


Message = (
    Hello | Ready | Heartbeat | ConnectionEstablished | GossipUnicast | GossipBroadcast | Gossip
)

# ---------------------------------------------------------------------------- schema

_Check = Callable[[object], Any]
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)
_MAX_ITEMS = max(MAX_OVERLAYS, MAX_OVERLAY_KEYS, 16)


def _uint(bits: int, minimum: int = 0) -> _Check:
    limit = 1 << bits

    def check(value: object) -> int:
        if type(value) is not int or not minimum <= value < limit:
            raise DecodeError(f"expected an integer in {minimum}..{limit - 1}")
        return value

    return check


def _peer_name(value: object) -> PeerName:
    return PeerName(_uint(48)(value))


def _text(max_len: int, *, name_like: bool = False) -> _Check:
    def check(value: object) -> str:
        if type(value) is not str or len(value) > max_len:
            raise DecodeError(f"expected text of at most {max_len} characters")
        if name_like and not _NAME_RE.fullmatch(value):
            raise DecodeError(f"invalid name {value!r}: expected [A-Za-z0-9._-]+")
        return value

    return check


def _bool(value: object) -> bool:
    if type(value) is not bool:
        raise DecodeError("expected a boolean")
    return value


def _payload(value: object) -> bytes:
    if type(value) is not bytes or len(value) > MAX_FRAME_SIZE:
        raise DecodeError("expected a byte string")
    return value


def _public_key(value: object) -> bytes | None:
    if value is None:
        return None
    if type(value) is not bytes or len(value) != 32:
        raise DecodeError("expected a 32-byte public key or null")
    return value


_overlay_name = _text(MAX_OVERLAY_NAME_LEN, name_like=True)
_overlay_text = _text(MAX_OVERLAY_STR_LEN)


def _overlay_value(value: object) -> int | str | bool:
    if type(value) is bool:
        return value
    if type(value) is int:
        if not -(1 << 63) <= value < (1 << 63):
            raise DecodeError("overlay parameter out of the 64-bit range")
        return value
    text: str = _overlay_text(value)
    return text


def _mapping(value: object, limit: int) -> Mapping[object, object]:
    if not isinstance(value, Mapping) or len(value) > limit:
        raise DecodeError(f"expected a map of at most {limit} entries")
    return value


def _overlays(value: object) -> dict[str, OverlayParams]:
    result: dict[str, OverlayParams] = {}
    for name, params in _mapping(value, MAX_OVERLAYS).items():
        checked = {
            _overlay_name(key): _overlay_value(item)
            for key, item in _mapping(params, MAX_OVERLAY_KEYS).items()
        }
        result[_overlay_name(name)] = checked
    return result


_channel = _text(MAX_CHANNEL_LEN, name_like=True)

_SCHEMA: dict[MessageTag, tuple[type[Message], tuple[_Check, ...]]] = {
    MessageTag.HELLO: (
        Hello,
        (
            _uint(8, 1),
            _peer_name,
            _text(MAX_NICKNAME_LEN),
            _uint(64),
            _uint(12),
            _uint(64),
            _public_key,
            _bool,
            _overlays,
        ),
    ),
    MessageTag.READY: (Ready, (_uint(64),)),
    MessageTag.HEARTBEAT: (Heartbeat, ()),
    MessageTag.CONNECTION_ESTABLISHED: (ConnectionEstablished, ()),
    MessageTag.GOSSIP_UNICAST: (GossipUnicast, (_channel, _peer_name, _peer_name, _payload)),
    MessageTag.GOSSIP_BROADCAST: (GossipBroadcast, (_channel, _peer_name, _payload)),
    MessageTag.GOSSIP: (Gossip, (_channel, _peer_name, _payload)),
}
_TAGS: dict[type[Message], MessageTag] = {cls: tag for tag, (cls, _) in _SCHEMA.items()}


def _build(items: object) -> Message:
    """Check a decoded array against the schema and build the message."""
    if not isinstance(items, list) or not items:
        raise DecodeError("a message is a non-empty CBOR array")
    tag = items[0]
    if type(tag) is not int or tag not in _SCHEMA:
        raise DecodeError(f"unknown message tag {tag!r}")
    cls, checks = _SCHEMA[MessageTag(tag)]
    if len(items) != len(checks) + 1:
        raise DecodeError(f"{cls.__name__} has {len(checks)} fields, got {len(items) - 1}")
    values = []
    for field, check, raw in zip(fields(cls), checks, items[1:], strict=True):
        try:
            values.append(check(raw))
        except DecodeError as exc:
            raise DecodeError(f"{cls.__name__}.{field.name}: {exc}") from None
    return cls(*values)


def encode_message(msg: Message) -> bytes:
    """Encode ``msg`` as its CBOR array; :class:`LocalProtocolError` if it breaks the schema."""
    tag = _TAGS.get(type(msg))
    if tag is None:
        raise LocalProtocolError(f"not a message: {msg!r}")
    items: list[object] = [int(tag)]
    for field in fields(msg):
        value = getattr(msg, field.name)
        items.append(int(value) if isinstance(value, PeerName) else value)
    try:
        _build(items)
    except DecodeError as exc:
        raise LocalProtocolError(f"invalid message: {exc}") from None
    return cbor.encode(items)


def decode_message_untrusted(data: bytes) -> Message:
    """Decode one message from untrusted bytes; :class:`DecodeError` on any problem."""
    items = cbor.decode_untrusted(
        data, max_size=MAX_FRAME_SIZE, max_depth=MESSAGE_MAX_DEPTH, max_items=_MAX_ITEMS
    )
    return _build(items)
