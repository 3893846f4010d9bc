"""The sleeve UDP packet codec (router.overlay.sleeve.packet): layout, sealing, fuzzing."""

from __future__ import annotations

import contextlib

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.crypto.keys import SessionKey
from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import PeerName
from router.overlay.sleeve.packet import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    PacketHeader,
    PacketType,
    SleeveHeartbeat,
    decode_header_untrusted,
    decode_heartbeat_untrusted,
    encode_heartbeat,
    encode_packet,
    heartbeat_min_size,
    open_packet_untrusted,
)

A = PeerName(0x0200_0000_0001)
B = PeerName(0x0200_0000_0002)
KEY = SessionKey(bytes(range(32)))
CONN = 0x0102_0304_0506_0708

# Golden vectors: heartbeat A -> B, connection CONN, counter 5; A's name is the lower.
GOLDEN_PLAIN = bytes.fromhex(
    "01" "01" "0000" "0102030405060708" "0000000000000005"  # version type reserved conn ctr
    "020000000001" "020000000002"  # sender, receiver
)
GOLDEN_SEALED = bytes.fromhex(
    "01" "01" "0000" "0102030405060708" "0000000000000005"
    "c99148e3a7bac1b7965557fc4515b893"  # MAC
    "e460d3714cfa19316780c4e9d5c44603"  # ciphertext of 01010000 + the two names
)

names = st.integers(0, (1 << 48) - 1).map(PeerName)
u64 = st.integers(0, (1 << 64) - 1)


def test_golden_plain_heartbeat() -> None:
    assert encode_heartbeat(CONN, 5, A, B, key=None, sender_high=False) == GOLDEN_PLAIN
    header, hb = decode_heartbeat_untrusted(GOLDEN_PLAIN, key=None, sender_high=False)
    assert header == PacketHeader(PacketType.HEARTBEAT, CONN, 5)
    assert hb == SleeveHeartbeat(A, B, 0)
    assert len(GOLDEN_PLAIN) == heartbeat_min_size(False) == 32


def test_golden_sealed_heartbeat() -> None:
    assert encode_heartbeat(CONN, 5, A, B, key=KEY, sender_high=False) == GOLDEN_SEALED
    header, hb = decode_heartbeat_untrusted(GOLDEN_SEALED, key=KEY, sender_high=False)
    assert (header.counter, hb.sender, hb.receiver) == (5, A, B)
    assert len(GOLDEN_SEALED) == heartbeat_min_size(True) == 52


def test_sealed_layout_is_plain_secretbox_as_documented() -> None:
    """Independent of the codec: nonce = 01 (UDP), 00 (sender low), 14 zeros, counter."""
    nonce = bytes([1, 0]) + bytes(14) + (5).to_bytes(8, "big")
    plain = GOLDEN_PLAIN[:4] + GOLDEN_PLAIN[HEADER_SIZE:]
    sealed = nacl.bindings.crypto_secretbox_easy(plain, nonce, bytes(range(32)))
    assert GOLDEN_PLAIN[:HEADER_SIZE] + sealed == GOLDEN_SEALED


@settings(max_examples=100, deadline=None)
@given(conn=u64, counter=u64, sender=names, receiver=names, high=st.booleans(),
       sealed=st.booleans(), extra=st.integers(0, 2000))
def test_heartbeat_roundtrip(conn: int, counter: int, sender: PeerName, receiver: PeerName,
                             high: bool, sealed: bool, extra: int) -> None:
    key = KEY if sealed else None
    size = heartbeat_min_size(sealed) + extra
    data = encode_heartbeat(conn, counter, sender, receiver, key=key, sender_high=high, size=size)
    assert len(data) == size
    header, hb = decode_heartbeat_untrusted(data, key=key, sender_high=high)
    assert header == PacketHeader(PacketType.HEARTBEAT, conn, counter)
    assert hb == SleeveHeartbeat(sender, receiver, extra)


def test_frames_packets_share_the_header() -> None:
    data = encode_packet(PacketType.FRAMES, 9, 1, b"frames", key=KEY, sender_high=True)
    assert decode_header_untrusted(data) == PacketHeader(PacketType.FRAMES, 9, 1)
    assert open_packet_untrusted(data, key=KEY, sender_high=True)[1] == b"frames"
    with pytest.raises(DecodeError, match="expected a heartbeat"):
        decode_heartbeat_untrusted(data, key=KEY, sender_high=True)


