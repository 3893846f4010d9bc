"""Two real handshakes back to back: bytes piped between them, failures on each side."""

from __future__ import annotations

import ipaddress
import math

import pytest

from router.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from router.mesh.handshake import Handshake, LocalIdentity, encode_preamble
from router.mesh.names import PeerName
from router.mesh.session import Session
from router.wire.constants import (
    MAGIC,
    MAX_HANDSHAKE_FRAME_SIZE,
    PROTOCOL_MAX_VERSION,
    PROTOCOL_MIN_VERSION,
)
from router.wire.framing import FrameDecoder, encode_frame
from router.wire.messages import Gossip, Hello, Ready, decode_message_untrusted, encode_message

IP_A = ipaddress.ip_address("10.0.0.1")
IP_B = ipaddress.ip_address("10.0.0.2")
LAN = ipaddress.ip_network("10.0.0.0/24")
PASSWORD = b"wfvAwt7sj"


def identity(
    name: int,
    *,
    uid: int | None = None,
    password: bytes | None = None,
    trusted: bool = False,
    nickname: str = "",
) -> LocalIdentity:
    return LocalIdentity(
        name=PeerName(name),
        nickname=nickname or f"host{name}",
        uid=uid if uid is not None else 1000 + name,
        short_id=name & 0xFFF,
        password=password,
        trusted_subnets=(LAN,) if trusted else (),
        overlays={"sleeve": {"udp_port": 6783}},
    )


def pair(
    a: LocalIdentity,
    b: LocalIdentity,
    *,
    versions_a: tuple[int, int] = (1, 1),
    versions_b: tuple[int, int] = (1, 1),
) -> tuple[Handshake, Handshake]:
    return (
        Handshake(
            a,
            outbound=True,
            remote_ip=IP_B,
            now=0.0,
            min_version=versions_a[0],
            max_version=versions_a[1],
        ),
        Handshake(
            b,
            outbound=False,
            remote_ip=IP_A,
            now=0.0,
            min_version=versions_b[0],
            max_version=versions_b[1],
        ),
    )


def feed(hs: Handshake, data: bytes, chunk: int | None) -> None:
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        hs.receive_data(data[i : i + step])


def drive(a: Handshake, b: Handshake, chunk: int | None = None) -> list[HandshakeError | None]:
    """Pipe bytes both ways until quiet; the error each side raised (None if none)."""
    errors: list[HandshakeError | None] = [None, None]
    sides = (a, b)
    for _ in range(20):
        moved = False
        for src in (0, 1):
            dst = 1 - src
            data = sides[src].data_to_send()
            if data and errors[dst] is None and not sides[dst].done:
                moved = True
                try:
                    feed(sides[dst], data, chunk)
                except HandshakeError as exc:
                    errors[dst] = exc
        if not moved:
            return errors
    raise AssertionError("handshake did not settle")


def complete(a: Handshake, b: Handshake, chunk: int | None = None) -> None:
    assert drive(a, b, chunk) == [None, None]
    assert a.done and b.done


def remote_hello(hs: Handshake, peer: LocalIdentity) -> Hello:
    """Our side's Hello as the peer would read it (by running a real peer to that point)."""
    probe = Handshake(peer, outbound=False, remote_ip=IP_A, now=0.0)
    hs.receive_data(probe.data_to_send())
    stream = hs.data_to_send()
    preamble = encode_preamble(PROTOCOL_MIN_VERSION, PROTOCOL_MAX_VERSION)
    assert stream.startswith(preamble)
    frames = FrameDecoder().feed(stream[len(preamble) :])
    hello = decode_message_untrusted(frames[0])
    assert isinstance(hello, Hello)
    return hello


# ------------------------------------------------------------------------- success


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_plain_handshake(chunk: int | None) -> None:
    a, b = pair(identity(1), identity(2))
    complete(a, b, chunk)
    ra, rb = a.result, b.result
    assert not ra.encrypted and ra.key is None and ra.overlay_key is None
    assert ra.conn_id == rb.conn_id
    assert ra.remote_name == PeerName(2) and rb.remote_name == PeerName(1)
    assert ra.remote_nickname == "host2" and ra.remote_uid == 1002 and ra.remote_short_id == 2
    assert ra.remote_overlays == {"sleeve": {"udp_port": 6783}}
    assert ra.outbound and not rb.outbound
    assert ra.version == rb.version == 1
    assert not ra.sender_high and rb.sender_high
    assert a.leftover() == b"" and b.leftover() == b""
    assert a.deadline() == math.inf


@pytest.mark.parametrize("chunk", [None, 1])
def test_encrypted_handshake(chunk: int | None) -> None:
    a, b = pair(identity(1, password=PASSWORD), identity(2, password=PASSWORD))
    complete(a, b, chunk)
    ra, rb = a.result, b.result
    assert ra.encrypted and rb.encrypted
    assert ra.key is not None and ra.key == rb.key
    assert ra.overlay_encrypted and ra.overlay_key == ra.key
    assert ra.conn_id == rb.conn_id


