"""Path MTU verified by probes (router.overlay.sleeve.pmtu, its codec and its path wiring).

Two real :class:`HeartbeatPath` objects back to back over a "network" that silently
drops every datagram whose IP size (UDP payload + 28) is above ``carries`` (a black hole
on the underlay), and a sender "kernel" that refuses datagrams above ``refuses`` with
EMSGSIZE. Time only moves when the test says so.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.crypto.keys import SessionKey
from router.dataplane.icmp import overlay_mtu as icmp_mtu
from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import PeerName
from router.overlay.sleeve.demux import SleeveDemux
from router.overlay.sleeve.forwarder import MAX_PENDING_ACKS, HeartbeatPath
from router.overlay.sleeve.packet import (
    HEADER_SIZE,
    HeartbeatKind,
    SleeveHeartbeat,
    decode_heartbeat_body_untrusted,
    decode_heartbeat_untrusted,
    encode_probe,
    encode_probe_ack,
    probe_min_size,
)
from router.overlay.sleeve.pmtu import (
    PathMtuProber,
    PmtuSettings,
    overlay_mtu,
    peer_answers_probes,
)

A = PeerName(0x0200_0000_000A)
B = PeerName(0x0200_0000_000B)
ADDR_A = ("192.0.2.1", 6783)
ADDR_B = ("192.0.2.2", 6783)
KEY = SessionKey(bytes(range(32)))
CONN = 0x1234_5678_9ABC_DEF0
IP_UDP = 28
SETTINGS = PmtuSettings()


def make_path(local: PeerName, remote: PeerName, addr: tuple[str, int],
              key: SessionKey | None, settings: PmtuSettings = SETTINGS) -> HeartbeatPath:
    return HeartbeatPath(local=local, remote=remote, conn_id=CONN, remote_addr=addr, key=key,
                         sender_high=local > remote, now=0.0, pmtu=settings)


@dataclass
class Underlay:
    """A and B back to back; datagrams above ``carries`` IP bytes vanish (both ways)."""

    a: HeartbeatPath
    b: HeartbeatPath
    carries: int = 1500  # IP datagram bytes the path delivers
    refuses: int = 65535  # the sender's kernel: EMSGSIZE above this
    loss: float = 0.0  # of the datagrams that fit, this share is lost too
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    now: float = 0.0
    sizes_ab: list[int] = field(default_factory=list)  # IP sizes A sent

    @classmethod
    def established(cls, key: SessionKey | None = KEY, settings: PmtuSettings = SETTINGS, *,
                    carries: int = 1500, refuses: int = 65535) -> Underlay:
        u = cls(make_path(A, B, ADDR_B, key, settings), make_path(B, A, ADDR_A, key, settings),
                carries=carries, refuses=refuses)
        u.run_for(1.0)
        assert u.a.established and u.b.established
        return u

    def step(self, now: float) -> None:
        self.now = now
        for p in (self.a, self.b):
            p.handle_timer(now)
        for sender, receiver, src in ((self.a, self.b, ADDR_A), (self.b, self.a, ADDR_B)):
            for data, _addr in sender.datagrams_to_send(now):
                size = len(data) + IP_UDP
                if sender is self.a:
                    self.sizes_ab.append(size)
                if size > self.refuses:
                    sender.message_too_big(len(data), now)
                elif size <= self.carries and self.rng.random() >= self.loss:
                    receiver.receive_datagram(data, src, now)
        if self.a.take_newly_heard():
            self.b.remote_heard_us()
        if self.b.take_newly_heard():
            self.a.remote_heard_us()

    def run_for(self, duration: float) -> None:
        end = self.now + duration
        while True:
            nxt = min(self.a.deadline(), self.b.deadline())
            if nxt > end:
                self.now = end
                return
            self.step(max(nxt, self.now))

    def verify(self, estimate: int = 1500) -> None:
        self.a.verify_path_mtu(estimate, self.now)
        self.b.verify_path_mtu(estimate, self.now)

    def searching(self) -> bool:
        stats = self.a.statistics().pmtu
        return stats is not None and stats.searching


# --- the overlay MTU that `status connections` shows -----------------------------------------


def test_overlay_mtu_is_what_a_container_fits_in_one_datagram() -> None:
    assert overlay_mtu(1500, encrypted=False) == 1412
    assert overlay_mtu(1500, encrypted=True) == 1392
    assert overlay_mtu(1280, encrypted=False) == 1192
    assert overlay_mtu(50, encrypted=True) == 0


# --- searches over a black hole -----------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
@pytest.mark.parametrize("carries", [1500, 1499, 1280, 1000, 577])
def test_search_finds_the_largest_size_the_path_carries(
        key: SessionKey | None, carries: int) -> None:
    u = Underlay.established(key, carries=carries)
    assert u.a.path_mtu == 0  # nothing to verify before the driver asks
    u.verify(1500)
    assert u.a.path_mtu == 1500 and not u.a.path_mtu_verified  # the estimate, at once
    u.run_for(10.0)
    assert u.a.path_mtu == carries and u.a.path_mtu_verified
    assert u.a.take_path_mtu_changed() is (carries != 1500)
    assert not u.a.take_path_mtu_changed()  # once
    stats = u.a.statistics().pmtu
    assert stats is not None and not stats.searching and stats.searches == 1
    assert stats.verified == carries and stats.estimate == 1500
    # the probes were exactly the candidate sizes, never below the floor or above the estimate
    probes = [s for s in u.sizes_ab if s > 100]
    assert probes[0] == 1500 and min(probes) > SETTINGS.floor and max(probes) <= 1500
    assert u.a.established and u.b.established  # probing never hurts the path


def test_a_clean_path_is_verified_by_one_probe() -> None:
    u = Underlay.established()
    u.verify(1500)
    u.step(u.now)
    u.step(u.now)  # the ack comes back
    assert u.a.path_mtu_verified and u.a.path_mtu == 1500
    stats = u.a.statistics().pmtu
    assert stats is not None and stats.probes_sent == 1 and stats.acks == 1


def test_a_path_that_answers_nothing_ends_at_the_floor_after_bounded_tries() -> None:
    u = Underlay.established(carries=200)  # heartbeats cross, no probe does
    u.verify(1500)
    u.run_for(30.0)
    stats = u.a.statistics().pmtu
    assert stats is not None and not stats.searching
    assert u.a.path_mtu == SETTINGS.floor
    # binary search: about log2(1500 - 576) candidates, `attempts` tries each
    assert stats.probes_sent <= SETTINGS.attempts * (math.ceil(math.log2(1500 - 576)) + 1)
    assert u.a.established


def test_probes_retry_with_a_doubling_timeout() -> None:
    u = Underlay.established(carries=1400)
    u.verify(1500)
    sent_at: list[float] = []
    while len(sent_at) < SETTINGS.attempts + 1:
        before = len(u.sizes_ab)
        u.step(max(u.now, min(u.a.deadline(), u.b.deadline())))
        sent_at += [u.now for s in u.sizes_ab[before:] if s > 100]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(sent_at)]
    assert gaps == [SETTINGS.timeout * (1 << i) for i in range(SETTINGS.attempts)]
    assert u.sizes_ab[-1] == (SETTINGS.floor + 1501) // 2  # then the next candidate


def test_the_estimate_at_or_below_the_floor_is_taken_as_it_is() -> None:
    u = Underlay.established()
    u.verify(560)
    assert u.a.path_mtu == 560 and u.a.path_mtu_verified
    u.run_for(1.0)
    assert max(u.sizes_ab) < 100  # no probe went out


# --- following a path that changes ------------------------------------------------------------


def test_reverification_follows_a_path_that_shrinks_and_grows_back() -> None:
    settings = PmtuSettings(reverify_interval=60.0)
    u = Underlay.established(settings=settings, carries=1400)
    u.verify(1500)
    u.run_for(10.0)
    assert u.a.path_mtu == 1400 and u.a.take_path_mtu_changed()
    u.carries = 1200
    u.run_for(40.0)
    assert u.a.path_mtu == 1400  # nothing probed yet
    u.run_for(30.0)
    assert u.a.path_mtu == 1200 and u.a.take_path_mtu_changed()
    u.carries = 9000
    u.run_for(70.0)
    assert u.a.path_mtu == 1500 and u.a.take_path_mtu_changed()  # up to the estimate
    u.run_for(70.0)
    assert not u.a.take_path_mtu_changed()  # verified again, unchanged
    stats = u.a.statistics().pmtu
    assert stats is not None and stats.searches == 4


def test_emsgsize_fails_a_probe_without_waiting() -> None:
    # the estimate is 9000 but our interface takes 1500; the path beyond carries 1280
    u = Underlay.established(carries=1280, refuses=1500)
    u.verify(9000)
    start = u.now
    while u.searching():
        u.step(max(u.now, min(u.a.deadline(), u.b.deadline())))
    assert u.a.path_mtu == 1280
    stats = u.a.statistics().pmtu
    assert stats is not None and stats.too_big >= 1
    # refused sizes cost nothing; only the black-holed ones wait out their tries
    assert u.now - start < 6 * 0.7 + 0.1


def test_a_new_estimate_restarts_the_search() -> None:
    u = Underlay.established(carries=1400)
    u.verify(1500)
    u.run_for(10.0)
    assert u.a.take_path_mtu_changed()
    u.a.verify_path_mtu(1300, u.now)  # say the route changed
    assert u.a.path_mtu == 1400  # the last verified value stays in use meanwhile
    u.run_for(10.0)
    assert u.a.path_mtu == 1300 and u.a.take_path_mtu_changed()


def test_the_demux_routes_emsgsize_to_its_path() -> None:
    u = Underlay.established(carries=9000)
    demux = SleeveDemux()
    demux.add(u.a)
    u.a.verify_path_mtu(1500, u.now)
    (probe, _addr), = [d for d in u.a.datagrams_to_send(u.now) if len(d[0]) > 100]
    demux.message_too_big(probe, u.now)
    demux.message_too_big(b"junk", u.now)  # never raises
    stats = u.a.statistics().pmtu
    assert stats is not None and stats.too_big == 1 and stats.candidate < 1500


@settings(max_examples=40, deadline=None)
@given(carries=st.integers(SETTINGS.floor, 1500), loss=st.sampled_from([0.0, 0.2]),
       seed=st.integers(0, 1000), sealed=st.booleans())
def test_property_the_result_is_never_above_what_the_path_carries(
        carries: int, loss: float, seed: int, sealed: bool) -> None:
    u = Underlay(make_path(A, B, ADDR_B, KEY if sealed else None),
                 make_path(B, A, ADDR_A, KEY if sealed else None),
                 carries=carries, loss=loss, rng=random.Random(seed))
    u.run_for(5.0)
    if not (u.a.established and u.b.established):
        return  # loss kept the path from establishing in time: nothing to verify
    u.verify(1500)
    u.run_for(20.0)
    assert not u.searching()
    assert SETTINGS.floor <= u.a.path_mtu <= carries
    if loss == 0.0:
        assert u.a.path_mtu == carries


# --- answering probes ----------------------------------------------------------------------------


def test_probes_are_answered_even_before_our_own_search_and_acks_are_bounded() -> None:
    a, b = make_path(A, B, ADDR_B, KEY), make_path(B, A, ADDR_A, KEY)
    a.datagrams_to_send(0.0)  # the first heartbeat; the next is due at 0.5
    for counter in range(MAX_PENDING_ACKS + 3):
        probe = encode_probe(CONN, 100 + counter, B, A, key=KEY, sender_high=True, size=700)
        a.receive_datagram(probe, ADDR_B, 0.2)
    assert a.deadline() == 0.2  # acks are due at once
    out = [data for data, _ in a.datagrams_to_send(0.2)]
    assert a.deadline() == 0.5
    acks = [decode_heartbeat_untrusted(d, key=KEY, sender_high=False)[1] for d in out]
    assert [h for h in acks if h.kind is HeartbeatKind.ACK] == \
        [SleeveHeartbeat(A, B, 0, HeartbeatKind.ACK, 700)] * MAX_PENDING_ACKS
    stats = a.statistics()
    assert stats.drops["ack_queue_full"] == 3 and stats.received == MAX_PENDING_ACKS + 3
    assert stats.pmtu is None
    # the acks reach b; b is not searching, so they are stale (counted, harmless)
    b.verify_path_mtu(1500, 1.0)
    b.datagrams_to_send(1.0)
    for data in out:
        b.receive_datagram(data, ADDR_A, 1.0)
    stats_b = b.statistics().pmtu
    assert stats_b is not None and stats_b.stale_acks == MAX_PENDING_ACKS


def test_a_probe_whose_size_lies_is_a_malformed_drop() -> None:
    a = make_path(A, B, ADDR_B, None)
    probe = encode_probe(CONN, 1, B, A, key=None, sender_high=True, size=700)
    a.receive_datagram(probe[:-1], ADDR_B, 1.0)
    a.receive_datagram(probe + b"\x00", ADDR_B, 1.0)
    assert a.statistics().drops["malformed"] == 2 and not a.heard
    a.receive_datagram(probe, ADDR_B, 1.0)
    assert a.heard  # a probe is a heartbeat too


# --- the codec ----------------------------------------------------------------------------------


def test_probe_and_ack_round_trip() -> None:
    for key in (KEY, None):
        probe = encode_probe(CONN, 3, A, B, key=key, sender_high=False, size=1472)
        assert len(probe) == 1472
        header, hb = decode_heartbeat_untrusted(probe, key=key, sender_high=False)
        assert header.counter == 3
        assert hb == SleeveHeartbeat(A, B, 1472 - probe_min_size(key is not None),
                                     HeartbeatKind.PROBE, 1472)
        ack = encode_probe_ack(CONN, 4, B, A, key=key, sender_high=True, acked=1472)
        assert len(ack) == probe_min_size(key is not None)
        _, hb = decode_heartbeat_untrusted(ack, key=key, sender_high=True)
        assert hb == SleeveHeartbeat(B, A, 0, HeartbeatKind.ACK, 1472)


def test_probe_sizes_are_checked_when_encoding() -> None:
    with pytest.raises(LocalProtocolError):
        encode_probe(CONN, 1, A, B, key=KEY, sender_high=False, size=probe_min_size(True) - 1)
    with pytest.raises(LocalProtocolError):
        encode_probe(CONN, 1, A, B, key=None, sender_high=False, size=65508)
    with pytest.raises(LocalProtocolError):
        encode_probe_ack(CONN, 1, A, B, key=None, sender_high=False, acked=0)


NAMES = bytes.fromhex("02000000000a 02000000000b")


@pytest.mark.parametrize(("rest", "match"), [
    (b"\x03\x00\x05\xdc", "kind"),
    (b"\x01\x01\x05\xdc", "reserved"),
    (b"\x01\x00\x00\x00", "size 0"),
    (b"\x02\x00\x05", "truncated"),
    (b"\x02\x00\x05\xdc\x00", "never padded"),
    (b"\x01\x00\x05\xdc\x00\x07", "not zero"),
    (b"\x00\x00\x01", "not zero"),
])
def test_malformed_path_mtu_records(rest: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_heartbeat_body_untrusted(NAMES + rest)


def test_a_zero_padded_plain_heartbeat_is_still_plain() -> None:
    assert decode_heartbeat_body_untrusted(NAMES + bytes(5)) == SleeveHeartbeat(A, B, 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_heartbeat_bodies_raise_only_decode_error(rest: bytes) -> None:
    try:
        hb = decode_heartbeat_body_untrusted(NAMES + rest)
    except DecodeError:
        return
    assert hb.kind in tuple(HeartbeatKind)
    assert HEADER_SIZE + len(NAMES) + len(rest) >= HEADER_SIZE


# --- the prober's own checks --------------------------------------------------------------------


def test_nonsense_settings_and_estimates_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        PmtuSettings(floor=64)
    with pytest.raises(LocalProtocolError):
        PmtuSettings(attempts=0)
    with pytest.raises(LocalProtocolError):
        PmtuSettings(timeout=0.0)
    with pytest.raises(LocalProtocolError):
        PathMtuProber(0, 0.0)
    with pytest.raises(LocalProtocolError):
        PathMtuProber(70000, 0.0)


def test_late_and_unasked_acks_are_stale() -> None:
    prober = PathMtuProber(1500, 0.0)
    assert prober.probes_to_send(0.0) == [1472]
    assert prober.probes_to_send(0.0) == []  # one probe outstanding at a time
    prober.receive_ack(2000, 0.01)  # bigger than the estimate: not a candidate of ours
    for t in (0.1, 0.3, 0.7):
        prober.handle_timer(t)
        prober.probes_to_send(t)
    prober.handle_timer(1.5)  # three tries lost: 1500 is bad
    prober.receive_ack(1472, 1.6)  # the late ack of 1500 changes nothing
    stats = prober.statistics()
    assert stats.stale_acks == 2 and stats.candidate == (576 + 1501) // 2
    assert prober.deadline() == 1.5  # the next candidate is due at once


def test_status_mtu_and_the_icmp_mtu_agree() -> None:
    """``mtu=N`` in status and the MTU in ICMP "fragmentation needed" are one number."""
    for path_mtu in (576, 1280, 1500, 9000):
        for encrypted in (False, True):
            assert overlay_mtu(path_mtu, encrypted=encrypted) == icmp_mtu(
                path_mtu - 28, encrypted)


def test_only_peers_that_say_so_are_probed() -> None:
    assert peer_answers_probes({"udp_port": 6783, "pmtu_probes": True})
    for older in ({}, {"udp_port": 6783}, {"pmtu_probes": 1}, {"pmtu_probes": "yes"}):
        assert not peer_answers_probes(older)
