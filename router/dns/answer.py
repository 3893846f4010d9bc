"""weaveDNS's answerer: query bytes + entries + now -> answer bytes, "forward", or drop.

Sans-IO and total: :func:`answer` never raises for any input bytes (a hypothesis test
feeds it garbage). dnspython does the wire format.

=========================================  ============================================
query                                      answer
=========================================  ============================================
not parseable, 12+ bytes, QR clear         FORMERR (header and id echoed), else dropped
a response (QR set)                        dropped
opcode other than QUERY                    NOTIMP
not exactly one question, class not IN     FORMERR / forwarded (class CH, ...)
A of a name in the domain with entries     NOERROR, AA, every live visible address,
                                           shuffled (Weave's load balancing), TTL ``ttl``
another type of a name with entries        NOERROR, AA, no answer
any type of a name in the domain without   NXDOMAIN, AA
PTR ``d.c.b.a.in-addr.arpa.`` of ours      NOERROR, AA, the first hostname of a.b.c.d
anything else (PTR not ours included)      :data:`FORWARD` to the upstream servers
=========================================  ============================================

Size: over UDP the answer fits 512 bytes, or the query's EDNS0 payload size if larger;
if the records do not all fit, as many as fit are sent with TC set (the client asks
again over TCP, where the answer is whole, up to 65535 bytes). The answer carries an
OPT record when the query did (payload :data:`OUR_PAYLOAD`).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from router.dns.entries import Entries
from router.mesh.names import PeerName

UDP_DEFAULT_SIZE = 512  # bytes: a UDP answer without EDNS0 (RFC 1035)
TCP_MAX_SIZE = 65535  # bytes: a TCP answer (2-byte length prefix)
OUR_PAYLOAD = 4096  # bytes: the EDNS0 payload size we announce
A_RECORD_SIZE = 16  # bytes: one A record with a compressed name
_REVERSE = dns.name.from_text("in-addr.arpa.")
_RNG = random.Random()


class _Slow:
    """The fast path's "not mine: ask dnspython"."""


SLOW: Final = _Slow()


class _Forward:
    """The answer "ask the upstream servers"."""

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD: Final = _Forward()
Outcome = bytes | _Forward | None  # None: drop the query


@dataclass(frozen=True)
class Zone:
    """What the answerer serves: the domain, TTL and entries, and who is reachable."""

    domain: dns.name.Name
    ttl: int
    entries: Entries
    visible: Callable[[PeerName], bool]
    suffix: str = ""  # "." + the domain, lowercase: the fast path's test


def zone(domain: str, ttl: int, entries: Entries, visible: Callable[[PeerName], bool]) -> Zone:
    return Zone(dns.name.from_text(domain.lower()), ttl, entries, visible,
                "." + domain.lower().rstrip(".") + ".")


def answer(query: bytes, zone: Zone, *, tcp: bool = False,
           rng: random.Random | None = None) -> Outcome:
    """The answer to ``query`` (see the module doc); never raises."""
    try:
        fast = fast_answer(query, zone, tcp=tcp, rng=rng or _RNG)
    except Exception:  # a bug in the hand-written path must not lose the query
        fast = SLOW
    if fast is not SLOW:
        return fast  # type: ignore[return-value]
    return slow_answer(query, zone, tcp=tcp, rng=rng)


def slow_answer(query: bytes, zone: Zone, *, tcp: bool = False,
                rng: random.Random | None = None) -> Outcome:
    """:func:`answer` through dnspython for every query (the twin of the fast path)."""
    try:
        message = dns.message.from_wire(query)
    except dns.message.ShortHeader:
        return None
    except Exception:  # every parse failure of untrusted bytes
        return _formerr(query)
    try:
        return _answer(message, zone, tcp=tcp, rng=rng or _RNG)
    except Exception:  # a name we cannot render (e.g. too long): FORMERR
        return _formerr(query)


