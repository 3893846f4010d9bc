"""Length-prefixed frames on a TCP stream, sans-IO.

Byte layout of one frame::

    0       4                       4 + length
    +-------+-----------------------+
    | length|  payload              |
    +-------+-----------------------+
    length: 4 bytes, big-endian unsigned, 0 .. max_size (default 4 MiB)

The payload is an encoded message (``router.wire.messages``), sealed
(16-byte MAC + ciphertext) when the connection is encrypted. A length over the limit
is refused as soon as its 4 bytes are in, before any payload is buffered.
"""

from __future__ import annotations

from router.errors import DecodeError, LocalProtocolError
from router.wire.constants import FRAME_HEADER_SIZE, MAX_FRAME_SIZE

__all__ = ["FrameDecoder", "encode_frame"]

_COMPACT_AFTER = 64 * 1024  # consumed bytes kept at the head of the buffer before compacting


def encode_frame(payload: bytes, *, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """Prefix ``payload`` with its length; :class:`LocalProtocolError` if over ``max_size``."""
    if len(payload) > max_size:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds the limit of {max_size}")
    return len(payload).to_bytes(FRAME_HEADER_SIZE, "big") + payload


class FrameDecoder:
    """Split a byte stream into frame payloads.

    ``feed(data)`` returns every complete payload; ``push``/``pop`` do the same one
    frame at a time (the handshake stops after its last frame and hands the rest on with
    :meth:`take_buffered`). After ``feed`` the buffer holds at most one incomplete frame,
    so it never exceeds ``FRAME_HEADER_SIZE + max_size`` bytes; with ``push``/``pop`` it
    holds whatever was pushed and not yet popped.
    """

    def __init__(self, max_size: int = MAX_FRAME_SIZE) -> None:
        if max_size < 0:
            raise LocalProtocolError(f"max_size must not be negative: {max_size}")
        self._max_size = max_size
        self._buffer = bytearray()
        self._start = 0  # bytes at the head of _buffer already consumed

    @property
    def max_size(self) -> int:
        """Largest payload accepted, in bytes."""
        return self._max_size

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buffer) - self._start

    def push(self, data: bytes) -> None:
        """Append received bytes without parsing them."""
        self._buffer += data

    def pop(self) -> bytes | None:
        """The next complete payload, or None; :class:`DecodeError` for an oversize length."""
        available = len(self._buffer) - self._start
        if available < FRAME_HEADER_SIZE:
            return None
        head = self._start
        length = int.from_bytes(self._buffer[head : head + FRAME_HEADER_SIZE], "big")
        if length > self._max_size:
            raise DecodeError(f"frame of {length} bytes exceeds the limit of {self._max_size}")
        if available < FRAME_HEADER_SIZE + length:
            return None
        begin = head + FRAME_HEADER_SIZE
        payload = bytes(self._buffer[begin : begin + length])
        self._start = begin + length
        self._compact()
        return payload

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data`` and return every payload it completes."""
        self.push(data)
        frames: list[bytes] = []
        while (frame := self.pop()) is not None:
            frames.append(frame)
        return frames

    def take_buffered(self) -> bytes:
        """Remove and return the bytes not yet returned as frames."""
        rest = bytes(self._buffer[self._start :])
        self._buffer = bytearray()
        self._start = 0
        return rest

    def _compact(self) -> None:
        if self._start == len(self._buffer):
            self._buffer = bytearray()
            self._start = 0
        elif self._start >= _COMPACT_AFTER:
            del self._buffer[: self._start]
            self._start = 0
