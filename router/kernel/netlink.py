"""The kernel port over rtnetlink: every netlink call on a worker thread this port owns.

Links, addresses, routes, VXLAN devices and FDB entries are read, and links, addresses
and routes changed, through raw netlink sockets with :mod:`router.kernel.rtnl`'s messages
(pyroute2 costs ~0.5 ms of Python per request, those ~30 us); creating bridges and VXLAN
devices and changing FDB entries go through pyroute2, and this is the only module that
imports it. pyroute2's ``IPRoute`` is synchronous and bound to the thread that opened
it, and a netlink socket belongs to the network namespace its thread was in when it was
created; so:

1. :func:`open_netlink_port` starts one worker thread (``threading.Thread``), which first
   records the namespace it was born in (the router's own, ``netns=None``). A port opened
   with ``workers=N`` starts up to N such threads, one more whenever every running one is
   busy and a job waits (the CNI's port: see :class:`NetlinkPort`).
2. Each public coroutine turns its work into a job, hands the job to an idle worker
   through its queue, and waits (shielded: a netlink change is never abandoned half-way)
   for the result, which the worker posts back with ``TrioToken.run_sync_soon``. A
   ``trio.Semaphore`` admits as many jobs at a time as there are workers, in the order
   they asked; each job (a snapshot, a whole ``apply``) runs on one thread from start to end.
3. On the worker, the router's own namespace has one long-lived raw socket and one
   ``IPRoute``. For another namespace the worker enters it with ``setns(2)`` (this thread
   only), opens the socket the job needs there (when first needed) and returns home at
   once; those sockets serve one batch (a snapshot, an ``apply``) and are closed after
   it, so the port never pins a container's namespace alive after the container is gone.
   No socket joins a multicast group (``groups=0``): link events are never queued for a
   reader that does not exist.
4. A TAP device is created in the namespace of the thread that opens ``/dev/net/tun``: the
   worker enters the target namespace around :func:`router.kernel.tap.open_tap`.
5. Every failure becomes :class:`~router.errors.KernelError` with the kernel's errno and
   the operation in words (``add bridge weave mtu 1376: File exists``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import ipaddress
import os
import queue
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar

import outcome
import trio
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from router.errors import BrokenError, ClosedError, KernelError
from router.kernel import rtnl
from router.kernel import tap as tapdev
from router.kernel.port import (
    MTU_MAX,
    AddAddress,
    AddBridge,
    AddFdb,
    Address,
    AddRoute,
    AddVeth,
    AddVxlan,
    DeleteAddress,
    DeleteFdb,
    DeleteLink,
    DeleteRoute,
    FdbEntry,
    KernelStatistics,
    Link,
    NetnsState,
    Op,
    PinMac,
    Route,
    Scope,
    SetDown,
    SetMac,
    SetMaster,
    SetMtu,
    SetUp,
    UnpinMac,
    VxlanDevice,
    is_link_local,
    kernel_error,
)

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2  # routes the kernel derives from addresses: not ours, left out of snapshots
RTN_UNICAST = 1
AF_BRIDGE = 7
NTF_SELF = 0x02  # an FDB entry of the device itself (not the bridge's view of its port)
NTF_MASTER = 0x04  # an FDB entry of the bridge the device is a port of
NUD_NOARP = 0x40  # a bridge FDB entry that is "static" (NUD_PERMANENT would make it local)
NUD_PERMANENT = 0x80  # a "local" bridge entry (the port's own address); VXLAN: an added one
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise KernelError(code, f"setns {what}: {os.strerror(code)}")


class _Rtnl:
    """A raw rtnetlink socket (of the namespace the thread was in when it was made) that
    sends :mod:`router.kernel.rtnl`'s requests and waits for their answers; strict
    (:data:`~router.kernel.rtnl.NETLINK_GET_STRICT_CHK`) where the kernel has it."""

    DUMP_TRIES = 3  # a dump the kernel says changed while read is read again

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        try:
            with suppress(OSError):  # Linux < 4.20: the port filters dumps itself
                self._sock.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_GET_STRICT_CHK, 1)
            self._sock.bind((0, 0))
        except OSError:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def call(self, build: Callable[[int], bytes]) -> list[rtnl.Message]:
        """Send ``build(seq)``; the answer's messages. OSError with the kernel's errno."""
        for _ in range(self.DUMP_TRIES):
            self._seq += 1
            answer = rtnl.Answer(self._seq)
            self._sock.send(build(self._seq))
            try:
                while not answer.feed(self._sock.recv(RECV_BUFFER)):
                    pass
            except rtnl.DecodeError as exc:
                raise OSError(errno.EBADMSG, f"the kernel's answer: {exc}") from None
            if answer.errno:
                raise OSError(answer.errno, os.strerror(answer.errno))
            if not answer.interrupted:
                break
        return answer.messages

    def do(self, build: Callable[[int], bytes]) -> None:
        self.call(build)

    def links(self) -> list[rtnl.LinkInfo]:
        return [_decoded(rtnl.decode_link, m) for m in self.call(rtnl.dump_links)]

    def get_link(self, *, name: str | None = None, index: int = 0) -> rtnl.Message | None:
        """The kernel's message for one link by name or index; None when there is none."""
        try:
            found = self.call(lambda seq: rtnl.get_link(seq, name=name, index=index))
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return found[0] if found else None

    def link(self, *, name: str | None = None, index: int = 0) -> rtnl.LinkInfo | None:
        """One link by name or index; None when there is none."""
        message = self.get_link(name=name, index=index)
        return None if message is None else _decoded(rtnl.decode_link, message)

    def index(self, name: str, op: object) -> int:
        found = self.link(name=name)
        if found is None:
            raise kernel_error(errno.ENODEV, f"{op}: link {name}")
        return found.index


