"""An established mesh TCP connection, sans-IO: framed (and sealed) control messages.

Built from a :class:`~router.mesh.handshake.HandshakeResult` and fed the handshake's
leftover bytes first. Per direction, frame *n* after the handshake is sealed with the TCP
nonce counter ``READY_COUNTER + n`` (Ready was counter 0), so frames are authenticated,
and a replayed, dropped, reordered or altered frame fails to open and ends the session.
Unencrypted sessions (no password) carry the plain encoded messages.

Timers (:meth:`Session.deadline` / :meth:`Session.handle_timer`):

* heartbeat: checked every ``heartbeat_interval / 2``; when nothing was queued since the
  previous check a ``Heartbeat`` is queued, so an idle session sends one frame every
  ``heartbeat_interval`` and a busy one sends none;
* timeout: nothing received for ``timeout`` seconds raises ``RemoteProtocolError``.

Outgoing bytes wait in one buffer bounded by ``max_queue_bytes``: :meth:`Session.send`
returns False (and counts a drop) instead of queueing past it. A message larger than
that bound is always dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.crypto.keys import MAC_SIZE
from router.crypto.nonces import Transport, make_nonce
from router.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from router.mesh.handshake import READY_COUNTER, HandshakeResult
from router.wire.constants import FRAME_HEADER_SIZE, MAX_FRAME_SIZE
from router.wire.framing import FrameDecoder, encode_frame
from router.wire.messages import (
    Heartbeat,
    Hello,
    Message,
    Ready,
    decode_message_untrusted,
    encode_message,
)

__all__ = ["DEFAULT_MAX_QUEUE_BYTES", "Session", "SessionStatistics"]

#: Default bound of the outgoing buffer: two maximum-size frames (8 MiB).
DEFAULT_MAX_QUEUE_BYTES = 2 * MAX_FRAME_SIZE


@dataclass(frozen=True)
class SessionStatistics:
    """Counters of one session; message counts include heartbeats, bytes include framing."""

    messages_sent: int
    messages_received: int
    bytes_sent: int  # queued for the socket
    bytes_received: int
    heartbeats_sent: int
    heartbeats_received: int
    dropped: int  # send() refused: queue full, message too large, or session failed
    queued_bytes: int  # waiting for data_to_send()


class Session:
    """One established connection's message stream; see the module docstring."""

    def __init__(
        self,
        result: HandshakeResult,
        *,
        now: float,
        heartbeat_interval: float = 30.0,
        timeout: float = 60.0,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        if heartbeat_interval <= 0 or timeout <= 0 or max_queue_bytes <= 0:
            raise LocalProtocolError("heartbeat_interval, timeout and max_queue_bytes must be > 0")
        self._result = result
        self._heartbeat_interval = heartbeat_interval
        self._timeout = timeout
        self._max_queue_bytes = max_queue_bytes
        self._frames = FrameDecoder(MAX_FRAME_SIZE)
        self._out = bytearray()
        self._send_counter = READY_COUNTER + 1
        self._recv_counter = READY_COUNTER + 1
        self._last_received = now
        self._next_heartbeat_check = now + heartbeat_interval / 2
        self._queued_since_check = False
        self._failed = False
        self._messages_sent = self._messages_received = 0
        self._bytes_sent = self._bytes_received = 0
        self._heartbeats_sent = self._heartbeats_received = 0
        self._dropped = 0

    @property
    def result(self) -> HandshakeResult:
        """The handshake outcome this session runs on."""
        return self._result

    @property
    def last_received(self) -> float:
        """When bytes last arrived (the construction time until then)."""
        return self._last_received

    def send(self, msg: Message) -> bool:
        """Queue ``msg``; False (a counted drop) if the buffer bound would be exceeded.

        Hello and Ready belong to the handshake: :class:`LocalProtocolError`. A message
        that breaks the schema is our bug: :class:`LocalProtocolError` as well.
        """
        if isinstance(msg, Hello | Ready):
            raise LocalProtocolError(f"{type(msg).__name__} is a handshake message")
        if self._failed:
            self._dropped += 1
            return False
        payload = encode_message(msg)
        key = self._result.key
        payload_size = len(payload) + (MAC_SIZE if key is not None else 0)
        frame_size = FRAME_HEADER_SIZE + payload_size
        if payload_size > MAX_FRAME_SIZE or len(self._out) + frame_size > self._max_queue_bytes:
            self._dropped += 1
            return False
        if key is not None:
            nonce = make_nonce(Transport.TCP, self._result.sender_high, self._send_counter)
            payload = key.seal(nonce, payload)
            self._send_counter += 1
        self._out += encode_frame(payload)
        self._messages_sent += 1
        self._bytes_sent += frame_size
        self._queued_since_check = True
        return True

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (possibly empty); empties the buffer."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes, now: float) -> list[Message]:
        """Messages completed by ``data`` (heartbeats consumed).

        :class:`RemoteProtocolError` for an oversize frame, a frame that fails to
        authenticate (tampered, replayed, reordered or dropped), a message that does
        not decode, or a handshake message; the session is then over.
        """
        if self._failed:
            raise LocalProtocolError("the session already failed")
        if data:
            self._last_received = now
            self._bytes_received += len(data)
        try:
            return self._process(self._frames.feed(data))
        except RemoteProtocolError:
            self._failed = True
            raise

    def _process(self, frames: list[bytes]) -> list[Message]:
        messages: list[Message] = []
        key = self._result.key
        for frame in frames:
            if key is not None:
                nonce = make_nonce(Transport.TCP, not self._result.sender_high, self._recv_counter)
                try:
                    frame = key.open(nonce, frame)
                except DecodeError:
                    raise RemoteProtocolError(
                        f"authentication failed for frame {self._recv_counter}:"
                        " tampered, replayed or out of order"
                    ) from None
                self._recv_counter += 1
            try:
                msg = decode_message_untrusted(frame)
            except DecodeError as exc:
                raise RemoteProtocolError(f"undecodable message: {exc}") from None
            self._messages_received += 1
            if isinstance(msg, Heartbeat):
                self._heartbeats_received += 1
            elif isinstance(msg, Hello | Ready):
                raise RemoteProtocolError(f"unexpected {type(msg).__name__} after the handshake")
            else:
                messages.append(msg)
        return messages

    def deadline(self) -> float:
        """Absolute time of the next timer (heartbeat check or timeout); inf once failed."""
        if self._failed:
            return math.inf
        return min(self._next_heartbeat_check, self._last_received + self._timeout)

    def handle_timer(self, now: float) -> None:
        """Queue a heartbeat if idle; :class:`RemoteProtocolError` if the peer went silent."""
        if self._failed:
            return
        if now >= self._last_received + self._timeout:
            self._failed = True
            raise RemoteProtocolError(
                f"connection timed out: nothing received for {self._timeout:g} s"
            )
        if now >= self._next_heartbeat_check:
            idle = not self._queued_since_check
            self._queued_since_check = False
            self._next_heartbeat_check = now + self._heartbeat_interval / 2
            if idle and self.send(Heartbeat()):
                self._heartbeats_sent += 1

    def statistics(self) -> SessionStatistics:
        """A frozen snapshot of the counters."""
        return SessionStatistics(
            messages_sent=self._messages_sent,
            messages_received=self._messages_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            heartbeats_sent=self._heartbeats_sent,
            heartbeats_received=self._heartbeats_received,
            dropped=self._dropped,
            queued_bytes=len(self._out),
        )
