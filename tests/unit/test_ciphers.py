"""The sleeve's frame ciphers: agreement, key separation, nonces and sealing."""

from __future__ import annotations

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.crypto.ciphers import (
    AES256GCM,
    PREFERENCE,
    SECRETBOX,
    FrameCipher,
    choose,
    frame_key,
    gcm_nonce,
    hardware_aes,
    offered,
)
from router.crypto.keys import SessionKey
from router.crypto.nonces import Transport, make_nonce
from router.errors import DecodeError, LocalProtocolError

KEY = bytes(range(32))
offers = st.lists(st.sampled_from([*PREFERENCE, "rot13", ""]), max_size=4)


@given(a=offers, b=offers)
def test_both_ends_choose_the_same_cipher_from_each_others_offer(a: list[str],
                                                                 b: list[str]) -> None:
    chosen = choose(a, " ".join(b))
    assert chosen == choose(b, " ".join(a))
    assert chosen in PREFERENCE
    if AES256GCM in a and AES256GCM in b:
        assert chosen == AES256GCM


@pytest.mark.parametrize("theirs", [None, 7, b"aes256gcm", "", "AES256GCM", "x" * 300])
def test_an_older_or_odd_peer_gets_secretbox(theirs: object) -> None:
    assert choose(PREFERENCE, theirs) == SECRETBOX


def test_offers_depend_on_the_cpu() -> None:
    assert offered(aes=True) == (AES256GCM, SECRETBOX)
    assert offered(aes=False) == (SECRETBOX,)
    assert hardware_aes("processor : 0\nflags\t\t: fpu sse2 aes avx pclmulqdq\n")
    assert not hardware_aes("processor : 0\nflags\t\t: fpu sse2 avx pclmulqdq\n")
    assert not hardware_aes("no flags here\n")


def test_the_gcm_key_is_derived_and_secretbox_keeps_the_session_key() -> None:
    gcm = frame_key(KEY, AES256GCM)
    assert frame_key(KEY, SECRETBOX) == KEY
    assert len(gcm) == 32 and gcm != KEY
    assert gcm == frame_key(KEY, AES256GCM)
    assert gcm != frame_key(bytes(32), AES256GCM)
    with pytest.raises(LocalProtocolError):
        frame_key(KEY, "rot13")
    with pytest.raises(LocalProtocolError):
        frame_key(b"short", AES256GCM)


def test_gcm_nonce_layout() -> None:
    assert gcm_nonce(True, 0x0102030405060708) == bytes.fromhex("010100000102030405060708")
    assert gcm_nonce(False, 1 << 63) == bytes.fromhex("010000008000000000000000")
    assert gcm_nonce(True, 5)[0] == Transport.UDP
    with pytest.raises(LocalProtocolError):
        gcm_nonce(True, -1)


@pytest.mark.parametrize("cipher", PREFERENCE)
def test_frames_seal_and_open_and_tampering_fails(cipher: str) -> None:
    box = FrameCipher(cipher, frame_key(KEY, cipher))
    sealed = box.seal(True, 42, b"hello frames")
    assert len(sealed) == 16 + len(b"hello frames")
    assert box.open(True, 42, sealed) == b"hello frames"
    for bad in (sealed[:-1] + bytes((sealed[-1] ^ 1,)), sealed[:10]):
        with pytest.raises(DecodeError):
            box.open(True, 42, bad)
    with pytest.raises(DecodeError):
        box.open(False, 42, sealed)  # the other direction's nonce
    with pytest.raises(DecodeError):
        box.open(True, 43, sealed)


def test_layouts_match_the_primitives() -> None:
    """MAC first for both; secretbox under the 24-byte nonce, GCM under the 12-byte one."""
    key = frame_key(KEY, AES256GCM)
    sealed = FrameCipher(AES256GCM, key).seal(False, 9, b"abc")
    raw = nacl.bindings.crypto_aead_aes256gcm_encrypt(b"abc", None, gcm_nonce(False, 9), key)
    assert sealed == raw[-16:] + raw[:-16]
    sealed = FrameCipher(SECRETBOX, KEY).seal(False, 9, b"abc")
    assert sealed == SessionKey(KEY).seal(make_nonce(Transport.UDP, False, 9), b"abc")


def test_equality_and_repr_keep_the_key_secret() -> None:
    a = FrameCipher(AES256GCM, KEY)
    assert a == FrameCipher(AES256GCM, KEY)
    assert a != FrameCipher(SECRETBOX, KEY)
    assert hash(a) == hash(FrameCipher(AES256GCM, KEY))
    assert KEY.hex() not in repr(a)
    with pytest.raises(LocalProtocolError):
        FrameCipher("rot13", KEY)
