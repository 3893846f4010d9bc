"""The answerer on golden queries: A (shuffled), other types, unknown names, PTR, case,
TTL, truncation at 512 bytes and at the EDNS0 size, TCP whole, malformed input."""

from __future__ import annotations

import ipaddress
import random

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st

from router.dns.answer import FORWARD, Zone, answer, servfail, zone
from router.dns.entries import Entries
from router.mesh.names import PeerName

US, THEM = PeerName(1), PeerName(2)


def _zone(ttl: int = 1, reachable: bool = True) -> Zone:
    entries = Entries(US)
    entries.add("c1.weave.local.", "id1", ipaddress.IPv4Address("10.32.0.1"))
    entries.add("c2.weave.local.", "id2", ipaddress.IPv4Address("10.32.0.2"))
    for i in range(50):
        entries.add("many.weave.local.", f"m{i}", ipaddress.IPv4Address(0x0A280000 + i))
    theirs = Entries(THEM)
    theirs.add("far.weave.local.", "id3", ipaddress.IPv4Address("10.40.0.9"))
    entries.merge(theirs.all())
    return zone("weave.local.", ttl, entries, lambda peer: reachable)


def _ask(name: str, rdtype: str = "A", *, tcp: bool = False, payload: int | None = None,
         z: Zone | None = None, seed: int = 0) -> dns.message.Message:
    query = (dns.message.make_query(name, rdtype, use_edns=0, payload=payload) if payload
             else dns.message.make_query(name, rdtype, use_edns=False))
    out = answer(query.to_wire(), z or _zone(), tcp=tcp, rng=random.Random(seed))
    assert isinstance(out, bytes), out
    if not tcp:
        assert len(out) <= max(512, payload or 0)
    reply = dns.message.from_wire(out)
    assert reply.id == query.id
    return reply


def _addresses(reply: dns.message.Message) -> list[str]:
    return [r.address for rrset in reply.answer for r in rrset]


def test_a_record_authoritative_with_ttl() -> None:
    reply = _ask("c1.weave.local.", z=_zone(ttl=30))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RA
    assert _addresses(reply) == ["10.32.0.1"]
    assert reply.answer[0].ttl == 30


def test_case_insensitive() -> None:
    reply = _ask("C1.WEAVE.local.")
    assert _addresses(reply) == ["10.32.0.1"]


def test_round_robin_shuffles_all_addresses() -> None:
    orders = {tuple(_addresses(_ask("many.weave.local.", tcp=True, seed=s))) for s in range(5)}
    assert len(orders) == 5
    assert all(len(o) == 50 and len(set(o)) == 50 for o in orders)


def test_aaaa_and_other_types_in_domain_no_answer() -> None:
    for rdtype in ("AAAA", "MX", "TXT"):
        reply = _ask("c1.weave.local.", rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
        assert reply.flags & dns.flags.AA


def test_unknown_name_in_domain_nxdomain() -> None:
    for rdtype in ("A", "AAAA"):
        reply = _ask("nope.weave.local.", rdtype)
        assert reply.rcode() == dns.rcode.NXDOMAIN


def test_unreachable_peers_entries_hidden() -> None:
    assert _addresses(_ask("far.weave.local.")) == ["10.40.0.9"]
    assert _ask("far.weave.local.", z=_zone(reachable=False)).rcode() == dns.rcode.NXDOMAIN


def test_ptr_ours_answered_others_forwarded() -> None:
    reply = _ask("1.0.32.10.in-addr.arpa.", "PTR")
    assert [r.target.to_text() for r in reply.answer[0]] == ["c1.weave.local."]
    z = _zone()
    for name in ("9.9.32.10.in-addr.arpa.", "0.32.10.in-addr.arpa.", "x.0.32.10.in-addr.arpa."):
        query = dns.message.make_query(name, "PTR").to_wire()
        assert answer(query, z) is FORWARD


def test_outside_domain_forwarded() -> None:
    z = _zone()
    for name, rdtype in (("example.com.", "A"), ("c1.", "A"), ("weave.local.com.", "A")):
        assert answer(dns.message.make_query(name, rdtype).to_wire(), z) is FORWARD


def test_fifty_records_truncated_over_udp_whole_over_tcp() -> None:
    udp = _ask("many.weave.local.")
    assert udp.flags & dns.flags.TC
    assert 0 < len(_addresses(udp)) < 50
    tcp = _ask("many.weave.local.", tcp=True)
    assert not tcp.flags & dns.flags.TC and len(_addresses(tcp)) == 50


def test_edns0_bufsize_700() -> None:
    reply = _ask("many.weave.local.", payload=700)
    assert reply.flags & dns.flags.TC and reply.edns == 0
    n = len(_addresses(reply))
    small = _ask("many.weave.local.")
    assert n > len(_addresses(small))
    big = _ask("many.weave.local.", payload=4096)
    assert not big.flags & dns.flags.TC and len(_addresses(big)) == 50


def test_malformed_formerr_or_dropped() -> None:
    z = _zone()
    assert answer(b"", z) is None
    assert answer(b"\x12\x34", z) is None
    garbage = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"
    out = answer(garbage, z)
    assert isinstance(out, bytes)
    reply = dns.message.from_wire(out)
    assert reply.id == 0xABCD and reply.rcode() == dns.rcode.FORMERR
    response = dns.message.make_response(dns.message.make_query("c1.weave.local.", "A"))
    assert answer(response.to_wire(), z) is None  # a response: dropped
    two = dns.message.make_query("c1.weave.local.", "A")
    two.question.append(two.question[0])
    out = answer(two.to_wire(), z)
    assert isinstance(out, bytes) and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR


def test_notimp_for_other_opcodes() -> None:
    query = dns.message.make_query("c1.weave.local.", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    out = answer(query.to_wire(), _zone())
    assert isinstance(out, bytes) and dns.message.from_wire(out).rcode() == dns.rcode.NOTIMP


def test_servfail() -> None:
    query = dns.message.make_query("example.com.", "A")
    out = servfail(query.to_wire())
    assert out is not None
    reply = dns.message.from_wire(out)
    assert reply.rcode() == dns.rcode.SERVFAIL and reply.id == query.id
    assert servfail(b"xx") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_never_crashes(data: bytes) -> None:
    out = answer(data, _ZONE)
    assert out is None or out is FORWARD or isinstance(out, bytes)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=40))
