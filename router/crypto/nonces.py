"""Secretbox nonces that never repeat under one key, and the UDP replay window.

One session key (``router.crypto.keys``) protects both directions of one connection and
both its transports (TCP control frames, UDP sleeve packets). Nonces therefore carry the
transport, the direction and a per-(transport, direction) message counter. Layout of the
24-byte nonce::

    byte  0      transport: 0 = TCP, 1 = UDP  (:class:`Transport`)
    byte  1      direction: 1 if the sender's PeerName > the receiver's, else 0
    bytes 2..15  zero (reserved)
    bytes 16..23 counter, unsigned 64-bit big-endian

Peer names are distinct on every connection (the handshake refuses equal names), so
both ends agree on who is "high". Counters start at 0 in each (transport, direction)
and go up by one per message sealed: on TCP the handshake's ``Ready`` uses counter 0
and the session continues at 1; TCP counters are implicit (frames arrive in order) so a
replayed, dropped or reordered frame fails to open. UDP packets carry their counter and
the receiver screens it with a :class:`ReplayWindow` before accepting.
"""

from __future__ import annotations

from enum import IntEnum

from router.errors import LocalProtocolError

__all__ = ["MAX_COUNTER", "NONCE_SIZE", "ReplayWindow", "Transport", "make_nonce"]

NONCE_SIZE = 24
MAX_COUNTER = (1 << 64) - 1
_PAD = bytes(14)


class Transport(IntEnum):
    """Which transport a nonce belongs to (byte 0 of the nonce)."""

    TCP = 0
    UDP = 1


def make_nonce(transport: Transport, sender_high: bool, counter: int) -> bytes:
    """The 24-byte nonce for message ``counter`` sent in one direction of one transport.

    ``sender_high`` is True when the *sender's* peer name is greater than the
    receiver's. :class:`LocalProtocolError` if the counter is outside 0..2**64-1 (the
    sender must stop, never wrap).
    """
    if not 0 <= counter <= MAX_COUNTER:
        raise LocalProtocolError(f"nonce counter out of range: {counter}")
    return bytes((int(transport), 1 if sender_high else 0)) + _PAD + counter.to_bytes(8, "big")


class ReplayWindow:
    """Sliding-window replay check for counters that may arrive out of order (RFC 6479).

    Remembers the highest accepted counter and which of the ``size`` counters below it
    (including it) were accepted. A counter is acceptable when it is above the highest,
    or inside the window and not seen yet; anything older than the window is refused.
    Counters start at 0 (nothing has been accepted initially, so 0 is acceptable).

    Use :meth:`check` before opening a packet (cheap, rejects replays without crypto
    work) and :meth:`accept` only after it authenticated, so forged packets cannot move
    the window; or :meth:`check_and_accept` when both happen at once.
    """

    def __init__(self, size: int = 1024) -> None:
        if size < 1:
            raise LocalProtocolError(f"replay window size must be positive: {size}")
        self._size = size
        self._mask = (1 << size) - 1
        self._highest = -1  # no counter accepted yet
        self._seen = 0  # bit i set: counter (_highest - i) was accepted

    @property
    def size(self) -> int:
        """How many counters (the highest included) the window remembers."""
        return self._size

    @property
    def highest(self) -> int:
        """The highest counter accepted so far, -1 before the first."""
        return self._highest

    def check(self, counter: int) -> bool:
        """True if ``counter`` was not accepted before and is not older than the window."""
        if not 0 <= counter <= MAX_COUNTER:
            return False
        if counter > self._highest:
            return True
        age = self._highest - counter
        if age >= self._size:
            return False
        return not (self._seen >> age) & 1

    def accept(self, counter: int) -> None:
        """Record ``counter`` as received; :class:`LocalProtocolError` if it fails check."""
        if not self.check(counter):
            raise LocalProtocolError(f"counter {counter} is a replay or too old to accept")
        if counter > self._highest:
            shift = counter - self._highest
            self._seen = ((self._seen << shift) | 1) & self._mask if shift < self._size else 1
            self._highest = counter
        else:
            self._seen |= 1 << (self._highest - counter)

    def check_and_accept(self, counter: int) -> bool:
        """Accept ``counter`` if :meth:`check` allows it; return whether it did."""
        if not self.check(counter):
            return False
        self.accept(counter)
        return True
