"""The length-prefixed framer: layout, every split of a stream, limits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from router.wire.constants import MAX_FRAME_SIZE
from router.wire.framing import FrameDecoder, encode_frame

PAYLOADS = [b"hello", b"", b"\x00" * 300, b"x"]
STREAM = b"".join(encode_frame(p) for p in PAYLOADS)


def test_frame_layout_is_a_big_endian_length_then_the_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"\xff" * 258)[:4] == b"\x00\x00\x01\x02"


def test_encoding_an_oversize_payload_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"123456", max_size=5)


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_a_stream_split_at_any_byte_gives_the_same_frames(split: int) -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(STREAM[:split]) + decoder.feed(STREAM[split:])
    assert frames == PAYLOADS
    assert decoder.buffered == 0


def test_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for i in range(len(STREAM)):
        frames += decoder.feed(STREAM[i : i + 1])
    assert frames == PAYLOADS


def test_an_oversize_length_is_refused_before_any_payload_arrives() -> None:
    decoder = FrameDecoder(max_size=100)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(DecodeError, match="exceeds the limit of 100"):
        decoder.feed(b"\x00\x65")


def test_the_default_limit_is_4_mib() -> None:
    assert MAX_FRAME_SIZE == 4 * 1024 * 1024
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed((MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    assert FrameDecoder().feed(MAX_FRAME_SIZE.to_bytes(4, "big")) == []


def test_a_frame_of_exactly_the_limit_passes() -> None:
    decoder = FrameDecoder(max_size=10)
    assert decoder.feed(encode_frame(b"0123456789", max_size=10)) == [b"0123456789"]


def test_push_and_pop_stop_wherever_the_caller_wants() -> None:
    decoder = FrameDecoder()
    decoder.push(STREAM + b"\x00\x00")
    assert decoder.pop() == b"hello"
    assert decoder.buffered == len(STREAM) - 9 + 2
    rest = decoder.take_buffered()
    assert rest == STREAM[9:] + b"\x00\x00"
    assert decoder.buffered == 0
    assert decoder.pop() is None


def test_the_buffer_holds_at_most_one_incomplete_frame_after_feed() -> None:
    decoder = FrameDecoder(max_size=1000)
    big = encode_frame(b"y" * 1000)
    for _ in range(50):
        decoder.feed(big * 3 + big[:500])
        assert decoder.buffered <= 4 + 1000
        decoder.take_buffered()


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
)
def test_any_chunking_reassembles_the_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for start, end in itertools.pairwise(points):
        frames += decoder.feed(stream[start:end])
    assert frames == payloads
    assert decoder.buffered == 0
