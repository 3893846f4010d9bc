"""Forged counters, wrong sources, replays and reassembly floods (both backends).

The attacker sniffs the underlay: it knows connection ids and counters and can resend
any datagram, changed, from the peer's address (spoofed) or from its own. Of an
encrypted session nothing moves the replay window but a datagram that authenticated;
of a plain one (no MAC) the peer's address and port must match, and no forged counter
can make the window refuse the real traffic (``PlainReplayWindow``). Reassembly slots
are per neighbour, so a flood of first fragments churns only the flooded neighbour's.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.crypto.nonces import PLAIN_CONFIRM, PlainReplayWindow
from router.dataplane.backend import Address, Backend
from tests.fastpath.mesh import BROADCAST_MAC, Mesh, frame, mac

JUMP = 1 << 20
STRANGER: Address = ("192.0.2.99", 6783)


def raised(datagram: bytes, by: int = JUMP) -> bytes:
    """The datagram with its counter raised by ``by``."""
    (counter,) = struct.unpack_from(">Q", datagram, 12)
    return datagram[:12] + struct.pack(">Q", (counter + by) % (1 << 64)) + datagram[20:]


def pings(n: int, start: int = 0, size: int = 60) -> list[bytes]:
    return [frame(BROADCAST_MAC, mac(1), bytes([(start + i) & 0xFF]) * size) for i in range(n)]


def sniff(m: Mesh, n: int, size: int = 60) -> list[bytes]:
    """Peer 1 sends n frames to peer 2, one batch each (all delivered); the datagrams
    they travelled in."""
    before = len(m.wire)
    for element in pings(n, size=size):
        m.send(1, [element], 1.0)
        assert m.take(2) == [element]
    return [data for _, _, data in m.wire[before:]]


def send_one_by_one(m: Mesh, frames: list[bytes], now: float) -> None:
    for element in frames:
        m.send(1, [element], now)


def inject(m: Mesh, source: Address, datagrams: list[bytes], now: float = 2.0) -> list[bytes]:
    """Datagrams that arrive at peer 2 from ``source``: the frames they delivered."""
    frames, relays, upcalls = m.nodes[2].dp.ingress([(source, d) for d in datagrams], now)
    assert relays == [] and upcalls == []
    return frames


@pytest.mark.parametrize("cipher", ["secretbox", "aes256gcm"])
def test_encrypted_forged_jump_fails_auth_and_leaves_the_window(backend: Backend,
                                                                cipher: str) -> None:
    m = Mesh(backend, 2, [(1, 2)], encrypted=True, cipher=cipher)
    (real,) = sniff(m, 1)
    a = m.nodes[1].addr
    assert inject(m, a, [raised(real)]) == []
    assert m.drops(2) == {"auth": 1}
    # the window did not move: the next real frames arrive, the replay is still one
    sent = pings(3, start=1)
    m.send(1, sent, 3.0)
    assert m.take(2) == sent
    assert inject(m, a, [real]) == []
    assert m.drops(2) == {"auth": 1, "replay": 1}
    # from another address it is the same: the MAC decides, not the source
    assert inject(m, STRANGER, [raised(real, 7), real]) == []
    assert m.drops(2) == {"auth": 2, "replay": 2}


def test_encrypted_forged_fragments_leave_the_window(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)], encrypted=True)
    parts = sniff(m, 1, size=5000)
    assert len(parts) == 4
    assert inject(m, m.nodes[1].addr, [raised(p) for p in parts]) == []
    assert m.drops(2) == {"auth": 1}
    big = pings(1, start=9, size=5000)
    m.send(1, big, 3.0)
    assert m.take(2) == big


def test_plain_forged_jump_does_not_blackhole_the_direction(backend: Backend) -> None:
    """Issue 9 item 5: one sniffed datagram resent with its counter raised by 2**20
    made every later real datagram a "replay"."""
    m = Mesh(backend, 2, [(1, 2)], encrypted=False)
    first, second = sniff(m, 2)
    a = m.nodes[1].addr
    forged = raised(second)
    assert len(inject(m, a, [forged])) == 1  # no MAC: a frame like any other
    sent = pings(5, start=2)
    m.send(1, sent, 3.0)
    assert m.take(2) == sent  # the real traffic keeps flowing
    assert m.drops(2) == {}
    # replays of real datagrams inside the window are still dropped
    assert inject(m, a, [first, second]) == []
    assert m.drops(2) == {"replay": 2}
    # the forgery is a stray, outside the window: resent, it is delivered again (a forger
    # could send any frame anyway), and it still moved nothing
    assert len(inject(m, a, [forged])) == 1
    assert inject(m, a, [m.wire[-1][2]]) == []
    assert m.drops(2) == {"replay": 3}


def test_plain_window_confirmed_away_comes_back(backend: Backend) -> None:
    """A forger that sends a whole run of raised counters moves the window; the real
    counters are then strays (delivered) until they confirm it back."""
    m = Mesh(backend, 2, [(1, 2)], encrypted=False)
    real = sniff(m, PLAIN_CONFIRM)
    a = m.nodes[1].addr
    assert len(inject(m, a, [raised(d) for d in real])) == PLAIN_CONFIRM
    sent = pings(PLAIN_CONFIRM + 2, start=10)
    send_one_by_one(m, sent, 3.0)
    assert m.take(2) == sent
    assert m.drops(2) == {}
    later = m.wire[-1][2]
    assert inject(m, a, [later]) == []  # the window is back on the real counters
    assert m.drops(2) == {"replay": 1}


def test_plain_datagrams_from_another_address_are_dropped(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)], encrypted=False)
    (real,) = sniff(m, 1)
    a_host, a_port = m.nodes[1].addr
    for source in (STRANGER, (a_host, a_port + 1)):
        assert inject(m, source, [raised(real), raised(real, 1)]) == []
    assert m.drops(2) == {"source": 4}
    sent = pings(2, start=1)
    m.send(1, sent, 3.0)
    assert m.take(2) == sent


def first_fragments(conn_id: int, counters: range, encrypted: bool) -> list[bytes]:
    """The first of three fragments of elements that never complete."""
    length = 3000 + (20 if encrypted else 0)
    return [struct.pack(">BBHQQ", 1, 3, 0, conn_id, c) + struct.pack(">IHBB", length, 1100, 0, 3)
            + bytes(1100) for c in counters]


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_reassembly_flood_does_not_starve_another_peer(backend: Backend,
                                                         encrypted: bool) -> None:
    """A flood of first fragments under peer 2's sniffed connection id (from its address)
    while peer 3's fragmented frames arrive at peer 1: peer 3's frames all complete."""
    m = Mesh(backend, 3, [(1, 2), (1, 3)], encrypted=encrypted)
    m.send(2, pings(1), 1.0)
    (sniffed,) = [d for src, _, d in m.wire if src == m.nodes[2].addr]
    conn_2, base = struct.unpack_from(">QQ", sniffed, 4)
    big = [frame(BROADCAST_MAC, mac(3), bytes([i]) * 3000) for i in range(4)]
    out = m.nodes[3].dp.egress(big, 2.0)
    assert len(out) == 12
    flood = iter(first_fragments(conn_2, range(base + 1, base + 1 + 1200), encrypted))
    batch: list[tuple[Address, bytes]] = []
    for _, data in out:  # 100 forged fragments between any two of peer 3's
        batch.append((m.nodes[3].addr, data))
        batch.extend((m.nodes[2].addr, next(flood)) for _ in range(100))
    frames, _, _ = m.nodes[1].dp.ingress(batch, 2.0)
    assert frames == big
    assert m.drops(1) == {"reassembly": 1200 - 8}  # the flood churns only peer 2's 8


forgeries = st.lists(st.one_of(st.integers(0, 5000), st.integers(1 << 20, (1 << 20) + 3000),
                               st.integers((1 << 64) - 100, (1 << 64) - 1)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(forged=forgeries, start=st.integers(0, 3000),
       where=st.lists(st.one_of(st.integers(0, 60), st.just(60))))
def test_a_plain_window_refuses_only_what_it_accepted_before(
        forged: list[int], start: int, where: list[int]) -> None:
    """Whatever forgeries come between them, a real stream of counters loses only the
    counters a forgery used first; once it ran on its own, its counters from the
    PLAIN_CONFIRM-th on are replays again."""
    window = PlainReplayWindow()
    real = list(range(start, start + 60))
    stream: list[tuple[bool, int]] = [(False, c) for c in real]
    for i, counter in zip(sorted(where, reverse=True), forged, strict=False):
        stream.insert(i, (True, counter))
    accepted: set[int] = set()
    for is_forged, counter in stream:
        ok = window.check_and_accept(counter)
        assert ok or counter in accepted, (is_forged, counter)
        accepted.add(counter)
    tail = list(range(start + 60, start + 60 + 2 * PLAIN_CONFIRM))
    for counter in tail:
        window.check_and_accept(counter)
    assert not any(window.check(c) for c in tail[PLAIN_CONFIRM - 1:])


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_reassembly_flood_spares_the_flooded_peers_arriving_element(
        backend: Backend, encrypted: bool) -> None:
    """The flood under peer 1's own connection id evicts its own kind (one piece each)
    before peer 1's real element, once two of that element's pieces are in."""
    m = Mesh(backend, 2, [(1, 2)], encrypted=encrypted)
    big = pings(1, start=7, size=5000)
    out = m.nodes[1].dp.egress(big, 1.0)
    assert len(out) == 4
    conn_1, counter = struct.unpack_from(">QQ", out[0][1], 4)
    flood = first_fragments(conn_1, range(counter + 1, counter + 101), encrypted)
    a = m.nodes[1].addr
    arrived = inject(m, a, [out[0][1], out[1][1], *flood, out[2][1], out[3][1]])
    assert arrived == big
    assert m.drops(2) == {"reassembly": 100 - 7}
