"""The connection handshake, sans-IO: both ends run the same steps at the same time.

Numbered stages (each side, no client/server roles; ``outbound`` is only reported):

1. Send the preamble at once: ``MAGIC`` (12 bytes) + min version (1 byte) + max
   version (1 byte). On the peer's preamble: negotiated version =
   min(our max, their max), refused if below max(our min, their min).
2. Send ``Hello`` (a plain frame, negotiated version, our half of the connection id,
   our fresh public key when we have a password, whether we trust the peer's address).
   Check the peer's Hello: not ourself, no name collision, both or neither with a password.
3. With a password on both ends derive the :class:`SessionKey`; it seals the TCP
   session (always) and the overlay (unless *both* ends trust each other's address via
   ``--trusted-subnets``: then the data plane may go unencrypted, as in Weave).
4. Send ``Ready(conn_id)`` as the first session frame (sealed with TCP counter 0 when
   encrypted); the connection id is the XOR of both Hello.conn_id values. The peer's
   Ready opening and carrying the same id completes the handshake.
5. The whole handshake must finish within ``timeout`` seconds.

Driving it: write :meth:`Handshake.data_to_send` after construction and after every
:meth:`Handshake.receive_data` (also the last time, once :attr:`Handshake.done`), arm a
timer at :meth:`Handshake.deadline`. Once done, build a ``Session`` from
:attr:`Handshake.result` and feed it :meth:`Handshake.leftover` first. Every failure is a
:class:`HandshakeError` (a ``RemoteProtocolError``) carrying ``retry``.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
from dataclasses import dataclass, field
from enum import Enum, auto

from router.config import IPNetwork
from router.crypto.keys import KeyPair, SessionKey
from router.crypto.nonces import Transport, make_nonce
from router.errors import DecodeError, HandshakeError, LocalProtocolError
from router.mesh.names import PeerName
from router.wire.constants import (
    MAGIC,
    MAX_HANDSHAKE_FRAME_SIZE,
    PREAMBLE_SIZE,
    PROTOCOL_MAX_VERSION,
    PROTOCOL_MIN_VERSION,
)
from router.wire.framing import FrameDecoder, encode_frame
from router.wire.messages import (
    Hello,
    OverlayParams,
    Ready,
    decode_message_untrusted,
    encode_message,
)

__all__ = [
    "READY_COUNTER",
    "Handshake",
    "HandshakeResult",
    "LocalIdentity",
    "encode_preamble",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: TCP nonce counter of the Ready frame in each direction; the session continues at +1.
READY_COUNTER = 0


def encode_preamble(min_version: int, max_version: int) -> bytes:
    """``MAGIC`` + min version (1 byte) + max version (1 byte)."""
    if not 1 <= min_version <= max_version <= 255:
        raise LocalProtocolError(f"invalid protocol version range {min_version}..{max_version}")
    return MAGIC + bytes((min_version, max_version))


@dataclass(frozen=True)
class LocalIdentity:
    """What this router says about itself in every handshake."""

    name: PeerName
    nickname: str
    uid: int
    short_id: int
    password: bytes | None = None
    trusted_subnets: tuple[IPNetwork, ...] = ()
    overlays: dict[str, OverlayParams] = field(default_factory=dict)


@dataclass(frozen=True)
class HandshakeResult:
    """What a finished handshake established; a ``Session`` is built from it."""

    version: int
    outbound: bool
    remote_name: PeerName
    remote_nickname: str
    remote_uid: int
    remote_short_id: int
    remote_overlays: dict[str, OverlayParams]
    conn_id: int  # the same on both ends
    encrypted: bool  # the TCP session is sealed (both ends have the password)
    key: SessionKey | None = field(repr=False)  # None exactly when not encrypted
    sender_high: bool  # our name > remote name: the direction bit of our nonces
    overlay_encrypted: bool  # the data plane must seal too (not trusted both ways)

    @property
    def overlay_key(self) -> SessionKey | None:
        """The key for UDP/data-plane sealing, None when the overlay runs in the clear."""
        return self.key if self.overlay_encrypted else None


class _State(Enum):
    PREAMBLE = auto()
    HELLO = auto()
    READY = auto()
    DONE = auto()
    FAILED = auto()


class Handshake:
    """One connection's handshake; see the module docstring for the stages."""

    def __init__(
        self,
        local: LocalIdentity,
        *,
        outbound: bool,
        remote_ip: IPAddress,
        now: float,
        timeout: float = 10.0,
        min_version: int = PROTOCOL_MIN_VERSION,
        max_version: int = PROTOCOL_MAX_VERSION,
        keypair: KeyPair | None = None,
    ) -> None:
        self._local = local
        self._outbound = outbound
        self._min_version = min_version
        self._max_version = max_version
        self._timeout = timeout
        self._deadline = now + timeout
        self._out = bytearray(encode_preamble(min_version, max_version))
        self._preamble = bytearray()
        self._frames = FrameDecoder(MAX_HANDSHAKE_FRAME_SIZE)
        self._state = _State.PREAMBLE
        self._trusted = _is_trusted(remote_ip, local.trusted_subnets)
        if local.password is not None and keypair is None:
            keypair = KeyPair.generate()
        self._keypair = keypair if local.password is not None else None
        self._conn_part = secrets.randbits(64)
        self._version: int | None = None
        self._remote: Hello | None = None
        self._key: SessionKey | None = None
        self._result: HandshakeResult | None = None
        self._leftover = b""

    # ------------------------------------------------------------------ public API

    @property
    def done(self) -> bool:
        """True once both Ready frames are through; :attr:`result` is then available."""
        return self._state is _State.DONE

    @property
    def result(self) -> HandshakeResult:
        """The outcome; :class:`LocalProtocolError` before :attr:`done`."""
        if self._result is None:
            raise LocalProtocolError("the handshake is not done")
        return self._result

    @property
    def version(self) -> int | None:
        """The negotiated protocol version once the peer's preamble is in."""
        return self._version

    @property
    def remote_hello(self) -> Hello | None:
        """The peer's Hello once received (for status while still pending)."""
        return self._remote

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (possibly empty)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def leftover(self) -> bytes:
        """Bytes received after the peer's Ready: the start of the session stream."""
        return self._leftover

    def deadline(self) -> float:
        """Absolute time the handshake times out; ``math.inf`` once done or failed."""
        if self._state in (_State.DONE, _State.FAILED):
            return math.inf
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Fail with :class:`HandshakeError` if the deadline has passed."""
        if now >= self.deadline():
            self._state = _State.FAILED
            raise HandshakeError(f"handshake timed out after {self._timeout:g} s")

    def receive_data(self, data: bytes) -> None:
        """Process bytes from the socket; :class:`HandshakeError` on any problem.

        Time plays no part here: the timeout comes only from :meth:`handle_timer`.
        """
        if self._state is _State.FAILED:
            raise LocalProtocolError("the handshake already failed")
        if self._state is _State.DONE:
            raise LocalProtocolError("the handshake is done: feed the session instead")
        try:
            self._receive(data)
        except HandshakeError:
            self._state = _State.FAILED
            raise
        except DecodeError as exc:
            self._state = _State.FAILED
            raise HandshakeError(f"invalid handshake data: {exc}") from None

    # ------------------------------------------------------------------ stages

    def _receive(self, data: bytes) -> None:
        if self._state is _State.PREAMBLE:
            need = PREAMBLE_SIZE - len(self._preamble)
            self._preamble += data[:need]
            data = data[need:]
            _check_magic_prefix(bytes(self._preamble))
            if len(self._preamble) < PREAMBLE_SIZE:
                return
            self._on_preamble(self._preamble[len(MAGIC)], self._preamble[len(MAGIC) + 1])
        self._frames.push(data)
        while self._state in (_State.HELLO, _State.READY):
            frame = self._frames.pop()
            if frame is None:
                return
            if self._state is _State.HELLO:
                self._on_hello(frame)
            else:
                self._on_ready(frame)
        self._leftover = self._frames.take_buffered()

    def _on_preamble(self, their_min: int, their_max: int) -> None:
        if not 1 <= their_min <= their_max:
            raise HandshakeError(
                f"peer sent an invalid protocol version range {their_min}..{their_max}"
            )
        version = min(self._max_version, their_max)
        if version < max(self._min_version, their_min):
            raise HandshakeError(
                "incompatible protocol versions: we speak"
                f" {self._min_version}..{self._max_version}, peer speaks {their_min}..{their_max}"
            )
        self._version = version
        local = self._local
        hello = Hello(
            version=version,
            name=local.name,
            nickname=local.nickname,
            uid=local.uid,
            short_id=local.short_id,
            conn_id=self._conn_part,
            public_key=self._keypair.public if self._keypair else None,
            trusted=self._trusted,
            overlays=local.overlays,
        )
        self._out += encode_frame(encode_message(hello))
        self._state = _State.HELLO

    def _on_hello(self, frame: bytes) -> None:
        msg = decode_message_untrusted(frame)
        if not isinstance(msg, Hello):
            raise HandshakeError(f"expected Hello, peer sent {type(msg).__name__}")
        if msg.version != self._version:
            raise HandshakeError(f"peer's Hello says version {msg.version}, not {self._version}")
        self._check_identity(msg)
        self._remote = msg
        if self._keypair is not None and msg.public_key is not None:
            assert self._local.password is not None
            self._key = SessionKey.derive(
                self._keypair.private, msg.public_key, self._local.password
            )
        ready = encode_message(Ready(conn_id=self._conn_id()))
        if self._key is not None:
            ready = self._key.seal(
                make_nonce(Transport.TCP, self._sender_high(), READY_COUNTER), ready
            )
        self._out += encode_frame(ready)
        self._state = _State.READY

    def _check_identity(self, msg: Hello) -> None:
        local = self._local
        if msg.name == local.name:
            if msg.uid == local.uid:
                raise HandshakeError("cannot connect to ourself", retry=False)
            raise HandshakeError("peer name collision with remote peer", retry=False)
        if local.password is not None and msg.public_key is None:
            raise HandshakeError("password specified, but peer requested an unencrypted connection")
        if local.password is None and msg.public_key is not None:
            raise HandshakeError(
                "no password specified, but peer requested an encrypted connection"
            )

    def _on_ready(self, frame: bytes) -> None:
        if self._key is not None:
            nonce = make_nonce(Transport.TCP, not self._sender_high(), READY_COUNTER)
            try:
                frame = self._key.open(nonce, frame)
            except DecodeError:
                raise HandshakeError(
                    "authentication failed: the peer has a different password"
                ) from None
        msg = decode_message_untrusted(frame)
        if not isinstance(msg, Ready):
            raise HandshakeError(f"expected Ready, peer sent {type(msg).__name__}")
        if msg.conn_id != self._conn_id():
            raise HandshakeError("peer's Ready carries the wrong connection id")
        self._finish()

    def _finish(self) -> None:
        remote = self._remote
        assert remote is not None and self._version is not None
        encrypted = self._key is not None
        self._result = HandshakeResult(
            version=self._version,
            outbound=self._outbound,
            remote_name=remote.name,
            remote_nickname=remote.nickname,
            remote_uid=remote.uid,
            remote_short_id=remote.short_id,
            remote_overlays=remote.overlays,
            conn_id=self._conn_id(),
            encrypted=encrypted,
            key=self._key,
            sender_high=self._sender_high(),
            overlay_encrypted=encrypted and not (self._trusted and remote.trusted),
        )
        self._state = _State.DONE

    def _conn_id(self) -> int:
        assert self._remote is not None
        return self._conn_part ^ self._remote.conn_id

    def _sender_high(self) -> bool:
        assert self._remote is not None
        return self._local.name > self._remote.name


def _check_magic_prefix(received: bytes) -> None:
    head = received[: len(MAGIC)]
    if MAGIC[: len(head)] != head:
        raise HandshakeError("not a weave-router peer: bad protocol magic")


def _is_trusted(remote_ip: IPAddress, subnets: tuple[IPNetwork, ...]) -> bool:
    """Whether ``remote_ip`` (IPv4-mapped IPv6 counts as IPv4) is in a trusted subnet."""
    if isinstance(remote_ip, ipaddress.IPv6Address) and remote_ip.ipv4_mapped is not None:
        remote_ip = remote_ip.ipv4_mapped
    return any(remote_ip.version == net.version and remote_ip in net for net in subnets)