class _Namespace:
    """One namespace's sockets within a batch, each opened when first used (raw for links,
    addresses and routes; pyroute2 for the rest), and the link indexes looked up by name
    (shared by the batch's namespaces until a link is added or deleted anywhere: a veth's
    peer appears in another namespace)."""

    def __init__(self, w: _Worker, netns: str | None,
                 indexes: dict[tuple[str | None, str], int], opened: list[Any]) -> None:
        self._w, self.netns, self._indexes, self._opened = w, netns, indexes, opened
        self._rt: _Rtnl | None = w.rt if netns is None else None
        self._pr: Any = w.home if netns is None else None

    @property
    def rt(self) -> _Rtnl:
        if self._rt is None:
            with self._w.entered(self._required()):
                self._rt = _Rtnl()
            self._opened.append(self._rt)
        return self._rt

    @property
    def pr(self) -> Any:
        if self._pr is None:
            with self._w.entered(self._required()):
                self._pr = IPRoute(groups=0)
            self._opened.append(self._pr)
        return self._pr

    def _required(self) -> str:
        assert self.netns is not None  # home sockets are the worker's own
        return self.netns

    def index(self, name: str, op: object) -> int:
        key = (self.netns, name)
        if key not in self._indexes:
            self._indexes[key] = self.rt.index(name, op)
        return self._indexes[key]

    def links_changed(self) -> None:
        self._indexes.clear()


def _decoded(decode: Callable[[bytes], T], message: rtnl.Message) -> T:
    try:
        return decode(message.payload)
    except rtnl.DecodeError as exc:
        raise OSError(errno.EBADMSG, f"the kernel's answer: {exc}") from None


RECV_BUFFER = 1 << 18  # the kernel fills at most ~32 KiB of dump per datagram


