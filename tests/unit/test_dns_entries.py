"""weaveDNS entries: merge rules, origin authority, tombstones, clock skew, codec, and peers
gossiping random add/remove/restart/partition sequences against a naive model."""

from __future__ import annotations

import contextlib
import ipaddress
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.dns.entries import (
    ENTRIES_PER_PAYLOAD,
    GOSSIP_WINDOW,
    TOMBSTONE_TIMEOUT,
    VERSION_CEILING,
    VERSION_STEP,
    DnsGossip,
    Entries,
    Entry,
    decode_gossip_untrusted,
    encode_gossip,
)
from router.errors import DecodeError, RemoteProtocolError
from router.mesh.names import PeerName

A, B, C = (PeerName(i) for i in (1, 2, 3))
NOW = 1_700_000_000
IP1, IP2 = ipaddress.IPv4Address("10.32.0.1"), ipaddress.IPv4Address("10.32.0.2")


def everyone(_peer: PeerName) -> bool:
    return True


def sync(src: Entries, dst: Entries, now: int = NOW) -> None:
    """``src``'s complete state as gossip to ``dst``; overrides stay in dst's state."""
    for payload in encode_gossip(now, src.all()):
        ts, entries = decode_gossip_untrusted(payload)
        dst.receive(ts, entries, now)


def test_add_lookup_case_insensitive_and_remove() -> None:
    a = Entries(A)
    assert a.add("c1.weave.local", "id1", IP1) == Entry("c1.weave.local.", A, "id1", IP1)
    assert a.add("c1.weave.local.", "id1", IP1) is None  # already live
    assert a.lookup("C1.Weave.Local.", everyone) == [IP1]
    assert a.reverse(IP1, everyone) == "c1.weave.local."
    dead = a.tombstone(NOW, container_id="id1")
    assert [(e.version, e.tombstone) for e in dead] == [(1, NOW)]
    assert a.lookup("c1.weave.local.", everyone) == []
    assert a.reverse(IP1, everyone) is None
    again = a.add("c1.weave.local.", "id1", IP1)
    assert again is not None and (again.version, again.tombstone) == (2, 0)


def test_only_the_origin_tombstones() -> None:
    a, b = Entries(A), Entries(B)
    a.add("c1.weave.local.", "id1", IP1)
    sync(a, b)
    assert b.tombstone(NOW, hostname="c1.weave.local.") == []  # not b's entry
    assert b.lookup("c1.weave.local.", everyone) == [IP1]


def test_forged_tombstone_of_ours_is_overridden() -> None:
    a = Entries(A)
    mine = a.add("c1.weave.local.", "id1", IP1)
    assert mine is not None
    forged = Entry(mine.hostname, A, "id1", IP1, version=5, tombstone=NOW)
    _new, overrides = a.receive(NOW, [forged], NOW)
    assert [(e.version, e.live) for e in overrides] == [(6, True)]
    assert a.lookup("c1.weave.local.", everyone) == [IP1]


def test_a_forged_version_at_the_limit_cannot_partition_its_origin() -> None:
    """A liar forges A's entry at the decode limit: A used to restate it at 2**63, which
    no peer decodes, so every neighbour dropped A's gossip. Now it is refused (counted)
    wherever it arrives, and so is one far above the version held; A's word still wins."""
    a, b = Entries(A), Entries(B)
    mine = a.add("c1.weave.local.", "id1", IP1)
    assert mine is not None
    sync(a, b)
    for version in ((1 << 63) - 1, VERSION_CEILING, VERSION_CEILING - 1, VERSION_STEP + 1):
        forged = Entry(mine.hostname, A, "id1", IP1, version=version, tombstone=NOW)
        for peer in (a, b):
            assert peer.receive(NOW, [forged], NOW) == ([], []), version
    assert a.refused == b.refused == 4
    assert a.lookup("c1.weave.local.", everyone) == b.lookup("c1.weave.local.", everyone) == [IP1]
    # a lie within one step is taken by the third party, and outbid by the origin
    forged = Entry(mine.hostname, A, "id1", IP1, version=VERSION_STEP, tombstone=NOW)
    assert b.receive(NOW, [forged], NOW)[0] == [forged]
    _new, overrides = a.receive(NOW, [forged], NOW)
    assert [(e.version, e.live) for e in overrides] == [(VERSION_STEP + 1, True)]
    sync(a, b)
    assert b.lookup("c1.weave.local.", everyone) == [IP1]
    for payload in encode_gossip(NOW, a.all()):  # every version we send decodes
        decode_gossip_untrusted(payload)