def test_trusted_both_ways_leaves_the_overlay_unencrypted_but_the_session_sealed() -> None:
    a, b = pair(
        identity(1, password=PASSWORD, trusted=True), identity(2, password=PASSWORD, trusted=True)
    )
    complete(a, b)
    for result in (a.result, b.result):
        assert result.encrypted and result.key is not None
        assert not result.overlay_encrypted and result.overlay_key is None


@pytest.mark.parametrize("trusting_side", [0, 1])
def test_trust_on_one_side_only_keeps_the_overlay_encrypted(trusting_side: int) -> None:
    ids = [identity(1, password=PASSWORD), identity(2, password=PASSWORD)]
    ids[trusting_side] = identity(trusting_side + 1, password=PASSWORD, trusted=True)
    a, b = pair(ids[0], ids[1])
    complete(a, b)
    assert a.result.overlay_encrypted and b.result.overlay_encrypted


def test_trust_without_password_changes_nothing() -> None:
    a, b = pair(identity(1, trusted=True), identity(2, trusted=True))
    complete(a, b)
    assert not a.result.encrypted and not a.result.overlay_encrypted


def test_an_ipv4_mapped_address_is_trusted_like_ipv4() -> None:
    a = Handshake(
        identity(1, trusted=True),
        outbound=False,
        remote_ip=ipaddress.ip_address("::ffff:10.0.0.2"),
        now=0.0,
    )
    assert remote_hello(a, identity(2)).trusted
    other = Handshake(
        identity(1, trusted=True),
        outbound=False,
        remote_ip=ipaddress.ip_address("10.9.0.2"),
        now=0.0,
    )
    assert not remote_hello(other, identity(2)).trusted


def test_overlapping_version_ranges_agree_on_the_highest_common() -> None:
    a, b = pair(identity(1), identity(2), versions_a=(1, 3), versions_b=(2, 5))
    complete(a, b)
    assert a.result.version == b.result.version == 3
    assert a.version == 3


def test_the_connection_ids_differ_between_connections() -> None:
    ids = set()
    for _ in range(5):
        a, b = pair(identity(1), identity(2))
        complete(a, b)
        ids.add(a.result.conn_id)
    assert len(ids) == 5


def test_bytes_after_the_peers_ready_are_left_for_the_session() -> None:
    a, b = pair(identity(1, password=PASSWORD), identity(2, password=PASSWORD))
    b.receive_data(a.data_to_send())  # a's preamble: b queues its preamble and Hello
    a.receive_data(b.data_to_send())  # b's preamble and Hello: a queues Hello and Ready
    b.receive_data(a.data_to_send())  # a's Hello and Ready: b queues Ready and is done
    assert b.done and not a.done
    session_b = Session(b.result, now=0.0)
    gossip = Gossip(channel="topology", src=PeerName(2), payload=b"early")
    assert session_b.send(gossip)
    a.receive_data(b.data_to_send() + session_b.data_to_send())
    assert a.done
    assert a.leftover() != b""
    session_a = Session(a.result, now=0.0)
    assert session_a.receive_data(a.leftover(), 0.0) == [gossip]


def test_remote_hello_is_visible_while_pending() -> None:
    a, b = pair(identity(1), identity(2, nickname="db1"))
    assert a.remote_hello is None
    b.receive_data(a.data_to_send())
    assert a.remote_hello is None
    a.receive_data(b.data_to_send())
    assert not a.done
    assert a.remote_hello is not None and a.remote_hello.nickname == "db1"


# ------------------------------------------------------------------------- failures


def test_wrong_password() -> None:
    a, b = pair(identity(1, password=PASSWORD), identity(2, password=b"other"))
    errors = drive(a, b)
    for error in errors:
        assert error is not None and error.retry
        assert "authentication failed: the peer has a different password" in str(error)
    assert not a.done and not b.done


def test_password_on_one_side_only() -> None:
    a, b = pair(identity(1, password=PASSWORD), identity(2))
    err_a, err_b = drive(a, b)
    assert err_a is not None
    assert str(err_a) == "password specified, but peer requested an unencrypted connection"
    assert err_b is not None
    assert str(err_b) == "no password specified, but peer requested an encrypted connection"


def test_version_mismatch() -> None:
    a, b = pair(identity(1), identity(2), versions_a=(1, 1), versions_b=(2, 3))
    err_a, err_b = drive(a, b)
    assert err_a is not None
    assert "incompatible protocol versions: we speak 1..1, peer speaks 2..3" in str(err_a)
    assert err_b is not None
    assert "we speak 2..3, peer speaks 1..1" in str(err_b)


