"""fastdp heartbeat frames: the codec and the echo that proves a path both ways.

Heartbeats travel the way fastdp traffic does: written into the router's TAP, switched by
the bridge to ``vxlan-6784`` (their destination MAC is pinned there, see
``router/overlay/fastdp/plan.py``), sent over UDP 6784 by the kernel and pinned on the far
side to that router's TAP. A frame, 60 bytes (the Ethernet minimum, without FCS)::

    offset  size  field
     0      6     destination: heartbeat MAC of the receiver (plan.heartbeat_mac)
     6      6     source: heartbeat MAC of the sender
    12      2     ethertype 0x88B5 (IEEE 802 local experimental)
    14      4     magic b"WVFD"
    18      1     version, 1
    19      1     reserved, 0
    20      6     sender's peer name
    26      6     receiver's peer name
    32      4     seq: the sender's counter, big-endian, from 1
    36      4     echo: the latest seq the sender heard from the receiver (0: none yet)
    40      20    zero padding

Hearing a frame proves receiver <- sender; its ``echo`` being one of our last
:data:`ECHO_WINDOW` seqs proves receiver -> sender too. :class:`HeartbeatEcho` keeps that
per peer: only a frame that proves both ways (:attr:`Heard.BOTH_WAYS`) counts as "heard"
for ``router.overlay.switch`` (UDP 6784 dropped in one direction must not look healthy).
A frame that proves only its own direction (:attr:`Heard.ONE_WAY`) asks for an answer at
once: ours then carries a fresh echo, so the peer can prove both ways without waiting for
our next (perhaps backed-off) probe.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass

from router.errors import DecodeError

ETHERTYPE = 0x88B5
MAGIC = b"WVFD"
VERSION = 1
FRAME_LEN = 60  # bytes
ECHO_WINDOW = 3  # our latest seqs an echo may name (3 s of heartbeats at 1 s)
_BODY = struct.Struct("!6s6sH4sBx6s6sII")
_SEQ_MAX = 0xFFFFFFFF


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a 48-bit address: {text!r}")
    return raw


def _text(raw: bytes) -> str:
    return raw.hex(":")


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat frame's fields (addresses as ``aa:bb:cc:dd:ee:ff``)."""

    dst_mac: str
    src_mac: str
    sender: str  # peer name
    receiver: str  # peer name
    seq: int
    echo: int = 0

    def encode(self) -> bytes:
        """The frame, :data:`FRAME_LEN` bytes."""
        body = _BODY.pack(_mac(self.dst_mac), _mac(self.src_mac), ETHERTYPE, MAGIC, VERSION,
                          _mac(self.sender), _mac(self.receiver), self.seq, self.echo)
        return body.ljust(FRAME_LEN, b"\0")


def decode_heartbeat_untrusted(frame: bytes) -> Heartbeat:
    """Parse a frame read from the TAP; DecodeError (only) if it is not a heartbeat."""
    if len(frame) < _BODY.size:
        raise DecodeError(f"heartbeat: {len(frame)} bytes, need {_BODY.size}")
    dst, src, ethertype, magic, version, sender, receiver, seq, echo = _BODY.unpack_from(frame)
    if ethertype != ETHERTYPE or magic != MAGIC:
        raise DecodeError("not a fastdp heartbeat")
    if version != VERSION:
        raise DecodeError(f"heartbeat version {version}, expected {VERSION}")
    if seq == 0:
        raise DecodeError("heartbeat seq 0")
    return Heartbeat(_text(dst), _text(src), _text(sender), _text(receiver), seq, echo)


class Heard(enum.Enum):
    """What a received heartbeat proves."""

    IGNORED = "ignored"  # not from this peer to us
    ONE_WAY = "one way"  # peer -> us works; answer now so the peer can prove us -> peer
    BOTH_WAYS = "both ways"  # and its echo is one of our latest seqs: the path works


class HeartbeatEcho:
    """Per peer: numbers our heartbeats and says whether one of theirs proves both ways."""

    def __init__(self, own: str, peer: str, own_mac: str, peer_mac: str) -> None:
        self._own, self._peer = own, peer
        self._own_mac, self._peer_mac = own_mac, peer_mac
        self._seq = 0
        self._recent: deque[int] = deque(maxlen=ECHO_WINDOW)
        self._heard = 0  # latest seq heard from the peer, echoed back

    def next_frame(self) -> bytes:
        """Our next heartbeat to the peer (echoing the latest of theirs we heard)."""
        self._seq = self._seq % _SEQ_MAX + 1
        self._recent.append(self._seq)
        return Heartbeat(self._peer_mac, self._own_mac, self._own, self._peer, self._seq,
                         self._heard).encode()

    def receive(self, hb: Heartbeat) -> Heard:
        """Take a decoded heartbeat from the TAP; see :class:`Heard`."""
        if hb.sender != self._peer or hb.receiver != self._own:
            return Heard.IGNORED
        self._heard = hb.seq
        return Heard.BOTH_WAYS if hb.echo in self._recent else Heard.ONE_WAY
