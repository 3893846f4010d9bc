"""The DNS service: two services exchanging gossip through real gossip routers, a skewed
peer dropped, the store keeping our entries for a restart, and real UDP/TCP sockets on
loopback (answers, truncation then TCP, SERVFAIL without upstream servers)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest
import trio

from router.dns.config import DnsConfig
from router.dns.service import DnsService
from router.errors import ConfigError, RemoteProtocolError
from router.mesh.gossip import GossipIn, GossipRouter
from router.mesh.names import PeerName
from router.store import Store

A, B = PeerName(1), PeerName(2)
IP1 = ipaddress.IPv4Address("10.32.0.1")


def _service(me: PeerName, tmp_path: Path, *, clock: float = 1e9,
             store: Store | None = None) -> tuple[DnsService, GossipRouter]:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# no upstream servers\n")
    router = GossipRouter(me, now=0.0)
    config = DnsConfig(listen=("127.0.0.1", 0), resolv_conf=resolv, upstream_timeout=0.2)
    service = DnsService(config, ourself=me, register=router.register,
                         visible=lambda _p: True, store=store, wall_clock=lambda: clock)
    return service, router


def test_gossip_between_two_services(tmp_path: Path) -> None:
    a, _ = _service(A, tmp_path)
    b, _ = _service(B, tmp_path)
    a.add("c1.weave.local", "id1", [IP1])
    state = a.gossip()
    assert state is not None
    for payload in state.encode():
        assert b.on_gossip(payload) is not None
    assert b.lookup("c1.weave.local.") == [IP1]
    a.remove(container_id="id1")
    state = a.gossip()
    assert state is not None
    for payload in state.encode():
        b.on_gossip(payload)
    assert b.lookup("c1.weave.local.") == []


def test_skewed_peer_is_dropped(tmp_path: Path) -> None:
    a, _ = _service(A, tmp_path, clock=1e9 + 1000)
    b, router = _service(B, tmp_path)
    a.add("c1.weave.local", "id1", [IP1])
    state = a.gossip()
    assert state is not None
    with pytest.raises(RemoteProtocolError, match="host clock skew of 1000s exceeds 900s limit"):
        router.receive(A, GossipIn("dns", A, state.encode()[0]))
    assert b.lookup("c1.weave.local.") == []


def test_names_outside_the_domain_refused(tmp_path: Path) -> None:
    a, _ = _service(A, tmp_path)
    for bad in ("c1.example.com", "weave.local", "bad name.weave.local", "-" * 64 + ".weave.local"):
        with pytest.raises(ConfigError):
            a.add(bad, "id1", [IP1])
    assert len(a.entries) == 0


def test_restart_registers_our_entries_again(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    try:
        a, _ = _service(A, tmp_path, store=store)
        a.add("c1.weave.local", "id1", [IP1])
        a.add("c2.weave.local", "id2", [ipaddress.IPv4Address("10.32.0.2")])
        a.remove(container_id="id2")
        again, _ = _service(A, tmp_path, store=store)
        assert again.lookup("c1.weave.local.") == [IP1]
        assert again.lookup("c2.weave.local.") == []
    finally:
        store.close()


async def _udp(addr: tuple[str, int], query: dns.message.Message) -> dns.message.Message:
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
        await sock.connect(addr)
        await sock.send(query.to_wire())
        with trio.fail_after(5):
            return dns.message.from_wire(await sock.recv(65535))


async def _tcp(addr: tuple[str, int], query: dns.message.Message) -> dns.message.Message:
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        wire = query.to_wire()
        await stream.send_all(len(wire).to_bytes(2, "big") + wire)
        buf = b""
        with trio.fail_after(5):
            while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                buf += await stream.receive_some(65536)
        return dns.message.from_wire(buf[2:])


async def test_sockets_answer_truncate_and_servfail(tmp_path: Path) -> None:
    service, _ = _service(A, tmp_path)
    service.add("c1.weave.local", "id1", [IP1])
    service.add("many.weave.local", "m", [ipaddress.IPv4Address(0x0A280000 + i)
                                          for i in range(50)])
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert service.bound is not None
        addr = service.bound
        reply = await _udp(addr, dns.message.make_query("c1.weave.local.", "A"))
        assert [r.address for r in reply.answer[0]] == ["10.32.0.1"]
        udp = await _udp(addr, dns.message.make_query("many.weave.local.", "A"))
        assert udp.flags & dns.flags.TC
        tcp = await _tcp(addr, dns.message.make_query("many.weave.local.", "A"))
        assert len(tcp.answer[0]) == 50 and not tcp.flags & dns.flags.TC
        fail = await _udp(addr, dns.message.make_query("example.com.", "A"))
        assert fail.rcode() == dns.rcode.SERVFAIL
        fail = await _tcp(addr, dns.message.make_query("example.com.", "A"))
        assert fail.rcode() == dns.rcode.SERVFAIL
        stats = service.statistics()
        assert stats.counters["forward_failed"] == 2 and stats.counters["in_flight"] == 0
        nursery.cancel_scope.cancel()


async def test_udp_repeats_are_answered_by_the_thread_and_changes_seen_at_once(
        tmp_path: Path) -> None:
    service, _ = _service(A, tmp_path)
    service.add("c1.weave.local", "id1", [IP1])
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert service.bound is not None
        for qid in range(1, 21):
            query = dns.message.make_query("c1.weave.local.", "A")
            query.id = qid
            reply = await _udp(service.bound, query)
            assert reply.id == qid and [r.address for r in reply.answer[0]] == ["10.32.0.1"]
        counters = service.statistics().counters
        assert counters["queries_udp"] == counters["answered"] == 20
        assert counters["cached_answers"] >= 18  # the first is built, repeats are kept
        service.remove(container_id="id1")  # a change: the next answer is built anew
        gone = await _udp(service.bound, dns.message.make_query("c1.weave.local.", "A"))
        assert gone.rcode() == dns.rcode.NXDOMAIN
        service.add("c1.weave.local", "id2", [ipaddress.IPv4Address("10.32.0.7")])
        back = await _udp(service.bound, dns.message.make_query("c1.weave.local.", "A"))
        assert [r.address for r in back.answer[0]] == ["10.32.0.7"]
        nursery.cancel_scope.cancel()


def test_resolv_conf_parsed_ourselves_filtered_and_reread(tmp_path: Path) -> None:
    from router.dns.upstream import ResolvConf, parse_resolv_conf

    text = ("# comment\nsearch example.com\nnameserver 192.0.2.1\nnameserver bogus\n"
            "nameserver 169.254.255.53\nnameserver 192.0.2.1\nnameserver 2001:db8::1 # v6\n"
            "nameserver 192.0.2.3\n")
    assert parse_resolv_conf(text, ourselves=lambda a: a == "169.254.255.53") == [
        ("192.0.2.1", 53), ("2001:db8::1", 53), ("192.0.2.3", 53)]
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.9\n")
    conf = ResolvConf(path, ("0.0.0.0", 53))  # listening everywhere: loopback is us
    assert conf.servers(0.0) == [("192.0.2.9", 53)]
    path.write_text("nameserver 192.0.2.10\n")
    assert conf.servers(0.5) == [("192.0.2.9", 53)]  # looked at most once a second
    assert conf.servers(1.5) == [("192.0.2.10", 53)]
    path.unlink()
    assert conf.servers(3.0) == []
