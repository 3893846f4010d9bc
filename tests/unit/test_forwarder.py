"""UDP heartbeat paths (router.overlay.sleeve.forwarder), two of them back to back.

Each test wires two real :class:`HeartbeatPath` objects (or demuxes) together: every
datagram one sends is handed to the other, unless the test drops it. The TCP
``ConnectionEstablished`` message is simulated by calling ``remote_heard_us`` on the
other side as soon as ``take_newly_heard`` says so (TCP is reliable and fast here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.crypto.keys import SessionKey
from router.errors import LocalProtocolError, RemoteProtocolError
from router.mesh.names import PeerName
from router.overlay.sleeve.demux import SleeveDemux
from router.overlay.sleeve.forwarder import HeartbeatPath
from router.overlay.sleeve.packet import PacketType, encode_heartbeat, encode_packet

A = PeerName(0x0200_0000_000A)
B = PeerName(0x0200_0000_000B)
C = PeerName(0x0200_0000_000C)
ADDR_A = ("192.0.2.1", 6783)
ADDR_B = ("192.0.2.2", 6783)
KEY = SessionKey(bytes(range(32)))
CONN = 0x1234_5678_9ABC_DEF0


def path(local: PeerName, remote: PeerName, addr: tuple[str, int], *,
         key: SessionKey | None = KEY, conn_id: int = CONN) -> HeartbeatPath:
    return HeartbeatPath(local=local, remote=remote, conn_id=conn_id, remote_addr=addr,
                         key=key, sender_high=local > remote, now=0.0)


@dataclass
class Pair:
    """A and B back to back; ``lose_ab``/``lose_ba`` drop every datagram one way, and a
    datagram sent to an address other than the receiver's is lost."""

    a: HeartbeatPath
    b: HeartbeatPath
    lose_ab: bool = False
    lose_ba: bool = False
    now: float = 0.0
    delivered: list[bytes] = field(default_factory=list)

    @classmethod
    def make(cls, key_a: SessionKey | None = KEY, key_b: SessionKey | None = KEY) -> Pair:
        return cls(path(A, B, ADDR_B, key=key_a), path(B, A, ADDR_A, key=key_b))

    def step(self, now: float) -> None:
        self.now = now
        for p in (self.a, self.b):
            p.handle_timer(now)
        for sender, receiver, lost, src, dst in (
            (self.a, self.b, self.lose_ab, ADDR_A, ADDR_B),
            (self.b, self.a, self.lose_ba, ADDR_B, ADDR_A),
        ):
            for data, addr in sender.datagrams_to_send(now):
                if not lost and addr == dst:  # sent elsewhere: the receiver never sees it
                    self.delivered.append(data)
                    receiver.receive_datagram(data, src, now)
        # ConnectionEstablished over TCP
        if self.a.take_newly_heard():
            self.b.remote_heard_us()
        if self.b.take_newly_heard():
            self.a.remote_heard_us()

    def run_until(self, end: float) -> None:
        while True:
            nxt = min(self.a.deadline(), self.b.deadline())
            if nxt > end:
                self.now = end
                return
            self.step(max(nxt, self.now))


def test_pending_then_established_both_ways() -> None:
    pair = Pair.make()
    assert pair.a.statistics().state == "pending"
    assert pair.a.deadline() == 0.0  # first heartbeat at once
    pair.step(0.0)
    for p in (pair.a, pair.b):
        assert p.heard and p.heard_by_remote and p.established
        assert p.statistics().state == "established"
        assert p.take_newly_heard() is False  # reported once only
    pair.run_until(100.0)
    assert not pair.a.failed_reason and not pair.b.failed_reason
    stats = pair.a.statistics()
    assert stats.sent == 11  # slow interval (10 s) once established
    assert stats.received == 11
    assert sum(stats.drops.values()) == 0


