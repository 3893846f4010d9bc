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

__all__ = ["MAX_COUNTER", "NONCE_SIZE", "PLAIN_CONFIRM", "PlainReplayWindow", "ReplayWindow",
           "Transport", "make_nonce"]

NONCE_SIZE = 24
#: Consecutive out-of-window counters that move a :class:`PlainReplayWindow` to them.
PLAIN_CONFIRM = 4
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


class PlainReplayWindow(ReplayWindow):
    """The replay window of an unauthenticated (plain) session: nothing a forger sends can
    make it refuse the real traffic.

    Without a key anyone who can reach the port can inject any frame, so a plain window
    cannot keep forgeries out; what it does is drop duplicates of recent counters. A
    :class:`ReplayWindow` would let one forged counter far ahead drag the window there,
    after which every real counter is "too old" for good. Here, of a counter ``c`` with
    the highest accepted ``h`` and the window size ``W``:

    * ``h - W < c < h + W`` (near): as :class:`ReplayWindow`: a duplicate is refused,
      anything else accepted (and the window moves forward by less than ``W``);
    * otherwise (a *stray*, too old or far ahead): accepted, but the window stays put
      until :data:`PLAIN_CONFIRM` strays in a row, each above the previous by at most
      ``W``, confirm a new position: then the window restarts at the last of them.

    So one forged datagram never moves the window by ``W`` or more; a forger that walks
    or confirms the window away only makes the real counters strays, which are accepted
    and confirm the window back within :data:`PLAIN_CONFIRM` datagrams; a forged counter
    can cost at most the one real datagram that carries the same counter, when the
    forgery comes first. The price: a replay older than the window (or of a stray) is
    accepted once more, exactly what a forger could send anyway.
    """

    def __init__(self, size: int = 1024) -> None:
        super().__init__(size)
        self._stray_last = -1  # the last stray of the current run
        self._stray_run = 0  # strays in a row so far

    def _stray(self, counter: int) -> bool:
        return self._highest >= 0 and abs(counter - self._highest) >= self._size

    def check(self, counter: int) -> bool:
        """True unless ``counter`` is a duplicate inside the window (or out of range)."""
        if 0 <= counter <= MAX_COUNTER and self._stray(counter):
            return True
        return super().check(counter)

    def accept(self, counter: int) -> None:
        """Record ``counter``; :class:`LocalProtocolError` if it fails check."""
        if not self.check(counter):
            raise LocalProtocolError(f"counter {counter} is a replay or too old to accept")
        if not self._stray(counter):
            super().accept(counter)
            return
        run = self._stray_run
        follows = run > 0 and self._stray_last < counter <= self._stray_last + self._size
        self._stray_run = run + 1 if follows else 1
        self._stray_last = counter
        if self._stray_run >= PLAIN_CONFIRM:  # a stream of its own: move the window there
            self._highest = counter
            self._seen = 1
            self._stray_run = 0
