"""Golden vectors: the exact bytes of every message, the preamble, a sealed frame, a key.

Each vector is a file ``vectors/<name>.hex`` (lowercase hex, one line). A change in
these bytes is a wire-format change: it needs a protocol version bump (see
``docs/wire-format.md``). After an intended change, rewrite the files with::

    .venv/bin/python -m tests.wire.test_golden --regenerate

and review the diff.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from router.crypto.keys import KeyPair, SessionKey
from router.crypto.nonces import Transport, make_nonce
from router.mesh.handshake import encode_preamble
from router.mesh.names import PeerName
from router.overlay.sleeve.packet import (
    HeartbeatKind,
    SleeveHeartbeat,
    decode_heartbeat_untrusted,
    encode_heartbeat,
    encode_probe,
    encode_probe_ack,
)
from router.wire.framing import encode_frame
from router.wire.messages import (
    ConnectionEstablished,
    Gossip,
    GossipBroadcast,
    GossipUnicast,
    Heartbeat,
    Hello,
    Message,
    Ready,
    decode_message_untrusted,
    encode_message,
)

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"

NAME_A = PeerName(0x0A0B0C0D0E0F)
NAME_B = PeerName(0x020000000001)
PRIVATE_A = bytes(range(32))
PRIVATE_B = bytes(range(32, 64))
FIXED_KEY = SessionKey(bytes(range(100, 132)))
SLEEVE_CONN = 0x0102030405060708  # sleeve heartbeats: NAME_B (the lower) -> NAME_A

# name -> (datagram, key, its heartbeat); sleeve_heartbeat_* also in tests/unit/test_sleeve_packet
SLEEVE: dict[str, tuple[bytes, SessionKey | None, SleeveHeartbeat]] = {
    "sleeve_heartbeat_plain": (
        encode_heartbeat(SLEEVE_CONN, 5, NAME_B, NAME_A, key=None, sender_high=False),
        None, SleeveHeartbeat(NAME_B, NAME_A)),
    "sleeve_probe_plain": (
        encode_probe(SLEEVE_CONN, 6, NAME_B, NAME_A, key=None, sender_high=False, size=40),
        None, SleeveHeartbeat(NAME_B, NAME_A, 4, HeartbeatKind.PROBE, 40)),
    "sleeve_probe_ack_plain": (
        encode_probe_ack(SLEEVE_CONN, 7, NAME_B, NAME_A, key=None, sender_high=False,
                         acked=1472),
        None, SleeveHeartbeat(NAME_B, NAME_A, 0, HeartbeatKind.ACK, 1472)),
    "sleeve_probe_ack_sealed": (
        encode_probe_ack(SLEEVE_CONN, 7, NAME_B, NAME_A, key=FIXED_KEY, sender_high=False,
                         acked=1452),
        FIXED_KEY, SleeveHeartbeat(NAME_B, NAME_A, 0, HeartbeatKind.ACK, 1452)),
}

MESSAGES: dict[str, Message] = {
    "hello_plain": Hello(
        version=1,
        name=NAME_A,
        nickname="host1",
        uid=0x0123456789ABCDEF,
        short_id=0xABC,
        conn_id=0xFEDCBA9876543210,
        public_key=None,
        trusted=False,
        overlays={"sleeve": {"udp_port": 6783}, "fastdp": {"vxlan_port": 6784, "ok": True}},
    ),
    "hello_encrypted": Hello(
        version=1,
        name=NAME_B,
        nickname="db-1.example.com",
        uid=1,
        short_id=0,
        conn_id=0,
        public_key=KeyPair.from_private(PRIVATE_B).public,
        trusted=True,
        overlays={"sleeve": {"udp_port": 6783, "mode": "sleeve"}},
    ),
    "ready": Ready(conn_id=0xFEDCBA9876543210),
    "heartbeat": Heartbeat(),
    "connection_established": ConnectionEstablished(),
    "gossip_unicast": GossipUnicast(channel="ipam", src=NAME_A, dst=NAME_B, payload=b"\x01\x02"),
    "gossip_broadcast": GossipBroadcast(channel="topology", src=NAME_A, payload=b"peers"),
    "gossip": Gossip(channel="dns", src=NAME_B, payload=b""),
}


def vectors() -> dict[str, bytes]:
    """Every golden vector, computed by the current code."""
    out = {f"message_{name}": encode_message(msg) for name, msg in MESSAGES.items()}
    out["preamble_v1"] = encode_preamble(1, 1)
    out["preamble_v1_v3"] = encode_preamble(1, 3)
    out["frame_plain_gossip"] = encode_frame(encode_message(MESSAGES["gossip_broadcast"]))
    out["frame_sealed_gossip"] = encode_frame(
        FIXED_KEY.seal(
            make_nonce(Transport.TCP, True, 1), encode_message(MESSAGES["gossip_broadcast"])
        )
    )
    out["nonce_udp_low_258"] = make_nonce(Transport.UDP, False, 258)
    out["session_key_derived"] = SessionKey.derive(
        PRIVATE_A, KeyPair.from_private(PRIVATE_B).public, b"wfvAwt7sj"
    ).raw
    out.update({name: data for name, (data, _key, _hb) in SLEEVE.items()})
    return out


def regenerate() -> None:
    """Rewrite every vector file from the current code (review the diff!)."""
    VECTORS_DIR.mkdir(exist_ok=True)
    for name, data in vectors().items():
        (VECTORS_DIR / f"{name}.hex").write_text(data.hex() + "\n")


def _pinned(name: str) -> bytes:
    return bytes.fromhex((VECTORS_DIR / f"{name}.hex").read_text().strip())


@pytest.mark.parametrize("name", sorted(vectors()))
def test_the_bytes_match_the_pinned_vector(name: str) -> None:
    assert vectors()[name].hex() == _pinned(name).hex()


def test_every_pinned_file_is_a_known_vector() -> None:
    assert {p.stem for p in VECTORS_DIR.glob("*.hex")} == set(vectors())


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_pinned_messages_decode_to_their_values(name: str) -> None:
    assert decode_message_untrusted(_pinned(f"message_{name}")) == MESSAGES[name]


def test_the_pinned_sealed_frame_opens() -> None:
    frame = _pinned("frame_sealed_gossip")
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    plain = FIXED_KEY.open(make_nonce(Transport.TCP, True, 1), frame[4:])
    assert decode_message_untrusted(plain) == MESSAGES["gossip_broadcast"]


@pytest.mark.parametrize("name", sorted(SLEEVE))
def test_pinned_sleeve_heartbeats_decode_to_their_values(name: str) -> None:
    _data, key, heartbeat = SLEEVE[name]
    _header, decoded = decode_heartbeat_untrusted(_pinned(name), key=key, sender_high=False)
    assert decoded == heartbeat


def test_both_ends_derive_the_pinned_key() -> None:
    other_end = SessionKey.derive(PRIVATE_B, KeyPair.from_private(PRIVATE_A).public, b"wfvAwt7sj")
    assert other_end.raw == _pinned("session_key_derived")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python -m tests.wire.test_golden --regenerate")
    regenerate()
    print(f"rewrote {len(vectors())} vectors in {VECTORS_DIR}")