def test_wrong_key_or_direction_does_not_open() -> None:
    with pytest.raises(DecodeError):
        decode_heartbeat_untrusted(GOLDEN_SEALED, key=SessionKey(bytes(32)), sender_high=False)
    with pytest.raises(DecodeError):  # the reverse direction's nonce
        decode_heartbeat_untrusted(GOLDEN_SEALED, key=KEY, sender_high=True)
    with pytest.raises(DecodeError):  # a sealed packet read as unencrypted is garbage
        decode_heartbeat_untrusted(GOLDEN_SEALED, key=None, sender_high=False)


@pytest.mark.parametrize("offset", [*range(0, 4), *range(12, 52)])
def test_any_flipped_bit_outside_the_conn_id_fails_to_open(offset: int) -> None:
    data = bytearray(GOLDEN_SEALED)
    data[offset] ^= 0x01
    with pytest.raises(DecodeError):
        decode_heartbeat_untrusted(bytes(data), key=KEY, sender_high=False)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (GOLDEN_PLAIN[:19], "shorter than its header"),
        (b"\x02" + GOLDEN_PLAIN[1:], "version"),
        (GOLDEN_PLAIN[:1] + b"\x07" + GOLDEN_PLAIN[2:], "type"),
        (GOLDEN_PLAIN[:2] + b"\x00\x01" + GOLDEN_PLAIN[4:], "reserved"),
        (GOLDEN_PLAIN + bytes(MAX_DATAGRAM), "too big"),
    ],
)
def test_bad_headers(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_header_untrusted(data)


def test_bad_bodies() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode_heartbeat_untrusted(GOLDEN_PLAIN[:-1], key=None, sender_high=False)
    with pytest.raises(DecodeError, match="padding"):
        decode_heartbeat_untrusted(GOLDEN_PLAIN + b"\x00\x01", key=None, sender_high=False)
    with pytest.raises(DecodeError, match="truncated"):
        decode_heartbeat_untrusted(GOLDEN_SEALED[:HEADER_SIZE + 19], key=KEY, sender_high=False)


def test_encode_bounds() -> None:
    with pytest.raises(LocalProtocolError):
        encode_heartbeat(CONN, 0, A, B, key=KEY, sender_high=False, size=51)
    with pytest.raises(LocalProtocolError):
        encode_heartbeat(CONN, 0, A, B, key=None, sender_high=False, size=MAX_DATAGRAM + 1)
    with pytest.raises(LocalProtocolError):
        encode_heartbeat(CONN, 1 << 64, A, B, key=None, sender_high=False)
    with pytest.raises(LocalProtocolError):
        encode_packet(PacketType.FRAMES, 1, 1, bytes(MAX_DATAGRAM), key=None, sender_high=False)
    biggest = encode_heartbeat(CONN, 0, A, B, key=KEY, sender_high=False, size=MAX_DATAGRAM)
    assert decode_heartbeat_untrusted(biggest, key=KEY, sender_high=False)[1].padding == (
        MAX_DATAGRAM - 52
    )


# -- fuzz: untrusted bytes raise DecodeError and nothing else --------------------------------


def _only_decode_errors(data: bytes) -> None:
    for key in (None, KEY):
        for high in (False, True):
            with contextlib.suppress(DecodeError):
                decode_heartbeat_untrusted(data, key=key, sender_high=high)
    with contextlib.suppress(DecodeError):
        decode_header_untrusted(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    _only_decode_errors(data)


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from([GOLDEN_PLAIN, GOLDEN_SEALED]), cut=st.integers(0, 52),
       flips=st.lists(st.tuples(st.integers(0, 51), st.integers(1, 255)), max_size=3),
       tail=st.binary(max_size=8))
def test_fuzz_mutated_packets(base: bytes, cut: int, flips: list[tuple[int, int]],
                              tail: bytes) -> None:
    data = bytearray(base[:cut] + tail)
    for offset, mask in flips:
        if offset < len(data):
            data[offset] ^= mask
    _only_decode_errors(bytes(data))