def test_connecting_to_ourself() -> None:
    me = identity(1)
    a, b = pair(me, me)
    errors = drive(a, b)
    for error in errors:
        assert error is not None and not error.retry
        assert str(error) == "cannot connect to ourself"


def test_name_collision() -> None:
    a, b = pair(identity(1, uid=5), identity(1, uid=6))
    errors = drive(a, b)
    for error in errors:
        assert error is not None and not error.retry
        assert str(error) == "peer name collision with remote peer"


def test_timeout() -> None:
    a, _ = pair(identity(1), identity(2))
    assert a.deadline() == 10.0
    a.handle_timer(9.99)
    with pytest.raises(HandshakeError, match="handshake timed out after 10 s") as info:
        a.handle_timer(10.0)
    assert info.value.retry
    assert a.deadline() == math.inf
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"x")


def test_custom_timeout() -> None:
    hs = Handshake(identity(1), outbound=True, remote_ip=IP_B, now=100.0, timeout=2.5)
    assert hs.deadline() == 102.5


def test_bad_magic_fails_on_the_first_wrong_byte() -> None:
    a, _ = pair(identity(1), identity(2))
    a.receive_data(MAGIC[:3])
    with pytest.raises(HandshakeError, match="bad protocol magic"):
        a.receive_data(b"X")


def test_an_invalid_version_range_is_refused() -> None:
    a, _ = pair(identity(1), identity(2))
    with pytest.raises(HandshakeError, match=r"invalid protocol version range 3\.\.2"):
        a.receive_data(MAGIC + bytes((3, 2)))


def _past_preamble() -> Handshake:
    a, _ = pair(identity(1), identity(2))
    a.receive_data(encode_preamble(1, 1))
    return a


def test_a_session_message_instead_of_hello_is_refused() -> None:
    a = _past_preamble()
    with pytest.raises(HandshakeError, match="expected Hello, peer sent Ready"):
        a.receive_data(encode_frame(encode_message(Ready(conn_id=1))))


def test_hello_with_another_version_is_refused() -> None:
    a = _past_preamble()
    hello = Hello(
        version=2,
        name=PeerName(2),
        nickname="x",
        uid=1,
        short_id=1,
        conn_id=1,
        public_key=None,
        trusted=False,
        overlays={},
    )
    with pytest.raises(HandshakeError, match="version 2, not 1"):
        a.receive_data(encode_frame(encode_message(hello)))


def test_garbage_frames_are_handshake_errors() -> None:
    a = _past_preamble()
    with pytest.raises(HandshakeError, match="invalid handshake data"):
        a.receive_data(encode_frame(b"\xff\x00garbage"))


def test_an_oversize_handshake_frame_is_refused_from_its_header() -> None:
    a = _past_preamble()
    with pytest.raises(HandshakeError):
        a.receive_data((MAX_HANDSHAKE_FRAME_SIZE + 1).to_bytes(4, "big"))


def test_a_ready_with_the_wrong_connection_id_is_refused() -> None:
    a = Handshake(identity(1), outbound=True, remote_ip=IP_B, now=0.0)
    hello_a = remote_hello(a, identity(2))
    hello_b = Hello(
        version=PROTOCOL_MAX_VERSION,
        name=PeerName(2),
        nickname="b",
        uid=9,
        short_id=2,
        conn_id=77,
        public_key=None,
        trusted=False,
        overlays={},
    )
    a.receive_data(encode_frame(encode_message(hello_b)))
    assert decode_message_untrusted(FrameDecoder().feed(a.data_to_send())[0]) == Ready(
        conn_id=hello_a.conn_id ^ 77
    )
    with pytest.raises(HandshakeError, match="wrong connection id"):
        a.receive_data(encode_frame(encode_message(Ready(conn_id=(hello_a.conn_id ^ 77) + 1))))


def test_a_plain_ready_on_an_encrypted_connection_fails_authentication() -> None:
    a, b = pair(identity(1, password=PASSWORD), identity(2, password=PASSWORD))
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())  # a has b's Hello and waits for a sealed Ready
    with pytest.raises(HandshakeError, match="authentication failed"):
        a.receive_data(encode_frame(encode_message(Ready(conn_id=0))))


def test_the_result_is_not_available_before_done() -> None:
    a, _ = pair(identity(1), identity(2))
    with pytest.raises(LocalProtocolError):
        _ = a.result


def test_done_handshakes_refuse_more_bytes() -> None:
    a, b = pair(identity(1), identity(2))
    complete(a, b)
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"\x00")


def test_every_failure_is_a_remote_protocol_error() -> None:
    assert issubclass(HandshakeError, RemoteProtocolError)


def test_an_invalid_local_version_range_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        Handshake(identity(1), outbound=True, remote_ip=IP_B, now=0.0, min_version=2, max_version=1)