def test_fast_heartbeats_while_pending() -> None:
    a = path(A, B, ADDR_B)
    times = []
    now = 0.0
    while now < 5.0:
        if a.datagrams_to_send(now):
            times.append(now)
        now = a.deadline()
    assert times == pytest.approx([0.5 * i for i in range(10)])


def test_unencrypted_pair_establishes_too() -> None:
    pair = Pair.make(None, None)
    pair.run_until(1.0)
    assert pair.a.established and pair.b.established
    assert len(pair.delivered[0]) == 32  # header + names, no MAC


def test_one_way_loss_never_establishes_and_fails_after_timeout() -> None:
    pair = Pair.make()
    pair.lose_ab = True  # A's heartbeats never reach B
    pair.run_until(59.9)
    assert pair.a.heard and not pair.a.heard_by_remote and not pair.a.established
    assert not pair.b.heard and pair.b.heard_by_remote and not pair.b.established
    assert pair.a.statistics().state == pair.b.statistics().state == "pending"
    assert pair.a.statistics().sent == 120  # every 0.5 s
    pair.run_until(60.0)
    assert pair.a.failed_reason == "peer did not receive our UDP heartbeats within 60 s"
    assert pair.b.failed_reason == "no UDP heartbeat received from peer within 60 s"
    assert pair.a.statistics().state == "failed"
    assert pair.a.deadline() == math.inf
    assert pair.a.datagrams_to_send(61.0) == []


def test_total_loss_fails_with_its_own_reason() -> None:
    pair = Pair.make()
    pair.lose_ab = pair.lose_ba = True
    pair.run_until(60.0)
    assert pair.a.failed_reason == "no UDP heartbeat exchanged with peer within 60 s"


def test_wrong_key_is_dropped_and_never_establishes() -> None:
    pair = Pair.make(KEY, SessionKey(bytes(32)))
    pair.run_until(60.0)
    assert pair.a.statistics().drops["auth"] == 120
    assert pair.b.statistics().drops["auth"] == 120
    assert not pair.a.heard and not pair.b.heard
    assert pair.a.failed_reason and pair.b.failed_reason


def test_replayed_and_reordered_datagrams() -> None:
    a, b = path(A, B, ADDR_B), path(B, A, ADDR_A)
    first = a.datagrams_to_send(0.0)[0][0]
    second = a.datagrams_to_send(0.5)[0][0]
    b.receive_datagram(second, ADDR_A, 0.6)
    b.receive_datagram(first, ADDR_A, 0.6)  # late but new: accepted
    b.receive_datagram(first, ADDR_A, 0.7)  # replay
    b.receive_datagram(second, ADDR_A, 0.7)  # replay
    stats = b.statistics()
    assert (stats.received, stats.drops["replay"]) == (2, 2)


def test_silence_after_established_fails() -> None:
    pair = Pair.make()
    pair.run_until(20.0)  # heartbeats at 0 and 0.5 (still fast), then 10.5, 20.5, ...
    assert pair.a.established
    pair.lose_ba = True  # B's heartbeats stop reaching A: the last one arrived at t=10.5
    pair.run_until(70.4)
    assert pair.a.statistics().state == "established"
    pair.run_until(70.5)
    assert pair.a.failed_reason == "no UDP heartbeat from peer for 60 s"
    assert not pair.a.established
    assert not pair.b.failed_reason  # B still hears A


def test_learns_the_peers_address_from_authentic_heartbeats_only() -> None:
    a, b = path(A, B, ADDR_B), path(B, A, ADDR_A)
    nat = ("198.51.100.7", 40000)
    forged = encode_heartbeat(CONN, 99, B, A, key=SessionKey(bytes(32)), sender_high=B > A)
    a.receive_datagram(forged, ("203.0.113.9", 1), 0.0)
    assert a.remote_addr == ADDR_B
    b.datagrams_to_send(0.0)  # lost
    data, _ = b.datagrams_to_send(0.5)[0]
    a.receive_datagram(data, nat, 0.5)
    assert a.remote_addr == nat
    assert a.datagrams_to_send(0.5)[0][1] == nat
    assert a.statistics().address_changes == 1


