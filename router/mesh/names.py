"""Peer identities: name (48 bits, written like a MAC), UID (64 bits), short id (12 bits).

A peer's *name* stays the same across restarts (persisted, or given by ``--name``); its
*UID* is new on every start, so the mesh can tell a restarted peer from the old one; its
*short id* is a compact 12-bit handle for the data plane. A *nickname* is for humans.

Names accept Weave's shorthand: one run of zero octets may be written ``::``::

    ::1      -> 00:00:00:00:00:01
    1::      -> 01:00:00:00:00:00
    1::1     -> 01:00:00:00:00:01
"""

from __future__ import annotations

import random
import secrets

from router.errors import ConfigError

NAME_BITS = 48
SHORT_ID_BITS = 12
UID_BITS = 64


class PeerName(int):
    """A 48-bit peer name; ``str()`` gives ``aa:bb:cc:dd:ee:ff``."""

    def __new__(cls, value: int) -> PeerName:
        if not 0 <= value < (1 << NAME_BITS):
            raise ValueError(f"peer name out of range: {value}")
        return super().__new__(cls, value)

    def __str__(self) -> str:
        return int(self).to_bytes(6, "big").hex(":")

    def __repr__(self) -> str:
        return f"PeerName({self})"

    @classmethod
    def parse(cls, text: str) -> PeerName:
        """Parse ``aa:bb:cc:dd:ee:ff`` or the ``::`` shorthand; ConfigError if malformed."""
        octets = _parse_octets(text.strip().lower())
        if octets is None:
            raise ConfigError(
                f"invalid peer name {text!r}: expected six hex octets "
                "like 01:23:45:67:89:ab or ::1"
            )
        return cls(int.from_bytes(bytes(octets), "big"))

    @classmethod
    def random(cls, rng: random.Random | None = None) -> PeerName:
        """A fresh random name: unicast (bit 0 of the first octet clear), locally administered.

        ``rng``: drawn from it instead of the OS's entropy (simulations, so a seed repeats
        a run)."""
        raw = bytearray(secrets.token_bytes(6) if rng is None else rng.randbytes(6))
        raw[0] = (raw[0] & 0xFE) | 0x02
        return cls(int.from_bytes(bytes(raw), "big"))


def _parse_octets(text: str) -> list[int] | None:
    if text.count("::") > 1:
        return None
    if "::" in text:
        head, tail = text.split("::")
        left = head.split(":") if head else []
        right = tail.split(":") if tail else []
        if len(left) + len(right) > 5:
            return None
        parts = left + ["0"] * (6 - len(left) - len(right)) + right
    else:
        parts = text.split(":")
    if len(parts) != 6:
        return None
    octets: list[int] = []
    for part in parts:
        if not 1 <= len(part) <= 2 or any(c not in "0123456789abcdef" for c in part):
            return None
        octets.append(int(part, 16))
    return octets


def random_uid(rng: random.Random | None = None) -> int:
    """A fresh 64-bit peer UID (new on every start), never zero; ``rng`` as for names."""
    return (secrets.randbits(UID_BITS) if rng is None else rng.getrandbits(UID_BITS)) or 1


def random_short_id(rng: random.Random | None = None) -> int:
    """A random 12-bit short id; collisions are resolved by the topology."""
    return secrets.randbits(SHORT_ID_BITS) if rng is None else rng.getrandbits(SHORT_ID_BITS)


def describe(name: PeerName, nickname: str) -> str:
    """``aa:bb:cc:dd:ee:ff(nickname)`` as Weave prints peers."""
    return f"{name}({nickname})"