def test_gossip_beyond_the_entry_limit_is_refused_not_fatal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A liar filling the table must not make honest relays' gossip fatal (it used to
    raise, which dropped the honest neighbour): new entries beyond the limit are refused
    and counted, known ones still merge."""
    monkeypatch.setattr("router.dns.entries.MAX_ENTRIES", 3)
    b = Entries(B)
    flood = [Entry(f"x{i}.weave.local.", C, "id", IP1) for i in range(5)]
    new, _ = b.receive(NOW, flood, NOW)
    assert len(new) == 3 and len(b) == 3 and b.refused == 2
    dead = replace(flood[0], version=1, tombstone=NOW)  # a known key still merges
    assert b.receive(NOW, [dead, Entry("late.weave.local.", A, "id", IP2)], NOW)[0] == [dead]
    assert b.refused == 3


def test_stale_add_of_ours_after_restart_is_tombstoned() -> None:
    old = Entry("c1.weave.local.", A, "id1", IP1, version=3)
    a = Entries(A)  # restarted: knows nothing
    _, overrides = a.receive(NOW, [old], NOW)
    assert [(e.version, e.tombstone) for e in overrides] == [(4, NOW)]
    assert a.lookup("c1.weave.local.", everyone) == []


def test_tombstones_win_over_stale_adds_and_expire() -> None:
    a, b = Entries(A), Entries(B)
    a.add("c1.weave.local.", "id1", IP1)
    sync(a, b)
    a.tombstone(NOW, hostname="c1.weave.local.")
    stale = Entries(C)
    sync(b, stale)  # c holds the old, live state
    sync(a, b)
    sync(stale, b)  # the stale add arrives after the tombstone
    assert b.lookup("c1.weave.local.", everyone) == []
    assert b.expire(NOW + TOMBSTONE_TIMEOUT) == 0
    assert b.expire(NOW + TOMBSTONE_TIMEOUT + 1) == 1
    assert len(b) == 0


def test_clock_skew_refused_with_weaves_message() -> None:
    a = Entries(A)
    a.receive(NOW + GOSSIP_WINDOW, [], NOW)  # at the limit: fine
    with pytest.raises(RemoteProtocolError, match=r"^host clock skew of 901s exceeds 900s limit$"):
        a.receive(NOW + 901, [], NOW)
    with pytest.raises(RemoteProtocolError, match="skew of -1000s"):
        a.receive(NOW - 1000, [], NOW)


def test_peer_gone_hides_and_return_shows() -> None:
    a, b = Entries(A), Entries(B)
    a.add("c1.weave.local.", "id1", IP1)
    b.add("c1.weave.local.", "id2", IP2)
    sync(a, b)
    reachable = {A}
    assert b.lookup("c1.weave.local.", reachable.__contains__) == [IP1, IP2]
    reachable.clear()
    assert b.lookup("c1.weave.local.", reachable.__contains__) == [IP2]  # ours stay
    assert [e.origin for e in b.visible(reachable.__contains__)] == [B]
    reachable.add(A)
    assert b.lookup("c1.weave.local.", reachable.__contains__) == [IP1, IP2]


def test_codec_round_trip_and_chunks() -> None:
    a = Entries(A)
    for i in range(ENTRIES_PER_PAYLOAD + 5):
        a.add(f"n{i}.weave.local.", f"id{i}", ipaddress.IPv4Address(0x0A200000 + i))
    payloads = encode_gossip(NOW, a.all())
    assert len(payloads) == 2
    decoded = [e for p in payloads for e in decode_gossip_untrusted(p)[1]]
    assert decoded == a.all()


@pytest.mark.parametrize("payload", [
    b"", b"\xa0", b"\x80", b"\xa2atbxxaeb\x80",
    encode_gossip(NOW, [Entry("x.", A, "c", IP1)])[0].replace(b"x.", b"xx"),
])
def test_decode_rejects_malformed(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_gossip_untrusted(payload)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decode_fuzz_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_gossip_untrusted(data)


def test_gossip_data_merge_keeps_winner() -> None:
    live = Entry("c1.weave.local.", A, "id1", IP1, version=1)
    dead = Entry("c1.weave.local.", A, "id1", IP1, version=2, tombstone=NOW)
    merged = DnsGossip(NOW, (live,)).merge(DnsGossip(NOW + 1, (dead,)))
    assert merged.entries == (dead,) and merged.timestamp == NOW + 1
    assert DnsGossip(NOW, (dead,)).merge(DnsGossip(NOW, (live,))).entries == (dead,)


# -- random sequences against a naive model ------------------------------------------------

PEERS = [PeerName(i) for i in range(1, 5)]
NAMES = ["a.weave.local.", "A.weave.local.", "b.weave.local."]
ADDRS = [ipaddress.IPv4Address(f"10.32.0.{i}") for i in range(1, 4)]

op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(PEERS), st.sampled_from(NAMES),
              st.sampled_from(["c1", "c2"]), st.sampled_from(ADDRS)),
    st.tuples(st.just("remove"), st.sampled_from(PEERS), st.sampled_from(["c1", "c2"])),
    st.tuples(st.just("gossip"), st.sampled_from(PEERS), st.sampled_from(PEERS)),
    st.tuples(st.just("gone"), st.sampled_from(PEERS)),
    st.tuples(st.just("back"), st.sampled_from(PEERS)),
    st.tuples(st.just("restart"), st.sampled_from(PEERS)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40), st.randoms(use_true_random=False))
def test_random_sequences_converge_to_the_model(ops: list[tuple[object, ...]],
                                                rng: random.Random) -> None:
    nodes = {p: Entries(p) for p in PEERS}
    truth: dict[PeerName, set[tuple[str, str, ipaddress.IPv4Address]]] = {p: set() for p in PEERS}
    gone: set[PeerName] = set()
    now = NOW
    for step in ops:
        now += 1
        kind = step[0]
        if kind == "add":
            _, p, name, cid, addr = step
            assert isinstance(p, PeerName) and isinstance(name, str) and isinstance(cid, str)
            assert isinstance(addr, ipaddress.IPv4Address)
            nodes[p].add(name, cid, addr)
            truth[p].add((name, cid, addr))
        elif kind == "remove":
            _, p, cid = step
            assert isinstance(p, PeerName)
            nodes[p].tombstone(now, container_id=str(cid))
            truth[p] = {t for t in truth[p] if t[1] != cid}
        elif kind == "gossip":
            src, dst = step[1], step[2]
            assert isinstance(src, PeerName) and isinstance(dst, PeerName)
            if src != dst and src not in gone and dst not in gone:
                sync(nodes[src], nodes[dst], now)
        elif kind == "gone":
            assert isinstance(step[1], PeerName)
            gone.add(step[1])
        elif kind == "back":
            assert isinstance(step[1], PeerName)
            gone.discard(step[1])
        else:  # a restart: state lost, the attached containers registered again
            p = step[1]
            assert isinstance(p, PeerName)
            nodes[p] = Entries(p)
            for name, cid, addr in sorted(truth[p]):
                nodes[p].add(name, cid, addr)
    # Heal: gossip among the peers still in the mesh, in random order, until quiet.
    alive = [p for p in PEERS if p not in gone]
    for _ in range(4):
        pairs = [(s, d) for s in alive for d in alive if s != d]
        rng.shuffle(pairs)
        for src, dst in pairs:
            sync(nodes[src], nodes[dst], now)

    def visible(p: PeerName) -> bool:
        return p not in gone

    for me in alive:
        for name in NAMES:
            want = {addr for origin, facts in truth.items() for (n, _, addr) in facts
                    if n.lower() == name.lower() and (origin == me or visible(origin))}
            assert set(nodes[me].lookup(name, visible)) == want, (me, name)