# -- forged heartbeats (issue 9 item 5) ------------------------------------------------------

STRANGER = ("192.0.2.66", 6783)
JUMP = 1 << 20  # a sniffed counter raised by 2^20


def raised(data: bytes, by: int) -> bytes:
    """``data`` with its counter (header bytes 12..19) raised by ``by``, nothing else changed."""
    counter = int.from_bytes(data[12:20], "big")
    return data[:12] + (counter + by).to_bytes(8, "big") + data[20:]


def sniffed(pair: Pair) -> bytes:
    """A real heartbeat from B to A, as a sniffer on the underlay saw it (and A got it)."""
    data = pair.delivered[-1]
    assert data[1] == PacketType.HEARTBEAT
    return data


@pytest.mark.parametrize("source", [ADDR_B, STRANGER], ids=["spoofed-peer", "stranger"])
def test_plain_forged_counter_jump_does_not_silence_the_peer(source: tuple[str, int]) -> None:
    pair = Pair.make(None, None)
    pair.run_until(15.0)  # established; B's last heartbeat at 10.5
    assert pair.a.established
    pair.a.receive_datagram(raised(sniffed(pair), JUMP), source, 15.0)
    pair.run_until(200.0)  # > 3 heartbeat timeouts
    stats = pair.a.statistics()
    assert not pair.a.failed_reason and not pair.b.failed_reason, stats
    assert stats.state == "established"
    assert stats.drops["replay"] == 0  # B's real heartbeats all counted


def test_plain_heartbeat_from_a_stranger_moves_nothing() -> None:
    pair = Pair.make(None, None)
    pair.run_until(15.0)
    before = pair.a.statistics()
    pair.a.receive_datagram(raised(sniffed(pair), JUMP), STRANGER, 15.0)
    after = pair.a.statistics()
    assert pair.a.remote_addr == ADDR_B
    assert pair.a.datagrams_to_send(25.0)[0][1] == ADDR_B  # our heartbeats still go to B
    assert after.address_changes == 0 and after.received == before.received
    assert after.drops["source"] == 1


def test_plain_first_heartbeat_from_a_stranger_does_not_establish() -> None:
    a, b = path(A, B, ADDR_B, key=None), path(B, A, ADDR_A, key=None)
    a.receive_datagram(b.datagrams_to_send(0.0)[0][0], STRANGER, 0.0)
    assert not a.heard and not a.take_newly_heard()
    assert a.statistics().drops["source"] == 1


@pytest.mark.parametrize("source", [ADDR_B, STRANGER], ids=["spoofed-peer", "stranger"])
def test_encrypted_forged_heartbeat_moves_nothing(source: tuple[str, int]) -> None:
    pair = Pair.make()
    pair.run_until(15.0)
    pair.a.verify_path_mtu(1500, 15.0)
    before = pair.a.statistics()
    real = sniffed(pair)
    forged = encode_heartbeat(CONN, JUMP, B, A, key=SessionKey(bytes(32)), sender_high=B > A)
    for data in (raised(real, JUMP), forged, real):  # bad MAC, wrong key, a replay
        pair.a.receive_datagram(data, source, 15.0)
    after = pair.a.statistics()
    assert (after.drops["auth"], after.drops["replay"]) == (2, 1)
    assert after.received == before.received and after.address_changes == 0
    assert pair.a.remote_addr == ADDR_B and after.pmtu == before.pmtu
    pair.run_until(200.0)
    assert pair.a.established and not pair.b.failed_reason
    assert pair.a.statistics().drops["replay"] == 1  # the real heartbeats are all accepted


