"""weaveDNS as a service: the entries on gossip channel ``"dns"``, UDP and TCP listeners,
forwarding to the upstream servers.

Stages of one query (UDP or TCP, the answerer is the same):

1. **receive**  a datagram (up to 64 KiB), read by a thread of its own that answers a
                repeat from the answer cache at once (``cache.py``) and hands the
                rest to the trio loop, or a length-prefixed message on a TCP
                connection (at most ``max_tcp_clients`` connections; idle ones closed
                after ``tcp_idle_timeout``)
2. **answer**   :func:`router.dns.answer.answer` against the entries: bytes are sent
                back, None is a counted drop
3. **forward**  "forward": the query as it came goes to each upstream server of
                ``--resolv-conf`` in turn (same transport), ``upstream_timeout`` each; the
                first answer with the query's id goes back unchanged; none: SERVFAIL. At
                most ``max_in_flight`` forwards run at once; beyond that, SERVFAIL at once
                (counted ``busy``)

Gossip: our changes (add, remove) go to every neighbour as gossip; a peer's gossip is
merged and what was new is relayed (:class:`~router.mesh.gossip.Gossiper`). Clock skew,
malformed payloads and too many entries raise RemoteProtocolError: the gossip router
drops that neighbour. Our live entries are kept in the store (meta ``dns_entries``) and
registered again when the router starts.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import trio

from router.dns.answer import FORWARD, servfail, zone
from router.dns.cache import AnswerCache
from router.dns.config import DnsConfig
from router.dns.entries import DnsGossip, Entries, Entry, decode_gossip_untrusted, fqdn
from router.dns.upstream import ResolvConf, Server
from router.errors import ConfigError, LocalProtocolError
from router.mesh.gossip import GossipChannel, GossipData, Gossiper
from router.mesh.names import PeerName
from router.store import Store, StoreError

log = logging.getLogger("weave-router.dns")

CHANNEL = "dns"
STORE_KEY = "dns_entries"  # JSON [[hostname, container_id, address], ...]: ours, live
EXPIRE_INTERVAL = 60.0  # seconds between tombstone sweeps
MAX_PERSISTED = 800  # our entries kept in the store (~64 KiB, the store's value limit)
MAX_UDP = 65535  # bytes
UDP_THREAD_POLL = 0.2  # seconds the UDP thread waits for a query before checking for stop
EXTERNAL_ID = "weave:extern"  # Weave's container id of dns-add -h without a container
IP_PKTINFO = 8  # Linux <linux/in.h> (not in every Python's socket module)

Register = Callable[[str, Gossiper], GossipChannel]


@dataclass(frozen=True)
class DnsStatistics:
    """``status dns``, the DNS section of ``status`` and of the report."""

    domain: str
    address: str  # "ip:port" we listen on
    upstream: tuple[str, ...]
    ttl: int
    entries: tuple[Entry, ...]  # live and visible (``status dns``)
    all_entries: tuple[Entry, ...]  # everything, tombstones included (the report)
    counters: dict[str, int] = field(default_factory=dict)


class DnsService:
    """weaveDNS of one router (see the module doc)."""

    def __init__(self, config: DnsConfig, *, ourself: PeerName, register: Register,
                 visible: Callable[[PeerName], bool], store: Store | None = None,
                 on_output: Callable[[], None] | None = None, bind_device: str | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.entries = Entries(ourself)
        self._visible = visible
        self._store = store
        self._on_output = on_output
        self._bind_device = bind_device
        self._clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._zone = zone(config.domain, config.ttl, self.entries, visible)
        self._answers = AnswerCache()
        self._upstream = ResolvConf(config.resolv_conf, config.address)
        self._in_flight = 0
        self._tcp_clients = 0
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._thread_counts = [0, 0]  # the UDP thread's own: answered from the cache, not sent
        self.bound: tuple[str, int] | None = None
        self._over_limit = False
        self._channel = register(CHANNEL, self)
        self._restore()

    # -- registrations (the API, attach/detach) -------------------------------------------

    def check_fqdn(self, name: str) -> str:
        """``name`` as a fully qualified name in our domain; ConfigError if it is not."""
        full = fqdn(name.strip())
        labels = full[:-1].split(".")
        if (len(full) > 254 or not all(0 < len(label) <= 63 for label in labels)
                or not all(c.isalnum() or c in "-_" for label in labels for c in label)):
            raise ConfigError(f"{name!r} is not a valid DNS name")
        domain = self.config.domain
        if not full.lower().endswith("." + domain) or full.lower() == domain:
            raise ConfigError(f"{name!r} is not in the DNS domain {domain} (like "
                              f"NAME.{domain})")
        return full

    def add(self, hostname: str, container_id: str, addresses: Iterable[IPv4Address]) -> int:
        """Register ``hostname`` for each address (ConfigError if not in our domain);
        how many entries changed."""
        name = self.check_fqdn(hostname)
        changed = [e for a in addresses if (e := self.entries.add(name, container_id, a))]
        for entry in changed:
            log.info("adding entry for %s: %s -> %s", container_id, entry.hostname, entry.address)
        self._changed(changed)
        return len(changed)

    def remove(self, *, container_id: str | None = None, hostname: str | None = None,
               address: IPv4Address | None = None) -> int:
        """Tombstone our entries matching every given field; how many."""
        name = None if hostname is None else self.check_fqdn(hostname)
        dead = self.entries.tombstone(int(self._clock()), hostname=name,
                                      container_id=container_id, address=address)
        for entry in dead:
            log.info("tombstoning entry %s -> %s (%s)", entry.hostname, entry.address,
                     entry.container_id)
        self._changed(dead)
        return len(dead)

    def lookup(self, hostname: str) -> list[IPv4Address]:
        return self.entries.lookup(hostname, self._visible)

    def _changed(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        self._persist()
        self._channel.gossip_update(DnsGossip(int(self._clock()), tuple(entries)))
        if self._on_output is not None:
            self._on_output()

    def _persist(self) -> None:
        if self._store is None:
            return
        if self.entries.count_ours() > MAX_PERSISTED:
            if not self._over_limit:
                log.warning("more than %d DNS entries of ours: the ones added from now on are "
                            "not kept for a restart", MAX_PERSISTED)
            self._over_limit = True
            return
        self._over_limit = False
        rows = sorted([e.hostname, e.container_id, str(e.address)] for e in self.entries.ours())
        try:
            self._store.set_meta(STORE_KEY, json.dumps(rows))
        except (StoreError, LocalProtocolError) as exc:
            log.warning("cannot keep the DNS entries for a restart: %s", exc)

    def _restore(self) -> None:
        raw = None if self._store is None else self._store.get_meta(STORE_KEY)
        if not raw:
            return
        try:
            rows = [(str(h), str(c), IPv4Address(a)) for h, c, a in json.loads(raw)]
        except (ValueError, TypeError) as exc:
            log.warning("ignoring the stored DNS entries: %s", exc)
            return
        for hostname, container, address in rows:
            self.entries.add(hostname, container, address)
        log.info("registered %d DNS entries again", len(rows))

    # -- the Gossiper of channel "dns" ------------------------------------------------------

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        """Not used by weaveDNS (as Weave's); ignored."""

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        return self.on_gossip(payload)

    def gossip(self) -> GossipData | None:
        everything = self.entries.all()
        return DnsGossip(int(self._clock()), tuple(everything)) if everything else None

    def on_gossip(self, payload: bytes) -> GossipData | None:
        timestamp, incoming = decode_gossip_untrusted(payload)
        now = int(self._clock())
        new, overrides = self.entries.receive(timestamp, incoming, now)
        self._counts["gossip_received"] += 1
        if overrides:  # our word on our own entries, above what came in
            self._channel.gossip_update(DnsGossip(now, tuple(overrides)))
            if self._on_output is not None:
                self._on_output()
        return DnsGossip(now, tuple(new)) if new else None

    # -- status ---------------------------------------------------------------------------

    def upstream(self) -> list[Server]:
        return self._upstream.servers(time.monotonic())

    def statistics(self) -> DnsStatistics:
        host, port = self.bound or self.config.address
        cached, unsent = self._thread_counts  # answered by the UDP thread alone
        counters = {**self._counts, "gossip_refused": self.entries.refused,
                    "in_flight": self._in_flight,
                    "tcp_clients": self._tcp_clients, "cached_answers": self._answers.hits + cached}
        for key, extra in (("queries_udp", cached), ("answered", cached), ("send_failed", unsent)):
            counters[key] += extra
        return DnsStatistics(
            domain=self.config.domain, address=f"{host}:{port}",
            upstream=tuple(h for h, _ in self.upstream()), ttl=self.config.ttl,
            entries=tuple(self.entries.visible(self._visible)),
            all_entries=tuple(self.entries.all()),
            counters=counters,
        )

    # -- serving ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Bind UDP and TCP on the configured address (OSError if either fails), then
        serve until cancelled."""
        host, port = self.config.address
        udp = await self._socket(socket.SOCK_DGRAM, host, port)
        try:
            port = udp.getsockname()[1]
            tcp = await self._socket(socket.SOCK_STREAM, host, port)
        except BaseException:
            udp.close()
            raise
        with udp, tcp:
            tcp.listen(128)
            self.bound = (host, port)
            log.info("DNS listening on %s:%d (UDP and TCP), domain %s", host, port,
                     self.config.domain)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_udp, udp, nursery)
                nursery.start_soon(self._serve_tcp, tcp, nursery)
                nursery.start_soon(self._expire_loop)
                task_status.started()

    async def _socket(self, kind: int, host: str, port: int) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_INET, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._bind_device is not None and kind == socket.SOCK_STREAM:
                # Containers' connections only; SYN-ACKs leave by the bridge (docs/dns.md)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                self._bind_device.encode())
            elif self._bind_device is not None:  # answers leave where the query came in
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            await sock.bind((host, port))
        except OSError as exc:
            sock.close()
            what = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
            raise OSError(exc.errno, f"cannot listen on {host}:{port} ({what}) for DNS: "
                                     f"{exc.strerror}") from exc
        return sock

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRE_INTERVAL)
            self.entries.expire(int(self._clock()))

    async def _serve_udp(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        """A thread of its own reads the queries (blocking, the GIL released while it
        waits) and answers repeats from the cache's kept answers at once; every other
        query is handed to the trio loop (:meth:`_udp_query`). Answers are sent
        non-blocking; a full send buffer is a counted drop: the client asks again."""
        token = trio.lowlevel.current_trio_token()
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=os.dup(sock.fileno()))
        reader = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=os.dup(sock.fileno()))
        raw.setblocking(False)
        reader.settimeout(UDP_THREAD_POLL)
        stop = threading.Event()

        def hand_over(data: bytes, client: Any) -> None:
            self._udp_query(raw, sock, data, client, nursery)

        thread = threading.Thread(target=self._udp_thread, name="weave-dns-udp", daemon=True,
                                  args=(reader, raw, token, hand_over, stop))
        thread.start()
        try:
            await trio.sleep_forever()
        finally:
            stop.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
            reader.close()
            raw.close()

    def _udp_thread(self, reader: socket.socket, raw: socket.socket,
                    token: trio.lowlevel.TrioToken, hand_over: Callable[[bytes, Any], None],
                    stop: threading.Event) -> None:
        pktinfo = self._bind_device is not None
        counts = self._thread_counts
        while not stop.is_set():
            try:
                if pktinfo:
                    data, ancillary, _, address = reader.recvmsg(MAX_UDP, _CMSG_SPACE)
                    client: Any = _Client(address, _ingress(ancillary))
                else:
                    data, client = reader.recvfrom(MAX_UDP)
            except TimeoutError:
                continue
            except OSError:  # an ICMP error from an earlier send, or the socket closed
                if stop.is_set():
                    return
                continue
            out = self._answers.kept(data, self._zone, time.monotonic())
            if out is None:
                try:
                    token.run_sync_soon(hand_over, data, client)
                except trio.RunFinishedError:
                    return
                continue
            counts[0] += 1
            if not _send_now(raw, out, client):
                counts[1] += 1

    def _udp_query(self, raw: socket.socket, sock: trio.socket.SocketType, data: bytes,
                   client: Any, nursery: trio.Nursery) -> None:
        self._counts["queries_udp"] += 1
        out = self._answers.answer(data, self._zone, tcp=False, rng=self._rng)
        if out is FORWARD:
            if self._in_flight < self.config.max_in_flight:
                self._in_flight += 1
                nursery.start_soon(self._forward_udp, sock, data, client)
                return
            self._counts["busy"] += 1
            out = servfail(data)
        if not isinstance(out, bytes):
            self._counts["dropped"] += 1
            return
        self._counts["answered"] += 1
        if not _send_now(raw, out, client):
            self._counts["send_failed"] += 1

    async def _forward_udp(self, sock: trio.socket.SocketType, query: bytes,
                           client: Any) -> None:
        try:
            reply = await self._forward(query, tcp=False)
        finally:
            self._in_flight -= 1
        if reply is not None:
            await _send_udp(sock, reply, client)

    async def _forward(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The first upstream answer to ``query``, or SERVFAIL (None: not even that)."""
        self._counts["forwarded"] += 1
        for server in self.upstream():
            with trio.move_on_after(self.config.upstream_timeout):
                try:
                    reply = await (_ask_tcp if tcp else _ask_udp)(server, query)
                except OSError as exc:
                    log.debug("upstream %s:%d: %s", *server, exc)
                    continue
                if reply is not None:
                    return reply
        self._counts["forward_failed"] += 1
        return servfail(query)

    async def _serve_tcp(self, listener: trio.socket.SocketType, nursery: trio.Nursery
                         ) -> None:
        while True:
            try:
                conn, _ = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await trio.sleep(0.1)  # out of descriptors: let some close first
                continue
            if self._tcp_clients >= self.config.max_tcp_clients:
                self._counts["tcp_refused"] += 1
                conn.close()
                continue
            self._tcp_clients += 1
            nursery.start_soon(self._tcp_client, trio.SocketStream(conn))

    async def _tcp_client(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                while True:
                    with trio.move_on_after(self.config.tcp_idle_timeout) as idle:
                        query = await _read_message(stream)
                    if idle.cancelled_caught or query is None:
                        return
                    self._counts["queries_tcp"] += 1
                    out = self._answers.answer(query, self._zone, tcp=True, rng=self._rng)
                    if out is FORWARD:
                        if self._in_flight >= self.config.max_in_flight:
                            self._counts["busy"] += 1
                            out = servfail(query)
                        else:
                            self._in_flight += 1
                            try:
                                out = await self._forward(query, tcp=True)
                            finally:
                                self._in_flight -= 1
                    if not isinstance(out, bytes):
                        self._counts["dropped"] += 1
                        return
                    self._counts["answered"] += 1
                    await stream.send_all(len(out).to_bytes(2, "big") + out)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            self._tcp_clients -= 1


_COUNTERS = ("queries_udp", "queries_tcp", "answered", "forwarded", "forward_failed",
             "busy", "dropped", "send_failed", "tcp_refused", "gossip_received")


@dataclass(frozen=True)
class _Client:
    """A UDP client and the in_pktinfo of its query (answered by the same interface)."""

    address: Any
    pktinfo: bytes | None

    def ancillary(self) -> list[tuple[int, int, bytes]]:
        """The control message that sends the answer out where the query came in."""
        return [] if self.pktinfo is None else [(socket.IPPROTO_IP, IP_PKTINFO, self.pktinfo)]


_CMSG_SPACE = socket.CMSG_SPACE(12)  # struct in_pktinfo


def _send_now(raw: socket.socket, data: bytes, client: Any) -> bool:
    """Send an answer without waiting; False if it could not go (a full send buffer or
    an unreachable client: the client's loss, it asks again)."""
    try:
        if isinstance(client, _Client):
            raw.sendmsg([data], client.ancillary(), 0, client.address)
        else:
            raw.sendto(data, client)
    except OSError:
        return False
    return True


def _ingress(ancillary: list[tuple[int, int, bytes]]) -> bytes | None:
    """in_pktinfo for the answer: the query's interface and its destination address, so
    the kernel sends it out there (on-link) even without a route back (docs/dns.md)."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return data[0:4] + data[8:12] + bytes(4)
    return None


async def _send_udp(sock: trio.socket.SocketType, data: bytes, client: Any) -> None:
    try:
        if isinstance(client, _Client):
            await sock.sendmsg([data], client.ancillary(), 0, client.address)
            return
        await sock.sendto(data, client)
    except OSError as exc:  # the client's address is unreachable: its loss
        log.debug("DNS answer to %s not sent: %s", client, exc)


async def _ask_udp(server: Server, query: bytes) -> bytes | None:
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.connect(server)
        await sock.send(query)
        while True:
            reply = await sock.recv(MAX_UDP)
            if reply[:2] == query[:2] and len(reply) >= 12:
                return reply


async def _ask_tcp(server: Server, query: bytes) -> bytes | None:
    stream = await trio.open_tcp_stream(*server)
    async with stream:
        await stream.send_all(len(query).to_bytes(2, "big") + query)
        return await _read_message(stream)


async def _read_message(stream: trio.abc.ReceiveStream) -> bytes | None:
    """One length-prefixed DNS message; None at EOF."""
    head = await _read_exactly(stream, 2)
    if head is None:
        return None
    return await _read_exactly(stream, int.from_bytes(head, "big"))


async def _read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = await stream.receive_some(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