def _answer(query: dns.message.Message, zone: Zone, *, tcp: bool,
            rng: random.Random) -> Outcome:
    if query.flags & dns.flags.QR:
        return None
    if query.opcode() != dns.opcode.QUERY:
        return _reply(query, dns.rcode.NOTIMP)
    if len(query.question) != 1:
        return _reply(query, dns.rcode.FORMERR)
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return FORWARD
    name = question.name
    if name.is_subdomain(zone.domain):
        return _local(query, zone, name, question.rdtype, tcp=tcp, rng=rng)
    if question.rdtype == dns.rdatatype.PTR and name.is_subdomain(_REVERSE):
        return _reverse(query, zone, name)
    return FORWARD


def _local(query: dns.message.Message, zone: Zone, name: dns.name.Name, rdtype: int, *,
           tcp: bool, rng: random.Random) -> bytes:
    addresses = zone.entries.lookup(name.to_text(), zone.visible)
    if not addresses:
        return _reply(query, dns.rcode.NXDOMAIN, authoritative=True)
    response = _response(query, authoritative=True)
    if rdtype not in (dns.rdatatype.A, dns.rdatatype.ANY):
        return response.to_wire(max_size=TCP_MAX_SIZE)
    shuffled = list(addresses)
    rng.shuffle(shuffled)
    limit = TCP_MAX_SIZE if tcp else max(UDP_DEFAULT_SIZE, query.payload if query.edns >= 0
                                         else UDP_DEFAULT_SIZE)
    room = (limit - len(response.to_wire(max_size=TCP_MAX_SIZE))) // A_RECORD_SIZE
    if room < len(shuffled):
        response.flags |= dns.flags.TC
        shuffled = shuffled[:max(room, 0)]
    if shuffled:
        rrset = dns.rrset.from_text_list(name, zone.ttl, "IN", "A", [str(a) for a in shuffled])
        response.answer.append(rrset)
    return response.to_wire(max_size=TCP_MAX_SIZE)


def _reverse(query: dns.message.Message, zone: Zone, name: dns.name.Name) -> Outcome:
    labels = name.relativize(_REVERSE).labels
    if len(labels) != 4:
        return FORWARD
    try:
        address = ipaddress.IPv4Address(".".join(label.decode() for label in reversed(labels)))
    except (ValueError, UnicodeDecodeError):
        return FORWARD
    hostname = zone.entries.reverse(address, zone.visible)
    if hostname is None:
        return FORWARD
    response = _response(query, authoritative=True)
    response.answer.append(dns.rrset.from_text_list(name, zone.ttl, "IN", "PTR", [hostname]))
    return response.to_wire(max_size=TCP_MAX_SIZE)


def _response(query: dns.message.Message, *, authoritative: bool) -> dns.message.Message:
    response = dns.message.make_response(query, recursion_available=True,
                                         our_payload=OUR_PAYLOAD)
    if authoritative:
        response.flags |= dns.flags.AA
    return response


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode, *,
           authoritative: bool = False) -> bytes:
    response = _response(query, authoritative=authoritative)
    response.set_rcode(rcode)
    return response.to_wire(max_size=TCP_MAX_SIZE)


def _formerr(query: bytes) -> bytes | None:
    """FORMERR for a query we cannot parse: its id and opcode, RD as asked, nothing more."""
    if len(query) < 12 or query[2] & 0x80:
        return None  # too short to echo, or a response: drop
    flags = 0x8000 | (query[2] & 0x79) << 8 | dns.rcode.FORMERR  # QR, opcode, RD
    return query[:2] + flags.to_bytes(2, "big") + bytes(8)


def servfail(query: bytes) -> bytes | None:
    """SERVFAIL for ``query`` (every upstream failed); None if it cannot be parsed."""
    try:
        message = dns.message.from_wire(query)
    except Exception:  # untrusted bytes
        return None
    if message.flags & dns.flags.QR:
        return None
    return _reply(message, dns.rcode.SERVFAIL)


# -- the hand-written path for the common query --------------------------------------------
#
# A standard query (QR 0, opcode QUERY, QDCOUNT 1, AN/NS 0, AR 0 or one OPT of version 0)
# for class IN, whose name is plain labels (no compression): answered here without
# dnspython when the name is in the domain (A, other types, NXDOMAIN) or forwarded when it
# is outside and not a reverse lookup. Everything else returns SLOW and goes through
# dnspython. The answers are byte-for-byte what the dnspython path builds (a test checks).

