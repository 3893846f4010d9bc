"""fastdp heartbeat frames (router.overlay.fastdp.heartbeat): a golden vector, round trips,
fuzzed decoding that raises only DecodeError, and the echo that needs both directions."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.errors import DecodeError
from router.overlay.fastdp.heartbeat import (
    ECHO_WINDOW,
    FRAME_LEN,
    Heard,
    Heartbeat,
    HeartbeatEcho,
    decode_heartbeat_untrusted,
)
from router.overlay.fastdp.plan import heartbeat_mac

A, B = "aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"
GOLDEN = bytes.fromhex(
    "7abbcc000002" "7abbcc000001" "88b5" "57564644" "01" "00"
    "aabbcc000001" "aabbcc000002" "00000007" "00000005") + bytes(20)

macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))
heartbeats = st.builds(Heartbeat, dst_mac=macs, src_mac=macs, sender=macs, receiver=macs,
                       seq=st.integers(1, 0xFFFFFFFF), echo=st.integers(0, 0xFFFFFFFF))


def test_golden_vector() -> None:
    hb = Heartbeat(heartbeat_mac(B), heartbeat_mac(A), A, B, seq=7, echo=5)
    assert hb.encode() == GOLDEN and len(GOLDEN) == FRAME_LEN
    assert decode_heartbeat_untrusted(GOLDEN) == hb


@given(heartbeats)
def test_round_trip(hb: Heartbeat) -> None:
    assert decode_heartbeat_untrusted(hb.encode()) == hb


@given(st.binary(max_size=80))
def test_untrusted_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        hb = decode_heartbeat_untrusted(data)
    except DecodeError:
        return
    assert hb.seq >= 1


@given(st.binary(min_size=FRAME_LEN, max_size=FRAME_LEN), st.integers(0, 39))
def test_mutated_golden_raises_only_decode_error(noise: bytes, cut: int) -> None:
    for data in (GOLDEN[:cut], GOLDEN[:cut] + noise[cut:]):
        with contextlib.suppress(DecodeError):
            decode_heartbeat_untrusted(data)


@pytest.mark.parametrize(("offset", "value", "why"), [
    (12, b"\x08\x00", "not a fastdp heartbeat"), (14, b"XXXX", "not a fastdp heartbeat"),
    (18, b"\x02", "version 2"), (32, b"\0\0\0\0", "seq 0")])
def test_refusals(offset: int, value: bytes, why: str) -> None:
    bad = GOLDEN[:offset] + value + GOLDEN[offset + len(value):]
    with pytest.raises(DecodeError, match=why):
        decode_heartbeat_untrusted(bad)
    with pytest.raises(DecodeError, match="bytes"):
        decode_heartbeat_untrusted(GOLDEN[:39])
    assert struct.calcsize("!6s6sH4sBx6s6sII") == 40


def pair() -> tuple[HeartbeatEcho, HeartbeatEcho]:
    return (HeartbeatEcho(A, B, heartbeat_mac(A), heartbeat_mac(B)),
            HeartbeatEcho(B, A, heartbeat_mac(B), heartbeat_mac(A)))


def exchange(a: HeartbeatEcho, b: HeartbeatEcho, a_to_b: bool, b_to_a: bool
             ) -> tuple[bool, bool]:
    """One heartbeat each way (dropped where told), answers to ONE_WAY sent at once (and
    dropped the same way); whether each side heard one that proves both ways."""
    heard = {"a": False, "b": False}
    queue = [("a", a.next_frame()), ("b", b.next_frame())]
    while queue:
        sender, frame = queue.pop(0)
        receiver, ok = ("b", a_to_b) if sender == "a" else ("a", b_to_a)
        if not ok:
            continue
        echo = b if receiver == "b" else a
        result = echo.receive(decode_heartbeat_untrusted(frame))
        if result is Heard.BOTH_WAYS:
            heard[receiver] = True
        elif result is Heard.ONE_WAY:
            queue.append((receiver, echo.next_frame()))
    return heard["a"], heard["b"]


@pytest.mark.parametrize(("a_to_b", "b_to_a"), [(True, False), (False, True), (False, False)])
def test_one_way_paths_never_count_as_heard(a_to_b: bool, b_to_a: bool) -> None:
    a, b = pair()
    results = [exchange(a, b, a_to_b, b_to_a) for _ in range(10)]
    assert results == [(False, False)] * 10


def test_both_ways_count_at_once_and_a_one_way_block_stops_it_quickly() -> None:
    a, b = pair()
    assert exchange(a, b, True, True) == (True, True)  # answers make the first round count
    assert exchange(a, b, True, True) == (True, True)
    results = [exchange(a, b, True, False) for _ in range(ECHO_WINDOW + 1)]
    assert results[0] == (False, True)  # B still holds a fresh echo of A's...
    assert results[-1] == (False, False)  # ...for at most ECHO_WINDOW heartbeats


def test_frames_for_someone_else_are_ignored() -> None:
    a, _ = pair()
    c = HeartbeatEcho("aa:bb:cc:00:00:03", A, heartbeat_mac("aa:bb:cc:00:00:03"),
                      heartbeat_mac(A))
    assert a.receive(decode_heartbeat_untrusted(c.next_frame())) is Heard.IGNORED
