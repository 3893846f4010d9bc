"""Key exchange, sealing, nonce layout and the replay window."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.crypto.keys import MAC_SIZE, KeyPair, SessionKey
from router.crypto.nonces import MAX_COUNTER, NONCE_SIZE, ReplayWindow, Transport, make_nonce
from router.errors import DecodeError, LocalProtocolError

# ------------------------------------------------------------------------- nonces


def test_nonce_layout() -> None:
    nonce = make_nonce(Transport.UDP, True, 0x0102)
    assert len(nonce) == NONCE_SIZE == 24
    assert nonce == b"\x01\x01" + bytes(14) + b"\x00\x00\x00\x00\x00\x00\x01\x02"
    assert make_nonce(Transport.TCP, False, 0) == bytes(24)


def test_nonces_separate_transport_direction_and_counter() -> None:
    combos = itertools.product(Transport, (False, True), (0, 1, 2, 255, 256, MAX_COUNTER))
    nonces = [make_nonce(t, high, c) for t, high, c in combos]
    assert len(set(nonces)) == len(nonces)


@pytest.mark.parametrize("counter", [-1, MAX_COUNTER + 1])
def test_a_counter_out_of_range_is_refused(counter: int) -> None:
    with pytest.raises(LocalProtocolError):
        make_nonce(Transport.TCP, True, counter)


# ------------------------------------------------------------------------- keys

PASSWORD = b"wfvAwt7sj"


def _pair_keys(password_a: bytes, password_b: bytes) -> tuple[SessionKey, SessionKey]:
    a, b = KeyPair.generate(), KeyPair.generate()
    return (
        SessionKey.derive(a.private, b.public, password_a),
        SessionKey.derive(b.private, a.public, password_b),
    )


def test_both_ends_derive_the_same_key_from_the_same_password() -> None:
    key_a, key_b = _pair_keys(PASSWORD, PASSWORD)
    assert key_a == key_b
    assert len(key_a.raw) == 32


def test_a_different_password_gives_a_different_key() -> None:
    key_a, key_b = _pair_keys(PASSWORD, b"other")
    assert key_a != key_b


def test_fresh_key_pairs_differ() -> None:
    first, second = KeyPair.generate(), KeyPair.generate()
    assert first.public != second.public
    assert len(first.public) == len(first.private) == 32
    assert first.private.hex() not in repr(first)


def test_seal_and_open() -> None:
    key_a, key_b = _pair_keys(PASSWORD, PASSWORD)
    nonce = make_nonce(Transport.TCP, True, 7)
    sealed = key_a.seal(nonce, b"gossip")
    assert len(sealed) == MAC_SIZE + len(b"gossip")
    assert key_b.open(nonce, sealed) == b"gossip"


def test_open_with_the_wrong_key_fails() -> None:
    key_a, key_b = _pair_keys(PASSWORD, b"other")
    nonce = make_nonce(Transport.TCP, True, 1)
    with pytest.raises(DecodeError):
        key_b.open(nonce, key_a.seal(nonce, b"secret"))


def test_open_with_another_direction_or_counter_fails() -> None:
    key = SessionKey(bytes(range(32)))
    sealed = key.seal(make_nonce(Transport.TCP, True, 1), b"secret")
    for nonce in (
        make_nonce(Transport.TCP, False, 1),
        make_nonce(Transport.TCP, True, 2),
        make_nonce(Transport.UDP, True, 1),
    ):
        with pytest.raises(DecodeError):
            key.open(nonce, sealed)


def test_tampered_or_short_ciphertext_fails() -> None:
    key = SessionKey(bytes(range(32)))
    nonce = make_nonce(Transport.UDP, False, 3)
    sealed = bytearray(key.seal(nonce, b"payload"))
    sealed[-1] ^= 1
    with pytest.raises(DecodeError):
        key.open(nonce, bytes(sealed))
    with pytest.raises(DecodeError):
        key.open(nonce, b"short")


@pytest.mark.parametrize("public", [bytes(32), b"\x01" + bytes(31), bytes(31), bytes(33)])
def test_an_unusable_peer_public_key_is_a_decode_error(public: bytes) -> None:
    with pytest.raises(DecodeError):
        SessionKey.derive(KeyPair.generate().private, public, PASSWORD)


def test_the_key_never_shows_in_repr() -> None:
    key = SessionKey(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(key)
    assert "secret" in repr(key)


def test_a_key_must_have_32_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        SessionKey(b"short")


def test_key_pair_from_private_matches_the_derivation() -> None:
    pair = KeyPair.from_private(bytes(range(32)))
    other = KeyPair.generate()
    assert SessionKey.derive(pair.private, other.public, b"") == SessionKey.derive(
        other.private, pair.public, b""
    )


# ------------------------------------------------------------------------- replay window


def test_a_fresh_window_accepts_counter_zero_once() -> None:
    window = ReplayWindow()
    assert window.highest == -1
    assert window.check_and_accept(0)
    assert not window.check_and_accept(0)


def test_out_of_order_inside_the_window_is_accepted_once() -> None:
    window = ReplayWindow(size=64)
    for counter in (10, 5, 7, 11, 6):
        assert window.check_and_accept(counter)
    for counter in (10, 5, 7, 11, 6):
        assert not window.check(counter)
    assert window.check(8)
    assert window.highest == 11


def test_the_window_edges() -> None:
    window = ReplayWindow(size=64)
    window.accept(100)
    assert window.check(100 - 63)  # the oldest counter still remembered
    assert not window.check(100 - 64)  # one too old
    assert window.check(101)


def test_a_jump_beyond_the_window_forgets_everything_older() -> None:
    window = ReplayWindow(size=64)
    window.accept(1)
    window.accept(1000)
    assert not window.check(1)
    assert not window.check(1000 - 64)
    assert window.check(999)
    assert window.check_and_accept(999)
    assert not window.check(999)


def test_check_does_not_record() -> None:
    window = ReplayWindow()
    assert window.check(5)
    assert window.check(5)
    assert window.highest == -1


def test_accepting_a_replay_is_our_bug() -> None:
    window = ReplayWindow()
    window.accept(3)
    with pytest.raises(LocalProtocolError):
        window.accept(3)


@pytest.mark.parametrize("counter", [-1, MAX_COUNTER + 1])
def test_counters_out_of_range_are_never_accepted(counter: int) -> None:
    assert not ReplayWindow().check(counter)


def test_the_largest_counter_is_accepted() -> None:
    window = ReplayWindow()
    assert window.check_and_accept(MAX_COUNTER)
    assert not window.check(MAX_COUNTER)


def test_window_size_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        ReplayWindow(size=0)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=130),
    counters=st.lists(st.integers(min_value=0, max_value=400), max_size=120),
)
def test_the_window_matches_a_naive_model(size: int, counters: list[int]) -> None:
    window = ReplayWindow(size=size)
    seen: set[int] = set()
    highest = -1
    for counter in counters:
        expected = counter not in seen and counter > highest - size
        assert window.check_and_accept(counter) == expected
        if expected:
            seen.add(counter)
            highest = max(highest, counter)