_HEADER = 12
_TYPE_A, _TYPE_ANY, _TYPE_OPT, _CLASS_IN = 1, 255, 41, 1
_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080


def fast_answer(query: bytes, zone: Zone, *, tcp: bool, rng: random.Random) -> Outcome | _Slow:
    if len(query) < _HEADER + 5:
        return SLOW
    flags = int.from_bytes(query[2:4], "big")
    if flags & 0xF800 or query[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return SLOW  # a response, another opcode, or not one question alone
    arcount = int.from_bytes(query[10:12], "big")
    pos, labels = _HEADER, []
    while True:
        size = query[pos]
        if size == 0 or size > 63:
            break
        labels.append(query[pos + 1:pos + 1 + size])
        pos += 1 + size
        if pos >= len(query):
            return SLOW
    if size != 0 or pos + 5 > len(query):
        return SLOW
    question_end = pos + 5
    qtype = int.from_bytes(query[pos + 1:pos + 3], "big")
    if int.from_bytes(query[pos + 3:pos + 5], "big") != _CLASS_IN:
        return SLOW
    payload = None
    if arcount == 1:
        payload = _opt_payload(query, question_end)
        if payload is None:
            return SLOW
    elif arcount or question_end != len(query):
        return SLOW
    try:
        name = b".".join(labels).decode("ascii").lower() + "."
    except UnicodeDecodeError:
        return SLOW
    if not (name.endswith(zone.suffix) or name == zone.suffix[1:]):
        return SLOW if name.endswith(".in-addr.arpa.") else FORWARD
    if not all(_plain(label) for label in labels):
        return SLOW  # escapes in the text form: leave it to dnspython
    return _local_fast(query, question_end, flags, qtype, payload, name, zone, tcp=tcp,
                       rng=rng)


def _plain(label: bytes) -> bool:
    return all(c > 0x20 and c not in (0x2E, 0x5C, 0x22, 0x28, 0x29, 0x3B, 0x40, 0x24) and
               c < 0x7F for c in label)


def _opt_payload(query: bytes, at: int) -> int | None:
    """The payload size of an OPT record of version 0 that ends the query; else None."""
    if len(query) < at + 11 or query[at] != 0:
        return None
    if int.from_bytes(query[at + 1:at + 3], "big") != _TYPE_OPT:
        return None
    if query[at + 6] != 0:  # EDNS version 0 only (dnspython answers others)
        return None
    if query[at + 5] != 0:  # extended rcode bits in a query: odd, leave it
        return None
    rdlen = int.from_bytes(query[at + 9:at + 11], "big")
    if at + 11 + rdlen != len(query):
        return None
    return int.from_bytes(query[at + 3:at + 5], "big")


def _local_fast(query: bytes, question_end: int, flags: int, qtype: int,
                payload: int | None, name: str, zone: Zone, *, tcp: bool,
                rng: random.Random) -> bytes:
    addresses = zone.entries.lookup(name, zone.visible)
    rflags = _QR | _AA | _RA | (flags & _RD)
    opt = b"" if payload is None else (b"\x00\x00\x29" + OUR_PAYLOAD.to_bytes(2, "big")
                                       + bytes(6))
    question = query[_HEADER:question_end]
    if not addresses:
        rflags |= dns.rcode.NXDOMAIN
    records = b""
    count = 0
    if addresses and qtype in (_TYPE_A, _TYPE_ANY):
        shuffled = list(addresses)
        rng.shuffle(shuffled)
        limit = TCP_MAX_SIZE if tcp else max(UDP_DEFAULT_SIZE, payload or 0)
        room = (limit - _HEADER - len(question) - len(opt)) // A_RECORD_SIZE
        if room < len(shuffled):
            rflags |= _TC
            shuffled = shuffled[:max(room, 0)]
        head = b"\xc0\x0c\x00\x01\x00\x01" + zone.ttl.to_bytes(4, "big") + b"\x00\x04"
        records = b"".join(head + a.packed for a in shuffled)
        count = len(shuffled)
    header = (query[:2] + rflags.to_bytes(2, "big") + b"\x00\x01" + count.to_bytes(2, "big")
              + b"\x00\x00" + (b"\x00\x01" if opt else b"\x00\x00"))
    return header + question + records + opt
