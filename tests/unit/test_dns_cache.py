"""The answer cache: a repeat gets the uncached bytes with its own id; entry changes and
``max_age`` drop what was kept; shuffled answers, forwards and drops are never kept; the
number of kept answers is bounded."""

from __future__ import annotations

import ipaddress
import random

import dns.message
from hypothesis import given, settings
from hypothesis import strategies as st

from router.dns.answer import FORWARD, Zone, answer, zone
from router.dns.cache import AnswerCache
from router.dns.entries import Entries
from router.mesh.names import PeerName

US, THEM = PeerName(1), PeerName(2)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _zone(reachable: list[bool]) -> Zone:
    entries = Entries(US)
    entries.add("c1.weave.local.", "id1", ipaddress.IPv4Address("10.32.0.1"))
    for i in range(5):
        entries.add("many.weave.local.", f"m{i}", ipaddress.IPv4Address(0x0A280000 + i))
    theirs = Entries(THEM)
    theirs.add("far.weave.local.", "id3", ipaddress.IPv4Address("10.40.0.9"))
    entries.merge(theirs.all())
    return zone("weave.local.", 1, entries, lambda peer: peer == US or reachable[0])


def _query(name: str, rdtype: str = "A", qid: int = 1, *, edns: bool = False) -> bytes:
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    query.id = qid
    return query.to_wire()


def test_a_repeat_is_the_uncached_answer_with_its_own_id() -> None:
    z, cache = _zone([True]), AnswerCache(clock=Clock())
    first = cache.answer(_query("c1.weave.local.", qid=7), z)
    again = cache.answer(_query("c1.weave.local.", qid=0xBEEF), z)
    assert cache.hits == 1
    assert again == answer(_query("c1.weave.local.", qid=0xBEEF), z)
    assert isinstance(first, bytes) and isinstance(again, bytes)
    assert again[:2] == b"\xbe\xef" and again[2:] == first[2:]


def test_udp_and_tcp_and_edns_are_kept_apart() -> None:
    z, cache = _zone([True]), AnswerCache(clock=Clock())
    for tcp in (False, True):
        for edns in (False, True):
            q = _query("nope.weave.local.", qid=3, edns=edns)
            assert cache.answer(q, z, tcp=tcp) == answer(q, z, tcp=tcp)
    assert cache.hits == 0 and len(cache) == 4


def test_an_entry_change_is_answered_at_once() -> None:
    z, cache = _zone([True]), AnswerCache(clock=Clock())
    q = _query("new.weave.local.")
    before = dns.message.from_wire(cache.answer(q, z))  # type: ignore[arg-type]
    assert before.rcode() == dns.rcode.NXDOMAIN
    z.entries.add("new.weave.local.", "id9", ipaddress.IPv4Address("10.32.0.9"))
    after = dns.message.from_wire(cache.answer(q, z))  # type: ignore[arg-type]
    assert [r.address for rrset in after.answer for r in rrset] == ["10.32.0.9"]
    z.entries.tombstone(200, hostname="new.weave.local.")
    gone = dns.message.from_wire(cache.answer(q, z))  # type: ignore[arg-type]
    assert gone.rcode() == dns.rcode.NXDOMAIN


def test_a_peer_that_left_is_not_answered_after_max_age() -> None:
    reachable, clock = [True], Clock()
    z, cache = _zone(reachable), AnswerCache(clock=clock)
    q = _query("far.weave.local.")
    assert dns.message.from_wire(cache.answer(q, z)).answer  # type: ignore[arg-type]
    reachable[0] = False
    clock.now += 0.5
    assert cache.answer(q, z) is not None and cache.hits == 1  # kept: within max_age
    clock.now += 0.6
    gone = dns.message.from_wire(cache.answer(q, z))  # type: ignore[arg-type]
    assert gone.rcode() == dns.rcode.NXDOMAIN
    clock.now -= 10  # a clock that went back sweeps too
    assert cache.answer(q, z) == answer(q, z) and cache.hits == 1


def test_shuffled_answers_forwards_and_drops_are_not_kept() -> None:
    z, cache = _zone([True]), AnswerCache(clock=Clock())
    orders = set()
    for seed in range(20):
        out = cache.answer(_query("many.weave.local."), z, rng=random.Random(seed))
        orders.add(tuple(r.address for rrset in dns.message.from_wire(out).answer  # type: ignore[arg-type]
                         for r in rrset))
    assert len(orders) > 1
    assert cache.answer(_query("example.com."), z) is FORWARD
    response = dns.message.from_wire(answer(_query("c1.weave.local."), z))  # type: ignore[arg-type]
    assert cache.answer(response.to_wire(), z) is None  # a response: dropped
    assert cache.hits == 0 and len(cache) == 0


def test_the_kept_answers_are_bounded() -> None:
    z, cache = _zone([True]), AnswerCache(clock=Clock(), max_entries=10)
    for i in range(50):
        cache.answer(_query(f"n{i}.weave.local."), z)
    assert len(cache) == 10
    q = _query("n40.weave.local.", qid=9)
    assert cache.answer(q, z) == answer(q, z)  # not kept, still answered


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(min_size=0, max_size=2)),
                max_size=20))
def test_garbage_gets_what_the_answerer_gives(queries: list[tuple[bytes, bytes]]) -> None:
    z, cache = _zone([True]), AnswerCache(clock=Clock())
    for body, qid in queries:
        for q in (qid + body, _query("c1.weave.local.")[:2] + body):
            assert cache.answer(q, z) == answer(q, z)