class _Worker:
    """State owned by the worker thread: its home namespace and its home IPRoute."""

    def __init__(self) -> None:
        self.home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.home = IPRoute(groups=0)
        self.rt = _Rtnl()  # home, raw: links, addresses, routes
        self.broken = ""  # why this thread can no longer be trusted to be at home

    def check(self) -> _Worker:
        """``self``, unless a failed return home left the thread in a foreign namespace."""
        if self.broken:
            raise BrokenError(self.broken)
        return self

    def close(self) -> None:
        self.home.close()
        self.rt.close()
        os.close(self.home_fd)

    @contextmanager
    def entered(self, netns: str) -> Iterator[None]:
        """Run the body with this thread in ``netns``; always come back home."""
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise kernel_error(exc.errno or errno.ENOENT, f"namespace {netns}") from None
        try:
            _setns(fd, netns)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            try:
                _setns(self.home_fd, "back home")
            except KernelError as exc:  # the thread would act in the wrong namespace
                self.broken = f"netlink worker cannot return to its namespace: {exc}"
                raise BrokenError(self.broken) from exc

    @contextmanager
    def namespaces(self) -> Iterator[Callable[[str | None], _Namespace]]:
        """A function netns -> :class:`_Namespace`; sockets opened in other namespaces
        close at the end, and link indexes are shared."""
        opened: list[Any] = []
        indexes: dict[tuple[str | None, str], int] = {}
        spaces: dict[str | None, _Namespace] = {}

        def space(netns: str | None) -> _Namespace:
            if netns not in spaces:
                spaces[netns] = _Namespace(self, netns, indexes, opened)
            return spaces[netns]

        try:
            yield space
        finally:
            for sock in opened:
                sock.close()

    def open_tap(self, name: str, netns: str | None) -> tapdev.Tap:
        if netns is None:
            return tapdev.Tap(name, tapdev.open_tap(name))
        with self.entered(netns):
            return tapdev.Tap(name, tapdev.open_tap(name))


# --- reading state ------------------------------------------------------------------------


def _snapshot(rt: _Rtnl, netns: str | None, only: Sequence[str] | None = None) -> NetnsState:
    """The whole namespace, or (``only``) those links that exist and their addresses, no
    routes: a few ``get`` requests instead of dumps of every link, address and route,
    which on a host with hundreds of veths (each with its IPv6 link-local address and
    routes) take longer than plumbing one. On a strict socket the kernel sends one link's
    addresses only; elsewhere the others are dropped here."""
    if only is None:
        raw = rt.links()
    else:
        raw = [li for name in dict.fromkeys(only) if (li := rt.link(name=name)) is not None]
    names = {li.index: li.name for li in raw}
    masters = dict(names)
    for li in raw:  # a bridge that was not asked for still names its ports' master
        if li.master and li.master not in masters and (m := rt.link(index=li.master)):
            masters[li.master] = m.name
    links = tuple(Link(index=li.index, name=li.name, kind=li.kind, mac=li.mac, mtu=li.mtu,
                       up=li.up, master=masters.get(li.master) if li.master else None)
                  for li in raw)
    if only is None:
        raw_addresses = rt.call(rtnl.dump_addresses)
    else:
        raw_addresses = [m for index in names for m in rt.call(
            functools.partial(rtnl.dump_addresses, index=index))]
    addresses = tuple(
        Address(names[a.index], a.cidr) for m in raw_addresses
        if (a := _decoded(rtnl.decode_address, m)) is not None and a.index in names
        and not is_link_local(a.cidr))
    routes = () if only is not None else tuple(
        Route(dst=r.dst, ifname=names.get(r.oif) if r.oif else None, gateway=r.gateway,
              scope=_scope(r.scope))
        for m in rt.call(rtnl.dump_routes) if (r := _decoded(rtnl.decode_route, m)) is not None
        and r.table == RT_TABLE_MAIN and r.protocol != RTPROT_KERNEL and r.type == RTN_UNICAST)
    return NetnsState(netns=netns, links=links, addresses=addresses, routes=routes)


def _scope(value: int) -> Scope:
    try:
        return Scope(value)
    except ValueError:  # site (200) and user-defined scopes: not ones we use
        return Scope.UNIVERSE


# --- changing state -------------------------------------------------------------------------


def _add_bridge(w: _Worker, ns: _Namespace, op: AddBridge) -> None:
    # A bridge follows its ports' smallest MTU unless its MTU was *changed* by hand; creating
    # it one byte off and then setting the real value pins it (no-op sets do not count).
    first = op.mtu + 1 if op.mtu < MTU_MAX else op.mtu - 1
    extra = {"address": op.mac} if op.mac is not None else {}
    ns.pr.link("add", ifname=op.name, kind="bridge", mtu=first, br_stp_state=0,
               br_mcast_snooping=0, **extra)
    ns.links_changed()
    index = ns.index(op.name, op)
    ns.rt.do(lambda seq: rtnl.set_link(seq, index, mtu=op.mtu))


