"""Two real sessions back to back, built from two real handshakes."""

from __future__ import annotations

import ipaddress
import math
from typing import Any

import pytest

from router.errors import LocalProtocolError, RemoteProtocolError
from router.mesh.handshake import Handshake, LocalIdentity
from router.mesh.names import PeerName
from router.mesh.session import Session
from router.wire.constants import MAX_FRAME_SIZE
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
    encode_message,
)

PASSWORD = b"wfvAwt7sj"
A, B = PeerName(0x0A0000000001), PeerName(0x0A0000000002)


def sessions(*, encrypted: bool, now: float = 0.0, **kwargs: Any) -> tuple[Session, Session]:
    password = PASSWORD if encrypted else None
    hs_a = Handshake(
        LocalIdentity(name=A, nickname="a", uid=1, short_id=1, password=password),
        outbound=True,
        remote_ip=ipaddress.ip_address("192.0.2.2"),
        now=now,
    )
    hs_b = Handshake(
        LocalIdentity(name=B, nickname="b", uid=2, short_id=2, password=password),
        outbound=False,
        remote_ip=ipaddress.ip_address("192.0.2.1"),
        now=now,
    )
    while not (hs_a.done and hs_b.done):
        for src, dst in ((hs_a, hs_b), (hs_b, hs_a)):
            data = src.data_to_send()
            if data:
                dst.receive_data(data)
    assert hs_a.done and hs_b.done
    assert hs_a.result.encrypted == encrypted
    return (
        Session(hs_a.result, now=now, **kwargs),
        Session(hs_b.result, now=now, **kwargs),
    )


MESSAGES: list[Message] = [
    Gossip(channel="topology", src=A, payload=b"\x01\x02"),
    GossipUnicast(channel="ipam", src=A, dst=B, payload=b"claim"),
    GossipBroadcast(channel="dns", src=A, payload=b""),
    ConnectionEstablished(),
]


@pytest.mark.parametrize("encrypted", [False, True])
def test_messages_cross_in_both_directions(encrypted: bool) -> None:
    a, b = sessions(encrypted=encrypted)
    for msg in MESSAGES:
        assert a.send(msg)
    assert b.receive_data(a.data_to_send(), 1.0) == MESSAGES
    for msg in reversed(MESSAGES):
        assert b.send(msg)
    assert a.receive_data(b.data_to_send(), 1.0) == list(reversed(MESSAGES))
    stats = a.statistics()
    assert stats.messages_sent == stats.messages_received == len(MESSAGES)
    assert stats.bytes_sent == b.statistics().bytes_received
    assert stats.queued_bytes == 0 and stats.dropped == 0


@pytest.mark.parametrize("encrypted", [False, True])
def test_one_byte_at_a_time(encrypted: bool) -> None:
    a, b = sessions(encrypted=encrypted)
    for msg in MESSAGES:
        a.send(msg)
    stream = a.data_to_send()
    received: list[Message] = []
    for i in range(len(stream)):
        received += b.receive_data(stream[i : i + 1], 1.0)
    assert received == MESSAGES


def test_encrypted_frames_do_not_carry_the_plaintext() -> None:
    a, _ = sessions(encrypted=True)
    a.send(Gossip(channel="topology", src=A, payload=b"very secret payload"))
    assert b"very secret payload" not in a.data_to_send()
    plain, _ = sessions(encrypted=False)
    plain.send(Gossip(channel="topology", src=A, payload=b"very secret payload"))
    assert b"very secret payload" in plain.data_to_send()


# ------------------------------------------------------------------------- broken streams


def _two_frames(a: Session) -> list[bytes]:
    a.send(Gossip(channel="c", src=A, payload=b"one"))
    a.send(Gossip(channel="c", src=A, payload=b"two"))
    data = a.data_to_send()
    first = 4 + int.from_bytes(data[:4], "big")
    return [data[:first], data[first:]]


def test_a_tampered_frame_ends_the_session() -> None:
    a, b = sessions(encrypted=True)
    frame = bytearray(_two_frames(a)[0])
    frame[-1] ^= 0x40
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        b.receive_data(bytes(frame), 1.0)
    assert b.deadline() == math.inf
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"", 1.0)


def test_a_replayed_frame_ends_the_session() -> None:
    a, b = sessions(encrypted=True)
    first, _ = _two_frames(a)
    assert len(b.receive_data(first, 1.0)) == 1
    with pytest.raises(RemoteProtocolError, match="replayed or out of order"):
        b.receive_data(first, 1.0)


def test_reordered_frames_end_the_session() -> None:
    a, b = sessions(encrypted=True)
    first, second = _two_frames(a)
    with pytest.raises(RemoteProtocolError):
        b.receive_data(second + first, 1.0)


def test_a_dropped_frame_ends_the_session() -> None:
    a, b = sessions(encrypted=True)
    _, second = _two_frames(a)
    with pytest.raises(RemoteProtocolError):
        b.receive_data(second, 1.0)


def test_frames_of_the_other_direction_do_not_open() -> None:
    a, _ = sessions(encrypted=True)
    first, _ = _two_frames(a)
    with pytest.raises(RemoteProtocolError):
        a.receive_data(first, 1.0)  # a's own frame reflected back at it


def test_an_undecodable_plain_message_ends_the_session() -> None:
    _, b = sessions(encrypted=False)
    with pytest.raises(RemoteProtocolError, match="undecodable message"):
        b.receive_data(encode_frame(b"\x82\x07\x00"), 1.0)