def test_plain_path_never_moves_and_its_failure_names_the_stranger() -> None:
    # A peer whose heartbeats come from another port than its Hello said (a NAT that
    # rewrites ports) is not followed without encryption: the path fails, saying why.
    a, b = path(A, B, ADDR_B, key=None), path(B, A, ADDR_A, key=None)
    nat = ("192.0.2.2", 40000)
    for now in (0.0, 0.5, 1.0):
        for data, _ in b.datagrams_to_send(now):
            a.receive_datagram(data, nat, now)
    a.remote_heard_us()
    assert a.remote_addr == ADDR_B and not a.established
    a.handle_timer(60.0)
    assert a.failed_reason == (
        "no UDP heartbeat received from peer within 60 s (3 from other addresses ignored,"
        " the last from 192.0.2.2:40000: unencrypted, only 192.0.2.2:6783 counts)")


def test_encrypted_path_moves_only_for_the_newest_authentic_heartbeat() -> None:
    a, b = path(A, B, ADDR_B), path(B, A, ADDR_A)
    old, new = (b.datagrams_to_send(t)[0][0] for t in (0.0, 0.5))
    nat = ("198.51.100.7", 40000)
    a.receive_datagram(new, ADDR_B, 0.5)
    a.receive_datagram(old, nat, 0.6)  # authentic and unseen, but older: heard, no move
    assert a.remote_addr == ADDR_B and not a.take_address_changed()
    assert a.statistics().received == 2
    a.receive_datagram(b.datagrams_to_send(1.0)[0][0], nat, 1.0)
    assert a.remote_addr == nat and a.statistics().address_changes == 1
    assert a.take_address_changed() and not a.take_address_changed()


def test_ipv4_mapped_and_ipv6_tuples_are_the_same_peer() -> None:
    a, b = path(A, B, ADDR_B, key=None), path(B, A, ADDR_A, key=None)
    a.receive_datagram(b.datagrams_to_send(0.0)[0][0], ("::ffff:192.0.2.2", 6783), 0.0)
    assert a.heard and a.statistics().drops["source"] == 0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\x01", "truncated"),
        (b"\x09" + bytes(40), "malformed"),
        (encode_heartbeat(CONN + 1, 0, B, A, key=KEY, sender_high=B > A), "wrong_conn_id"),
        (encode_packet(PacketType.FRAMES, CONN, 0, b"x", key=KEY, sender_high=B > A),
         "unexpected_type"),
        (encode_heartbeat(CONN, 0, C, A, key=KEY, sender_high=B > A), "wrong_peer"),
        (encode_heartbeat(CONN, 0, B, C, key=KEY, sender_high=B > A), "wrong_peer"),
        (encode_heartbeat(CONN, 0, B, A, key=KEY, sender_high=A > B), "auth"),
        (encode_heartbeat(CONN, 0, B, A, key=KEY, sender_high=B > A)[:-1], "auth"),
    ],
)
def test_bad_datagrams_are_counted_drops(data: bytes, reason: str) -> None:
    a = path(A, B, ADDR_B)
    a.receive_datagram(data, ADDR_B, 0.0)
    stats = a.statistics()
    assert stats.drops[reason] == 1
    assert sum(stats.drops.values()) == 1
    assert stats.received == 0 and not a.heard


def test_a_rejected_heartbeat_does_not_burn_its_counter() -> None:
    a = path(A, B, ADDR_B)
    a.receive_datagram(encode_heartbeat(CONN, 0, C, A, key=KEY, sender_high=B > A), ADDR_B, 0.0)
    a.receive_datagram(encode_heartbeat(CONN, 0, B, A, key=KEY, sender_high=B > A), ADDR_B, 0.0)
    assert a.heard


def test_datagrams_after_failure_are_dropped() -> None:
    a, b = path(A, B, ADDR_B), path(B, A, ADDR_A)
    a.handle_timer(60.0)
    assert a.failed_reason
    a.receive_datagram(b.datagrams_to_send(60.0)[0][0], ADDR_B, 60.0)
    assert a.statistics().drops["failed"] == 1
    a.remote_heard_us()
    assert not a.established