def test_never_crashes_on_mutated_queries(tail: bytes) -> None:
    base = dns.message.make_query("c1.weave.local.", "A").to_wire()
    out = answer(base[:12] + tail, _ZONE)
    assert out is None or out is FORWARD or isinstance(out, bytes)


_ZONE = _zone()


# -- the hand-written path against dnspython's ------------------------------------------------

NAMES = ["c1.weave.local.", "C1.Weave.Local.", "many.weave.local.", "nope.weave.local.",
         "far.weave.local.", "weave.local.", "example.com.", "1.0.32.10.in-addr.arpa.",
         "x_y.weave.local.", "a.b.c.weave.local."]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(NAMES), st.sampled_from(["A", "AAAA", "MX", "ANY", "PTR", "TXT"]),
       st.sampled_from([None, 0, 512, 700, 1232, 4096]), st.booleans(), st.booleans(),
       st.integers(0, 2**16 - 1), st.integers(0, 1000))
def test_fast_path_answers_as_dnspython_does(name: str, rdtype: str, payload: int | None,
                                             rd: bool, tcp: bool, qid: int, seed: int) -> None:
    from router.dns.answer import SLOW, fast_answer, slow_answer

    if payload is None:
        query = dns.message.make_query(name, rdtype, use_edns=False)
    else:
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=max(payload, 512))
    query.id = qid
    if not rd:
        query.flags &= ~dns.flags.RD
    wire = query.to_wire()
    fast = fast_answer(wire, _ZONE, tcp=tcp, rng=random.Random(seed))
    slow = slow_answer(wire, _ZONE, tcp=tcp, rng=random.Random(seed))
    if fast is not SLOW and not isinstance(fast, bytes):
        assert fast is slow  # FORWARD or a drop, both ways
    elif fast is not SLOW:
        assert isinstance(fast, bytes) and isinstance(slow, bytes)
        # dnspython shuffles an RRset again as it renders it: compare records as a set.
        assert len(fast) == len(slow) and fast[:12] == slow[:12]
        start = _question_end(wire)
        end = len(fast) - (11 if payload is not None else 0)
        assert fast[:start] == slow[:start] and fast[end:] == slow[end:]
        records = [fast[i:i + 16] for i in range(start, end, 16)]
        assert sorted(records) == sorted(slow[i:i + 16] for i in range(start, end, 16))


def _question_end(wire: bytes) -> int:
    pos = 12
    while wire[pos]:
        pos += 1 + wire[pos]
    return pos + 5


def test_fast_path_takes_the_common_queries() -> None:
    from router.dns.answer import SLOW, fast_answer

    for name, rdtype in (("c1.weave.local.", "A"), ("nope.weave.local.", "A"),
                         ("c1.weave.local.", "AAAA"), ("example.com.", "A")):
        for edns in (False, 0):
            wire = dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
            assert fast_answer(wire, _ZONE, tcp=False, rng=random.Random(0)) is not SLOW