@pytest.mark.parametrize(
    "msg",
    [
        Ready(conn_id=1),
        Hello(
            version=1,
            name=A,
            nickname="a",
            uid=1,
            short_id=1,
            conn_id=1,
            public_key=None,
            trusted=False,
            overlays={},
        ),
    ],
)
def test_handshake_messages_in_the_session_end_it(msg: Message) -> None:
    _, b = sessions(encrypted=False)
    with pytest.raises(RemoteProtocolError, match="after the handshake"):
        b.receive_data(encode_frame(encode_message(msg)), 1.0)


def test_an_oversize_frame_header_ends_the_session() -> None:
    _, b = sessions(encrypted=False)
    with pytest.raises(RemoteProtocolError):
        b.receive_data((MAX_FRAME_SIZE + 1).to_bytes(4, "big"), 1.0)


def test_sending_handshake_messages_is_our_bug() -> None:
    a, _ = sessions(encrypted=False)
    with pytest.raises(LocalProtocolError):
        a.send(Ready(conn_id=1))


def test_sending_an_invalid_message_is_our_bug() -> None:
    a, _ = sessions(encrypted=False)
    with pytest.raises(LocalProtocolError):
        a.send(Gossip(channel="no spaces allowed", src=A, payload=b""))


# ------------------------------------------------------------------------- bounds


def test_a_full_queue_refuses_and_counts() -> None:
    a, b = sessions(encrypted=True, max_queue_bytes=1000)
    big = Gossip(channel="c", src=A, payload=b"x" * 600)
    assert a.send(big)
    assert not a.send(big)
    assert a.statistics().dropped == 1
    assert b.receive_data(a.data_to_send(), 1.0) == [big]
    assert a.send(big)
    assert a.statistics().queued_bytes > 600


def test_a_message_too_large_for_a_frame_is_dropped() -> None:
    a, _ = sessions(encrypted=True, max_queue_bytes=4 * MAX_FRAME_SIZE)
    assert not a.send(Gossip(channel="c", src=A, payload=b"x" * (MAX_FRAME_SIZE - 10)))
    assert a.statistics().dropped == 1
    assert a.data_to_send() == b""


def test_a_maximum_size_message_crosses() -> None:
    a, b = sessions(encrypted=True)
    msg = Gossip(channel="c", src=A, payload=b"y" * (MAX_FRAME_SIZE - 64))
    assert a.send(msg)
    assert b.receive_data(a.data_to_send(), 1.0) == [msg]


# ------------------------------------------------------------------------- timers


def test_an_idle_session_heartbeats() -> None:
    a, b = sessions(encrypted=True, heartbeat_interval=30.0, timeout=60.0)
    assert a.deadline() == 15.0
    a.handle_timer(15.0)
    assert a.statistics().heartbeats_sent == 1
    assert b.receive_data(a.data_to_send(), 15.0) == []  # consumed, not returned
    assert b.statistics().heartbeats_received == 1
    a.handle_timer(30.0)  # the heartbeat counted as traffic: none due yet
    assert a.data_to_send() == b""
    a.handle_timer(45.0)
    assert a.statistics().heartbeats_sent == 2


def test_a_busy_session_sends_no_heartbeat() -> None:
    a, _ = sessions(encrypted=False, heartbeat_interval=30.0)
    for t in (10.0, 20.0, 40.0):
        a.send(ConnectionEstablished())
        a.handle_timer(t + 5.0)
    assert a.statistics().heartbeats_sent == 0


def test_a_silent_peer_times_out() -> None:
    a, b = sessions(encrypted=True, heartbeat_interval=30.0, timeout=60.0)
    b.send(ConnectionEstablished())
    a.receive_data(b.data_to_send(), 50.0)
    assert a.deadline() == pytest.approx(15.0)
    a.handle_timer(109.0)
    with pytest.raises(
        RemoteProtocolError, match="connection timed out: nothing received for 60 s"
    ):
        a.handle_timer(110.0)
    assert a.deadline() == math.inf
    assert not a.send(ConnectionEstablished())  # after failure: a counted drop


def test_two_idle_sessions_keep_each_other_alive() -> None:
    a, b = sessions(encrypted=True, heartbeat_interval=30.0, timeout=60.0)
    now = 0.0
    last_frame = {0: 0.0, 1: 0.0}
    while now < 1000.0:
        now = min(a.deadline(), b.deadline())
        for index, (src, dst) in enumerate(((a, b), (b, a))):
            src.handle_timer(now)
            data = src.data_to_send()
            if data:
                assert now - last_frame[index] <= 30.0
                last_frame[index] = now
                assert dst.receive_data(data, now) == []
    assert a.statistics().heartbeats_sent == b.statistics().heartbeats_sent >= 30


def test_partial_frames_count_as_activity() -> None:
    a, b = sessions(encrypted=False, timeout=60.0)
    a.send(Gossip(channel="c", src=A, payload=b"z" * 100))
    data = a.data_to_send()
    assert b.receive_data(data[:10], 59.0) == []
    b.handle_timer(60.0)
    assert b.receive_data(data[10:], 70.0) != []


def test_the_result_is_kept() -> None:
    a, _ = sessions(encrypted=True)
    assert a.result.remote_name == B
    assert a.result.key is not None


def test_invalid_settings_are_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        sessions(encrypted=False, heartbeat_interval=0.0)


def test_heartbeats_can_also_be_sent_explicitly() -> None:
    a, b = sessions(encrypted=True)
    assert a.send(Heartbeat())
    assert b.receive_data(a.data_to_send(), 1.0) == []
