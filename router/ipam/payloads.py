"""The payloads of gossip channel ``"ipam"``: encoding and untrusted decoding.

Layout (CBOR maps, :mod:`router.wire.cbor`)::

    {"v": 1, "k": "state", "nicks": [[name, nickname], ...],
     "ring": ring | null, "paxos": election table | null}
    {"v": 1, "k": "space-request" | "space-denied", "start": uint, "end": uint}

``name`` is a peer name as an integer below 2**48, ``nickname`` a string of at most
``MAX_NICKNAME_LEN`` characters (at most :data:`MAX_NICKNAMES` pairs); ``ring`` is
:meth:`~router.ipam.ring.Ring.to_wire`, ``paxos`` is
:meth:`~router.ipam.consensus.Paxos.to_wire`; ``start < end <= 2**32`` bound a range of
addresses. :func:`decode_payload_untrusted` raises :class:`~router.errors.DecodeError`
(only) for anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from router.errors import DecodeError
from router.ipam.consensus import Claims, state_from_wire
from router.ipam.ring import ADDRESS_SPACE, Ring
from router.mesh.names import PeerName
from router.wire import cbor
from router.wire.constants import MAX_FRAME_SIZE, MAX_NICKNAME_LEN

FORMAT_VERSION = 1
MAX_NICKNAMES = 10_000


@dataclass(frozen=True)
class IpamMessage:
    """A decoded payload: ``kind`` is "state", "space-request" or "space-denied"."""

    kind: str
    nicknames: tuple[tuple[PeerName, str], ...] = ()
    ring: Ring | None = None
    paxos: Mapping[PeerName, Claims] | None = None
    start: int = 0
    end: int = 0


def encode_state(nicknames: Iterable[tuple[PeerName, str]], ring: Any, paxos: Any) -> bytes:
    """A ``"state"`` payload: the wire forms of the ring and election table (or None)."""
    return cbor.encode(
        {
            "v": FORMAT_VERSION,
            "k": "state",
            "nicks": [[int(n), nick] for n, nick in nicknames],
            "ring": ring,
            "paxos": paxos,
        }
    )


def space_message(kind: str, start: int, end: int) -> bytes:
    """A ``"space-request"`` or ``"space-denied"`` payload for ``[start, end)``."""
    return cbor.encode({"v": FORMAT_VERSION, "k": kind, "start": start, "end": end})


_DECODED: dict[tuple[bytes, PeerName], IpamMessage] = {}
_DECODED_MAX = 64  # recent payloads: every neighbour gossips the same ring


def decode_payload_untrusted(payload: bytes, ourself: PeerName) -> IpamMessage:
    """Decode an ``"ipam"`` payload; DecodeError if it is malformed.

    A payload decoded recently is answered from a small cache (the result is immutable
    to its users: a decoded ring is only read by merges); malformed ones are not cached.
    """
    key = (payload, ourself)
    msg = _DECODED.get(key)
    if msg is None:
        msg = _decode(payload, ourself)
        if len(_DECODED) >= _DECODED_MAX:
            del _DECODED[next(iter(_DECODED))]
        _DECODED[key] = msg
    return msg


def _decode(payload: bytes, ourself: PeerName) -> IpamMessage:
    raw = cbor.decode_untrusted(payload, max_size=MAX_FRAME_SIZE)
    if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
        raise DecodeError("ipam: expected a map with version 1")
    kind = raw.get("k")
    if kind in ("space-request", "space-denied"):
        if set(raw) != {"v", "k", "start", "end"}:
            raise DecodeError(f"ipam: bad {kind} fields")
        start, end = raw["start"], raw["end"]
        for value in (start, end):
            if isinstance(value, bool) or not isinstance(value, int):
                raise DecodeError(f"ipam: {kind} bounds must be integers")
        if not 0 <= start < end <= ADDRESS_SPACE:
            raise DecodeError(f"ipam: {kind} range is empty or out of bounds")
        return IpamMessage(kind, start=start, end=end)
    if kind != "state" or set(raw) != {"v", "k", "nicks", "ring", "paxos"}:
        raise DecodeError("ipam: unknown message")
    ring = None if raw["ring"] is None else Ring.from_wire(raw["ring"], ourself)
    paxos = None if raw["paxos"] is None else state_from_wire(raw["paxos"])
    return IpamMessage("state", _decode_nicknames(raw["nicks"]), ring, paxos)


def _decode_nicknames(raw: Any) -> tuple[tuple[PeerName, str], ...]:
    if not isinstance(raw, list) or len(raw) > MAX_NICKNAMES:
        raise DecodeError("ipam: nicknames must be a list")
    out = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or isinstance(item[0], bool)
            or not isinstance(item[0], int)
            or not 0 <= item[0] < 1 << 48
            or not isinstance(item[1], str)
            or len(item[1]) > MAX_NICKNAME_LEN
        ):
            raise DecodeError("ipam: bad nickname entry")
        out.append((PeerName(item[0]), item[1]))
    return tuple(out)
