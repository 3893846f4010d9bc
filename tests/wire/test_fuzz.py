"""Fuzzing every parser of untrusted bytes: only the declared error ever escapes.

* ``cbor.decode_untrusted`` and ``decode_message_untrusted``: DecodeError only;
* ``FrameDecoder``: DecodeError only;
* ``Handshake.receive_data``: HandshakeError only (it wraps decode errors);
* ``Session.receive_data``: RemoteProtocolError only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.errors import DecodeError, HandshakeError, RemoteProtocolError
from router.mesh.handshake import Handshake, LocalIdentity, encode_preamble
from router.mesh.names import PeerName
from router.mesh.session import Session
from router.wire import cbor
from router.wire.framing import FrameDecoder, encode_frame
from router.wire.messages import Message, decode_message_untrusted, encode_message
from tests.wire.test_golden import MESSAGES

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = [encode_message(m) for m in MESSAGES.values()]


@st.composite
def mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A valid encoding with a few bytes flipped, inserted, deleted or truncated."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        pos = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x1B, 0x5B, 0x9B, 0xBB, 0xC1, 0xF7, 0xFF]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _decode_message(data: bytes) -> Message | None:
    try:
        return decode_message_untrusted(data)
    except DecodeError:
        return None


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_into_the_cbor_decoder(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        cbor.decode_untrusted(data)


@FUZZ
@given(mutated(VALID))
def test_mutated_messages_into_the_cbor_decoder(data: bytes) -> None:
    for allow_int_keys in (False, True):
        with contextlib.suppress(DecodeError):
            cbor.decode_untrusted(data, allow_int_keys=allow_int_keys, max_depth=4)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_into_the_message_decoder(data: bytes) -> None:
    _decode_message(data)


@FUZZ
@given(mutated(VALID))
def test_mutated_messages_decode_or_raise_decode_error(data: bytes) -> None:
    msg = _decode_message(data)
    if msg is not None:  # whatever decodes must re-encode to a valid message
        assert _decode_message(encode_message(msg)) == msg


_PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@FUZZ
@given(_PLAIN)
def test_cbor_round_trips_plain_values(value: object) -> None:
    encoded = cbor.encode(value)
    assert cbor.decode_untrusted(encoded) == value
    assert cbor.encode(cbor.decode_untrusted(encoded)) == encoded  # canonical: stable


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_random_chunks_into_the_framer(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_size=1000)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
    except DecodeError:
        pass


def _identity(name: int, password: bytes | None) -> LocalIdentity:
    return LocalIdentity(
        name=PeerName(name), nickname=f"h{name}", uid=name, short_id=name, password=password
    )


def _handshake(password: bytes | None = None) -> Handshake:
    return Handshake(
        _identity(1, password), outbound=True, remote_ip=ipaddress.ip_address("192.0.2.9"), now=0.0
    )


def _peer_stream(password: bytes | None) -> bytes:
    """Everything a real peer sends in a handshake with a real us."""
    us = _handshake(password)
    peer = Handshake(
        _identity(2, password), outbound=False, remote_ip=ipaddress.ip_address("192.0.2.1"), now=0.0
    )
    sent = bytearray()
    while not peer.done:
        peer.receive_data(us.data_to_send())
        out = peer.data_to_send()
        sent += out
        if not us.done:
            us.receive_data(out)
    return bytes(sent)


PEER_STREAMS = [_peer_stream(None), _peer_stream(b"secret")]


def _feed_handshake(hs: Handshake, data: bytes, step: int) -> None:
    try:
        for i in range(0, len(data), step):
            if hs.done:
                break
            hs.receive_data(data[i : i + step])
    except HandshakeError:
        assert hs.deadline() == math.inf


@FUZZ
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_random_bytes_into_a_handshake(data: bytes, step: int) -> None:
    _feed_handshake(_handshake(), data, step)


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_after_a_valid_preamble(data: bytes, encrypted: bool) -> None:
    hs = _handshake(b"secret" if encrypted else None)
    _feed_handshake(hs, encode_preamble(1, 1) + data, 64)


@FUZZ
@given(mutated(PEER_STREAMS), st.integers(min_value=1, max_value=64))
def test_mutated_peer_streams_into_a_handshake(data: bytes, step: int) -> None:
    _feed_handshake(_handshake(None), data, step)
    _feed_handshake(_handshake(b"secret"), data, step)


def _session(encrypted: bool) -> tuple[Session, Session]:
    password = b"secret" if encrypted else None
    a = _handshake(password)
    b = Handshake(
        _identity(2, password), outbound=False, remote_ip=ipaddress.ip_address("192.0.2.1"), now=0.0
    )
    while not (a.done and b.done):
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if data:
                dst.receive_data(data)
    return Session(a.result, now=0.0), Session(b.result, now=0.0)


SESSION_STREAMS = [encode_frame(v) for v in VALID[2:]]


@FUZZ
@given(st.one_of(mutated(SESSION_STREAMS), st.binary(max_size=200)), st.booleans())
def test_bad_bytes_into_a_session(data: bytes, encrypted: bool) -> None:
    _, b = _session(encrypted)
    try:
        b.receive_data(data, 1.0)
    except RemoteProtocolError:
        assert b.deadline() == math.inf