def test_path_rejects_nonsense_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        path(A, A, ADDR_B)
    with pytest.raises(LocalProtocolError):
        HeartbeatPath(local=A, remote=B, conn_id=CONN, remote_addr=ADDR_B, key=None,
                      sender_high=False, now=0.0, fast_interval=20.0, slow_interval=10.0)


# -- the demux --------------------------------------------------------------------------------


def test_demux_routes_by_connection_id() -> None:
    hub = SleeveDemux()  # A, connected to B and to C
    hub.add(path(A, B, ADDR_B, conn_id=1))
    hub.add(path(A, C, ("192.0.2.3", 6783), conn_id=2, key=None))
    spoke_b = path(B, A, ADDR_A, conn_id=1)
    spoke_c = path(C, A, ADDR_A, conn_id=2, key=None)
    assert hub.deadline() == 0.0
    out = hub.datagrams_to_send(0.0)
    assert sorted(addr for _, addr in out) == [ADDR_B, ("192.0.2.3", 6783)]
    for data, addr in out:
        (spoke_b if addr == ADDR_B else spoke_c).receive_datagram(data, ADDR_A, 0.0)
    assert spoke_b.heard and spoke_c.heard
    hub.receive_datagram(spoke_b.datagrams_to_send(0.0)[0][0], ADDR_B, 0.0)
    hub.receive_datagram(spoke_c.datagrams_to_send(0.0)[0][0], ("192.0.2.3", 6783), 0.0)
    path_b, path_c = hub.get(1), hub.get(2)
    assert path_b is not None and path_c is not None
    assert path_b.heard and path_c.heard
    assert path_b.take_newly_heard() and path_c.take_newly_heard()
    assert hub.deadline() == 0.5
    assert hub.statistics().received == 2


def test_demux_drops_unknown_and_malformed_and_forgets_removed() -> None:
    hub = SleeveDemux()
    hub.add(path(A, B, ADDR_B))
    spoke = path(B, A, ADDR_A)
    hub.receive_datagram(b"short", ADDR_B, 0.0)
    hub.receive_datagram(b"\xff" * 40, ADDR_B, 0.0)
    hub.receive_datagram(encode_heartbeat(7, 0, B, A, key=KEY, sender_high=True), ADDR_B, 0.0)
    assert hub.remove(CONN) is not None
    hub.receive_datagram(spoke.datagrams_to_send(0.0)[0][0], ADDR_B, 0.0)
    assert hub.remove(CONN) is None
    assert len(hub) == 0 and hub.deadline() == math.inf
    stats = hub.statistics()
    assert stats.drops == {"truncated": 1, "malformed": 1, "unknown_conn_id": 2}
    assert stats.received == 0 and stats.paths == ()


def test_demux_refuses_a_duplicate_conn_id_and_respects_its_bound() -> None:
    hub = SleeveDemux(max_paths=1)
    hub.add(path(A, B, ADDR_B))
    with pytest.raises(RemoteProtocolError):
        hub.add(path(A, C, ADDR_B))
    with pytest.raises(LocalProtocolError):
        hub.add(path(A, C, ADDR_B, conn_id=5))


def test_demux_timer_fails_silent_paths() -> None:
    hub = SleeveDemux()
    hub.add(path(A, B, ADDR_B))
    hub.handle_timer(60.0)
    failed = hub.get(CONN)
    assert failed is not None and failed.failed_reason
    assert hub.statistics().paths[0].state == "failed"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=5))
def test_fuzz_demux_never_raises(datagrams: list[bytes]) -> None:
    hub = SleeveDemux()
    hub.add(path(A, B, ADDR_B, conn_id=0))  # all-zero ids are the likeliest to match
    hub.add(path(A, C, ADDR_B, conn_id=1, key=None))
    for data in datagrams:
        hub.receive_datagram(data, ADDR_B, 0.0)
    stats = hub.statistics()
    dropped = sum(stats.drops.values()) + sum(sum(p.drops.values()) for p in stats.paths)
    accepted = sum(p.received for p in stats.paths)
    assert dropped + accepted == len(datagrams)