def _add_veth(w: _Worker, ns: _Namespace, op: AddVeth) -> None:
    def add(fd: int | None) -> None:
        ns.rt.do(lambda seq: rtnl.new_veth(seq, op.name, op.mtu, peer=op.peer,
                                           peer_mtu=op.mtu, peer_mac=op.peer_mac,
                                           peer_netns_fd=fd))
        ns.links_changed()

    if op.peer_netns == op.netns:
        add(None)
        return
    if op.peer_netns is None:
        add(w.home_fd)
        return
    try:
        fd = os.open(op.peer_netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise kernel_error(exc.errno or errno.ENOENT, f"{op}: namespace {op.peer_netns}") \
            from None
    try:
        add(fd)
    finally:
        os.close(fd)


def _delete_link(w: _Worker, ns: _Namespace, op: DeleteLink) -> None:
    index = ns.index(op.name, op)
    ns.rt.do(lambda seq: rtnl.del_link(seq, index))
    ns.links_changed()


def _set_link(fields: Callable[[Any], dict[str, Any]]) -> _Handler:
    """``ip link set``: ``fields(op)`` are :func:`router.kernel.rtnl.set_link`'s keywords."""
    def handler(w: _Worker, ns: _Namespace, op: SetUp | SetDown | SetMtu | SetMac) -> None:
        index = ns.index(op.name, op)
        ns.rt.do(lambda seq: rtnl.set_link(seq, index, **fields(op)))
    return handler


def _set_master(w: _Worker, ns: _Namespace, op: SetMaster) -> None:
    master = 0 if op.master is None else ns.index(op.master, op)
    index = ns.index(op.name, op)
    ns.rt.do(lambda seq: rtnl.set_link(seq, index, master=master))


def _address_op(add: bool) -> _Handler:
    def handler(w: _Worker, ns: _Namespace, op: AddAddress | DeleteAddress) -> None:
        index = ns.index(op.ifname, op)
        ns.rt.do(lambda seq: rtnl.change_address(seq, add=add, index=index, cidr=op.cidr))
    return handler


def _route_op(add: bool) -> _Handler:
    def handler(w: _Worker, ns: _Namespace, op: AddRoute | DeleteRoute) -> None:
        route = op.route
        oif = None if route.ifname is None else ns.index(route.ifname, op)
        ns.rt.do(lambda seq: rtnl.change_route(seq, add=add, dst=route.dst,
                                               scope=int(route.scope), oif=oif,
                                               gateway=route.gateway))
    return handler


_Handler = Callable[[_Worker, _Namespace, Any], None]


def _add_vxlan(w: _Worker, ns: _Namespace, op: AddVxlan) -> None:
    ns.pr.link("add", ifname=op.name, kind="vxlan", vxlan_id=op.vni, vxlan_port=op.port,
             vxlan_local=str(op.local), vxlan_learning=int(op.learning), mtu=op.mtu)
    ns.links_changed()


def _fdb(verb: str) -> _Handler:
    # "append" adds a remote beside the others for the flood MAC; a unicast MAC takes "add"
    # (exclusive). Flags are explicit: pyroute2 would otherwise aim some verbs at the bridge.
    # Only VXLAN devices: the kernel would put a unicast MAC on another device's address
    # list, and refuses the flood MAC there with EINVAL.
    def handler(w: _Worker, ns: _Namespace, op: AddFdb | DeleteFdb) -> None:
        index = ns.index(op.ifname, op)
        link = ns.rt.link(index=index)  # the kernel would take some on other devices
        if link is None or link.kind != "vxlan":
            raise kernel_error(errno.EOPNOTSUPP, f"{op}: not a VXLAN device")
        kind = verb if verb == "del" or not op.entry.flood else "append"
        ns.pr.fdb(kind, ifindex=index, lladdr=op.entry.mac, dst=str(op.entry.dst),
                flags=NTF_SELF)
    return handler


def _pin(verb: str) -> _Handler:
    # Not ipr.fdb(): it would make the entry NUD_PERMANENT, a "local" entry that the bridge
    # delivers to the host instead of forwarding to the port.
    # Only on a bridge port (the kernel says EOPNOTSUPP or EINVAL, by kind of device).
    # A pin is a replace (``bridge fdb replace``), not an add: the bridge keeps one entry
    # per MAC, and one it learned (a peer's heartbeat that arrived before we pinned its
    # MAC) would make an add fail with EEXIST on every pass.
    def handler(w: _Worker, ns: _Namespace, op: PinMac | UnpinMac) -> None:
        index = ns.index(op.ifname, op)
        link = ns.rt.link(index=index)
        if link is None or not link.master:
            raise kernel_error(errno.EOPNOTSUPP, f"{op}: not a bridge port")
        ns.pr.neigh(verb, ifindex=index, lladdr=op.mac,
                  family=AF_BRIDGE, flags=NTF_MASTER, state=NUD_NOARP)
    return handler
_HANDLERS: dict[type, _Handler] = {
    AddBridge: _add_bridge,
    AddVeth: _add_veth,
    DeleteLink: _delete_link,
    SetUp: _set_link(lambda op: {"up": True}),
    SetDown: _set_link(lambda op: {"up": False}),
    SetMtu: _set_link(lambda op: {"mtu": op.mtu}),
    SetMac: _set_link(lambda op: {"mac": op.mac}),
    SetMaster: _set_master,
    AddAddress: _address_op(add=True),
    DeleteAddress: _address_op(add=False),
    AddRoute: _route_op(add=True),
    DeleteRoute: _route_op(add=False),
    AddVxlan: _add_vxlan,
    AddFdb: _fdb("add"),
    DeleteFdb: _fdb("del"),
    PinMac: _pin("replace"),
    UnpinMac: _pin("del"),
}


def _apply(w: _Worker, ops: Sequence[Op]) -> tuple[int, KernelError | None]:
    """Run ops in order on the worker; (how many succeeded, the error that stopped us)."""
    done = 0
    with w.namespaces() as space:
        for op in ops:
            try:
                _HANDLERS[type(op)](w, space(op.netns), op)
            except NetlinkError as exc:
                return done, kernel_error(exc.code, str(op))
            except KernelError as exc:
                return done, exc
            except OSError as exc:
                return done, kernel_error(exc.errno or errno.EIO, str(op))
            done += 1
    return done, None


def _take_snapshot(w: _Worker, netns: str | None,
                   only: Sequence[str] | None = None) -> NetnsState:
    try:
        with w.namespaces() as space:
            return _snapshot(space(netns).rt, netns, only)
    except OSError as exc:
        raise kernel_error(exc.errno or errno.EIO,
                           f"snapshot{'' if netns is None else ' of ' + netns}") from None


def _vxlan(rt: _Rtnl, name: str) -> VxlanDevice | None:
    message = rt.get_link(name=name)
    if message is None:
        return None
    found = _decoded(rtnl.decode_link, message)
    data = _decoded(rtnl.decode_vxlan, message)
    if data is None:
        raise kernel_error(errno.EOPNOTSUPP, f"link {name} is a {found.kind or 'device'}, "
                           "not a VXLAN device")
    master = rt.link(index=found.master) if found.master else None
    link = Link(index=found.index, name=found.name, kind=found.kind, mac=found.mac,
                mtu=found.mtu, up=found.up, master=master.name if master else None)
    entries = list(_fdb_entries(rt, link.index))  # only a VXLAN device's
    return VxlanDevice(
        link=link, vni=data.vni, port=data.port, local=data.local, learning=data.learning,
        remote=data.group,
        fdb=frozenset(e for e, static in entries if static),
        learned=frozenset(e for e, static in entries if not static),
    )


def _port_fdb(rt: _Rtnl, index: int) -> list[rtnl.NeighbourInfo]:
    """The FDB entries of device ``index``: its own (a VXLAN device's) and its bridge's for
    it as a port. On a strict socket the kernel sends only those (1.4 ms against 173 ms
    for a port's 5 entries beside 2,000 others, read through pyroute2); elsewhere the
    others are dropped here."""
    entries = [_decoded(rtnl.decode_neighbour, m)
               for m in rt.call(functools.partial(rtnl.dump_fdb, index=index))]
    return [e for e in entries if e.index == index]


def _fdb_entries(rt: _Rtnl, index: int) -> Iterator[tuple[FdbEntry, bool]]:
    """The device's own IPv4 entries, each with True if it was added (NUD_PERMANENT or
    NUD_NOARP) rather than learned from a received frame (NUD_REACHABLE, NUD_STALE)."""
    for entry in _port_fdb(rt, index):
        if entry.flags & NTF_SELF and isinstance(entry.dst, ipaddress.IPv4Address):
            yield (FdbEntry(entry.mac, entry.dst),
                   bool(entry.state & (NUD_PERMANENT | NUD_NOARP)))


def _read_pins(w: _Worker, ifname: str, netns: str | None) -> frozenset[str]:
    try:
        with w.namespaces() as space:
            rt = space(netns).rt
            index = rt.index(ifname, f"pinned macs of {ifname}")
            return frozenset(e.mac for e in _port_fdb(rt, index)
                             if e.state == NUD_NOARP and e.master)
    except OSError as exc:
        raise kernel_error(exc.errno or errno.EIO, f"pinned macs of {ifname}") from None


def _forget_learned(w: _Worker, ifname: str, netns: str | None) -> int:
    try:
        with w.namespaces() as space:
            ns = space(netns)
            index = ns.rt.index(ifname, f"learned macs of {ifname}")
            learned = [e.mac for e in _port_fdb(ns.rt, index)
                       if e.master and not e.state & (NUD_NOARP | NUD_PERMANENT)]
            for mac in learned:
                try:
                    ns.pr.neigh("del", ifindex=index, lladdr=mac, family=AF_BRIDGE,
                                flags=NTF_MASTER)
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:  # it aged out meanwhile
                        raise
            return len(learned)
    except NetlinkError as exc:
        raise kernel_error(exc.code, f"learned macs of {ifname}") from None
    except OSError as exc:
        raise kernel_error(exc.errno or errno.EIO, f"learned macs of {ifname}") from None


def _read_vxlan(w: _Worker, name: str, netns: str | None) -> VxlanDevice | None:
    try:
        with w.namespaces() as space:
            return _vxlan(space(netns).rt, name)
    except OSError as exc:
        where = "" if netns is None else f" in {netns}"
        raise kernel_error(exc.errno or errno.EIO, f"read vxlan {name}{where}") from None


class _Slot:
    """One worker thread, its job queue and (once started there) its :class:`_Worker`."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.worker: _Worker | None = None
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        while (job := self.jobs.get()) is not None:
            job()
        if self.worker is not None:
            self.worker.close()

    def current(self) -> _Worker:
        """This slot's worker (on its thread), born in the namespace the thread starts in
        (the router's own) by the first job."""
        if self.worker is None:
            self.worker = _Worker()
        return self.worker


class NetlinkPort:
    """:class:`router.kernel.port.KernelPort` on the real kernel. Use :func:`open_netlink_port`.

    ``workers``: how many jobs may run at once, each on a thread (and sockets) of its own,
    started when first needed. With one (the router's port) jobs run one after the other
    in the order they were asked for; with more (the CNI's port) a job that waits on the
    kernel (a veth's deletion waits out an RCU grace period, ~16 ms) does not hold up the
    others, as separate plugin processes would not."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._workers = workers
        self._slots: list[_Slot] = []
        self._idle: list[_Slot] = []
        self._available = trio.Semaphore(workers)  # FIFO: jobs start in the order asked
        self._closed = False
        self._stats = KernelStatistics()

    async def _start(self) -> None:
        await self._run(lambda w: None)  # the first worker, in the caller's namespace

    async def _run(self, fn: Callable[[_Worker], T]) -> T:
        """``fn(worker)`` on an idle worker thread (its worker checked still at home)."""
        if self._closed:
            raise ClosedError("netlink port is closed")
        async with self._available:
            if self._closed:
                raise ClosedError("netlink port is closed")
            slot = self._idle.pop() if self._idle else self._new_slot()
            try:
                send, receive = trio.open_memory_channel[outcome.Outcome[T]](1)
                token = trio.lowlevel.current_trio_token()

                def job() -> None:
                    result = outcome.capture(lambda: fn(slot.current().check()))
                    with suppress(trio.RunFinishedError):
                        token.run_sync_soon(send.send_nowait, result)

                slot.jobs.put(job)
                with trio.CancelScope(shield=True):
                    result = await receive.receive()
            finally:
                self._idle.append(slot)
        return result.unwrap()

    def _new_slot(self) -> _Slot:
        slot = _Slot("netlink" if not self._slots else f"netlink-{len(self._slots)}")
        self._slots.append(slot)
        slot.thread.start()
        return slot

    async def snapshot(self, netns: str | None = None, *,
                       links: Sequence[str] | None = None) -> NetnsState:
        """See :meth:`router.kernel.port.KernelPort.snapshot`."""
        only = None if links is None else tuple(links)
        state = await self._run(lambda w: _take_snapshot(w, netns, only))
        self._bump(snapshots=1)
        return state

    async def apply(self, ops: Sequence[Op]) -> None:
        """See :meth:`router.kernel.port.KernelPort.apply`."""
        ops = tuple(ops)
        if not ops:
            return
        done, error = await self._run(lambda w: _apply(w, ops))
        self._bump(ops_applied=done, ops_failed=0 if error is None else 1)
        if error is not None:
            raise error

    async def vxlan(self, name: str, *, netns: str | None = None) -> VxlanDevice | None:
        """See :meth:`router.kernel.port.OverlayPort.vxlan`."""
        device = await self._run(lambda w: _read_vxlan(w, name, netns))
        self._bump(snapshots=1)
        return device

    async def pinned_macs(self, ifname: str, *, netns: str | None = None) -> frozenset[str]:
        """See :meth:`router.kernel.port.OverlayPort.pinned_macs`."""
        macs = await self._run(lambda w: _read_pins(w, ifname, netns))
        self._bump(snapshots=1)
        return macs

    async def forget_learned(self, ifname: str, *, netns: str | None = None) -> int:
        """See :meth:`router.kernel.port.OverlayPort.forget_learned`."""
        count = await self._run(lambda w: _forget_learned(w, ifname, netns))
        self._bump(snapshots=1)
        return count

    async def open_tap(self, name: str, *, netns: str | None = None) -> tapdev.Tap:
        """See :meth:`router.kernel.port.KernelPort.open_tap`."""
        device = await self._run(lambda w: w.open_tap(name, netns))
        self._bump(taps_opened=1)
        return device

    def statistics(self) -> KernelStatistics:
        """Counters since the port opened."""
        return self._stats

    def _bump(self, **deltas: int) -> None:
        current = self._stats
        self._stats = KernelStatistics(**{
            key: getattr(current, key) + deltas.get(key, 0)
            for key in ("snapshots", "ops_applied", "ops_failed", "taps_opened")
        })

    async def aclose(self) -> None:
        """Stop the workers (closing their netlink sockets) once the jobs in flight and
        those already waiting are done. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in range(self._workers):  # every slot idle: no job is running
            await self._available.acquire()
        for slot in self._slots:
            slot.jobs.put(None)
        for slot in self._slots:
            await trio.to_thread.run_sync(slot.thread.join)
        for _ in range(self._workers):  # whoever still waits is told the port is closed
            self._available.release()

@asynccontextmanager
async def open_netlink_port(workers: int = 1) -> AsyncIterator[NetlinkPort]:
    """A running :class:`NetlinkPort` (with up to ``workers`` threads), closed on exit."""
    port = NetlinkPort(workers)
    try:
        await port._start()
        yield port
    finally:
        with trio.CancelScope(shield=True):
            await port.aclose()
