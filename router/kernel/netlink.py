"""The kernel port over pyroute2: every netlink call on a worker thread this port owns.

The only module that imports pyroute2. pyroute2's ``IPRoute`` is synchronous and bound to
the thread that opened it, and a netlink socket belongs to the network namespace its
thread was in when it was created; so:

1. :func:`open_netlink_port` starts one worker thread (``threading.Thread``), which first
   records the namespace it was born in (the router's own, ``netns=None``). A port opened
   with ``workers=N`` starts up to N such threads, one more whenever every running one is
   busy and a job waits (the CNI's port: see :class:`NetlinkPort`).
2. Each public coroutine turns its work into a job, hands the job to an idle worker
   through its queue, and waits (shielded: a netlink change is never abandoned half-way)
   for the result, which the worker posts back with ``TrioToken.run_sync_soon``. A
   ``trio.Semaphore`` admits as many jobs at a time as there are workers, in the order
   they asked; each job (a snapshot, a whole ``apply``) runs on one thread from start to end.
3. On the worker, the router's own namespace has one long-lived ``IPRoute``. For another
   namespace the worker enters it with ``setns(2)`` (this thread only), opens an
   ``IPRoute`` there and returns home at once; that socket serves one batch (a snapshot, an
   ``apply``) and is closed after it, so the port never pins a container's namespace
   alive after the container is gone. No socket joins a multicast group (``groups=0``):
   link events are never queued for a reader that does not exist.
4. A TAP device is created in the namespace of the thread that opens ``/dev/net/tun``: the
   worker enters the target namespace around :func:`router.kernel.tap.open_tap`.
5. Every failure becomes :class:`~router.errors.KernelError` with the kernel's errno and
   the operation in words (``add bridge weave mtu 1376: File exists``).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar

import outcome
import trio
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from router.errors import BrokenError, ClosedError, KernelError
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
IFF_UP = 0x1
NTF_SELF = 0x02  # an FDB entry of the device itself (not the bridge's view of its port)
NTF_MASTER = 0x04  # an FDB entry of the bridge the device is a port of
NUD_NOARP = 0x40  # a bridge FDB entry that is "static" (NUD_PERMANENT would make it local)
NUD_PERMANENT = 0x80  # a "local" bridge entry (the port's own address); VXLAN: an added one
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise KernelError(code, f"setns {what}: {os.strerror(code)}")


class _Worker:
    """State owned by the worker thread: its home namespace and its home IPRoute."""

    def __init__(self) -> None:
        self.home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.home = IPRoute(groups=0)
        self.strict = _strict_socket()  # home too: for dumps the kernel filters, else None
        self.broken = ""  # why this thread can no longer be trusted to be at home

    def check(self) -> _Worker:
        """``self``, unless a failed return home left the thread in a foreign namespace."""
        if self.broken:
            raise BrokenError(self.broken)
        return self

    def close(self) -> None:
        self.home.close()
        if self.strict is not None:
            self.strict.close()
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
    def batch(self) -> Iterator[Callable[[str | None], Any]]:
        """A function netns -> IPRoute; sockets for other namespaces close at the end."""
        opened: dict[str, Any] = {}

        def ipr(netns: str | None) -> Any:
            if netns is None:
                return self.home
            if netns not in opened:
                with self.entered(netns):
                    opened[netns] = IPRoute(groups=0)
            return opened[netns]

        try:
            yield ipr
        finally:
            for sock in opened.values():
                sock.close()

    @contextmanager
    def strict_in(self, netns: str | None) -> Iterator[Any]:
        """A strict socket (:func:`_strict_socket`) in ``netns`` for the body (the home one,
        or one opened there and closed after), or None where there is none."""
        if netns is None:
            yield self.strict
            return
        with self.entered(netns):
            sock = _strict_socket()
        try:
            yield sock
        finally:
            if sock is not None:
                sock.close()

    def open_tap(self, name: str, netns: str | None) -> tapdev.Tap:
        if netns is None:
            return tapdev.Tap(name, tapdev.open_tap(name))
        with self.entered(netns):
            return tapdev.Tap(name, tapdev.open_tap(name))


def _strict_socket() -> Any:
    """An ``IPRoute`` with ``NETLINK_GET_STRICT_CHK`` (Linux 4.20+), on which the kernel
    filters an address dump, and a bridge FDB dump, by the header's interface index; None
    where it cannot."""
    try:
        return IPRoute(groups=0, strict_check=True)
    except (OSError, NetlinkError):
        return None


# --- reading state ------------------------------------------------------------------------


def _snapshot(ipr: Any, netns: str | None, only: Sequence[str] | None = None,
              strict: Any = None) -> NetnsState:
    """The whole namespace, or (``only``) those links that exist and their addresses, no
    routes: a few ``get`` requests instead of dumps of every link, address and route,
    which on a host with hundreds of veths (each with its IPv6 link-local address and
    routes) take longer than plumbing one. ``strict``: a socket of the same namespace on
    which the kernel dumps one link's addresses only (:func:`_strict_socket`)."""
    names: dict[int, str] = {}
    if only is None:
        raw_links = list(ipr.link("dump"))
    else:
        raw_links = [msg for name in dict.fromkeys(only) for msg in _get_link(ipr, name=name)]
    for msg in raw_links:
        names[msg["index"]] = msg.get_attr("IFLA_IFNAME")
    masters = dict(names)
    for msg in raw_links:  # a bridge that was not asked for still names its ports' master
        master = msg.get_attr("IFLA_MASTER")
        if master and master not in masters:
            for found in _get_link(ipr, index=master):
                masters[master] = found.get_attr("IFLA_IFNAME")
    links = tuple(_link(msg, masters) for msg in raw_links)
    if only is not None and strict is not None:  # dump_filter=None: the kernel's filter only
        raw_addresses = [m for i in names for m in strict.addr("dump", index=i, dump_filter=None)]
    else:
        raw_addresses = list(ipr.addr("dump"))
    addresses = tuple(a for msg in raw_addresses if (a := _address(msg, names)) is not None)
    routes = () if only is not None else tuple(
        r for msg in ipr.route("dump") if (r := _route(msg, names)) is not None)
    return NetnsState(netns=netns, links=links, addresses=addresses, routes=routes)


def _get_link(ipr: Any, **which: Any) -> list[Any]:
    """The link by ``name=`` or ``index=``; empty when there is none."""
    try:
        return list(ipr.link("get", **{("ifname" if k == "name" else k): v
                                        for k, v in which.items()}))
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return []
        raise


def _link(msg: Any, names: dict[int, str]) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
    master = msg.get_attr("IFLA_MASTER")
    return Link(
        index=msg["index"], name=msg.get_attr("IFLA_IFNAME"), kind=kind,
        mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(), mtu=msg.get_attr("IFLA_MTU"),
        up=bool(msg["flags"] & IFF_UP), master=names.get(master) if master else None,
    )


def _address(msg: Any, names: dict[int, str]) -> Address | None:
    ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if ip is None or msg["index"] not in names:
        return None
    cidr = ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}")
    return None if is_link_local(cidr) else Address(names[msg["index"]], cidr)


def _route(msg: Any, names: dict[int, str]) -> Route | None:
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    if table != RT_TABLE_MAIN or msg["proto"] == RTPROT_KERNEL or msg["type"] != RTN_UNICAST:
        return None
    dst = msg.get_attr("RTA_DST") or ("::" if msg["family"] == 10 else "0.0.0.0")
    gateway = msg.get_attr("RTA_GATEWAY")
    oif = msg.get_attr("RTA_OIF")
    return Route(
        dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}"),
        ifname=names.get(oif) if oif else None,
        gateway=ipaddress.ip_address(gateway) if gateway else None,
        scope=_scope(msg["scope"]),
    )


def _scope(value: int) -> Scope:
    try:
        return Scope(value)
    except ValueError:  # site (200) and user-defined scopes: not ones we use
        return Scope.UNIVERSE


# --- changing state -------------------------------------------------------------------------


def _index(ipr: Any, name: str, op: object) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise kernel_error(errno.ENODEV, f"{op}: link {name}")
    return int(found[0])


def _add_bridge(w: _Worker, ipr: Any, op: AddBridge) -> None:
    # A bridge follows its ports' smallest MTU unless its MTU was *changed* by hand; creating
    # it one byte off and then setting the real value pins it (no-op sets do not count).
    first = op.mtu + 1 if op.mtu < MTU_MAX else op.mtu - 1
    extra = {"address": op.mac} if op.mac is not None else {}
    ipr.link("add", ifname=op.name, kind="bridge", mtu=first, br_stp_state=0,
             br_mcast_snooping=0, **extra)
    ipr.link("set", index=_index(ipr, op.name, op), mtu=op.mtu)


def _add_veth(w: _Worker, ipr: Any, op: AddVeth) -> None:
    peer: dict[str, Any] = {"ifname": op.peer, "mtu": op.mtu}
    if op.peer_mac is not None:
        peer["address"] = op.peer_mac
    if op.peer_netns == op.netns:
        ipr.link("add", ifname=op.name, kind="veth", mtu=op.mtu, peer=peer)
        return
    if op.peer_netns is None:
        peer["net_ns_fd"] = w.home_fd
        ipr.link("add", ifname=op.name, kind="veth", mtu=op.mtu, peer=peer)
        return
    try:
        fd = os.open(op.peer_netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise kernel_error(exc.errno or errno.ENOENT, f"{op}: namespace {op.peer_netns}") \
            from None
    try:
        peer["net_ns_fd"] = fd
        ipr.link("add", ifname=op.name, kind="veth", mtu=op.mtu, peer=peer)
    finally:
        os.close(fd)


def _set_master(w: _Worker, ipr: Any, op: SetMaster) -> None:
    master = 0 if op.master is None else _index(ipr, op.master, op)
    ipr.link("set", index=_index(ipr, op.name, op), master=master)


def _route_args(ipr: Any, route: Route, op: Op) -> dict[str, Any]:
    args: dict[str, Any] = {"dst": str(route.dst), "table": RT_TABLE_MAIN,
                            "scope": int(route.scope)}
    if route.ifname is not None:
        args["oif"] = _index(ipr, route.ifname, op)
    if route.gateway is not None:
        args["gateway"] = str(route.gateway)
    return args


def _addr_args(ipr: Any, op: AddAddress | DeleteAddress) -> dict[str, Any]:
    return {"index": _index(ipr, op.ifname, op), "address": str(op.cidr.ip),
            "prefixlen": op.cidr.network.prefixlen}


_Handler = Callable[[_Worker, Any, Any], None]


def _add_vxlan(w: _Worker, ipr: Any, op: AddVxlan) -> None:
    ipr.link("add", ifname=op.name, kind="vxlan", vxlan_id=op.vni, vxlan_port=op.port,
             vxlan_local=str(op.local), vxlan_learning=int(op.learning), mtu=op.mtu)


def _fdb(verb: str) -> _Handler:
    # "append" adds a remote beside the others for the flood MAC; a unicast MAC takes "add"
    # (exclusive). Flags are explicit: pyroute2 would otherwise aim some verbs at the bridge.
    # Only VXLAN devices: the kernel would put a unicast MAC on another device's address
    # list, and refuses the flood MAC there with EINVAL.
    def handler(w: _Worker, ipr: Any, op: AddFdb | DeleteFdb) -> None:
        index = _index(ipr, op.ifname, op)
        [msg] = ipr.link("get", index=index)  # the kernel would take some on other devices
        if _link(msg, {}).kind != "vxlan":
            raise kernel_error(errno.EOPNOTSUPP, f"{op}: not a VXLAN device")
        kind = verb if verb == "del" or not op.entry.flood else "append"
        ipr.fdb(kind, ifindex=index, lladdr=op.entry.mac, dst=str(op.entry.dst),
                flags=NTF_SELF)
    return handler


def _pin(verb: str) -> _Handler:
    # Not ipr.fdb(): it would make the entry NUD_PERMANENT, a "local" entry that the bridge
    # delivers to the host instead of forwarding to the port.
    # Only on a bridge port (the kernel says EOPNOTSUPP or EINVAL, by kind of device).
    # A pin is a replace (``bridge fdb replace``), not an add: the bridge keeps one entry
    # per MAC, and one it learned (a peer's heartbeat that arrived before we pinned its
    # MAC) would make an add fail with EEXIST on every pass.
    def handler(w: _Worker, ipr: Any, op: PinMac | UnpinMac) -> None:
        index = _index(ipr, op.ifname, op)
        if not ipr.link("get", index=index)[0].get_attr("IFLA_MASTER"):
            raise kernel_error(errno.EOPNOTSUPP, f"{op}: not a bridge port")
        ipr.neigh(verb, ifindex=index, lladdr=op.mac,
                  family=AF_BRIDGE, flags=NTF_MASTER, state=NUD_NOARP)
    return handler
_HANDLERS: dict[type, _Handler] = {
    AddBridge: _add_bridge,
    AddVeth: _add_veth,
    DeleteLink: lambda w, ipr, op: ipr.link("del", index=_index(ipr, op.name, op)),
    SetUp: lambda w, ipr, op: ipr.link("set", index=_index(ipr, op.name, op), state="up"),
    SetDown: lambda w, ipr, op: ipr.link("set", index=_index(ipr, op.name, op), state="down"),
    SetMtu: lambda w, ipr, op: ipr.link("set", index=_index(ipr, op.name, op), mtu=op.mtu),
    SetMac: lambda w, ipr, op: ipr.link("set", index=_index(ipr, op.name, op), address=op.mac),
    SetMaster: _set_master,
    AddAddress: lambda w, ipr, op: ipr.addr("add", **_addr_args(ipr, op)),
    DeleteAddress: lambda w, ipr, op: ipr.addr("del", **_addr_args(ipr, op)),
    AddRoute: lambda w, ipr, op: ipr.route("add", **_route_args(ipr, op.route, op)),
    DeleteRoute: lambda w, ipr, op: ipr.route("del", **_route_args(ipr, op.route, op)),
    AddVxlan: _add_vxlan,
    AddFdb: _fdb("add"),
    DeleteFdb: _fdb("del"),
    PinMac: _pin("replace"),
    UnpinMac: _pin("del"),
}


class _Indexed:
    """An ``IPRoute`` of one batch whose ``link_lookup(ifname=)`` answers are remembered
    (shared by the batch's sockets) until a link is added or deleted in any namespace:
    a plan names the same few links op after op."""

    def __init__(self, ipr: Any, netns: str | None, indexes: dict[Any, list[int]]) -> None:
        self._ipr, self._netns, self._indexes = ipr, netns, indexes

    def link_lookup(self, *, ifname: str) -> list[int]:
        key = (self._netns, ifname)
        if key not in self._indexes:
            self._indexes[key] = list(self._ipr.link_lookup(ifname=ifname))
        return self._indexes[key]

    def link(self, command: str, **kwargs: Any) -> Any:
        if command in ("add", "del"):  # a veth's peer appears in another namespace
            self._indexes.clear()
        return self._ipr.link(command, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ipr, name)


def _apply(w: _Worker, ops: Sequence[Op]) -> tuple[int, KernelError | None]:
    """Run ops in order on the worker; (how many succeeded, the error that stopped us)."""
    done = 0
    indexes: dict[Any, list[int]] = {}
    with w.batch() as ipr:
        for op in ops:
            try:
                _HANDLERS[type(op)](w, _Indexed(ipr(op.netns), op.netns, indexes), op)
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
        with w.batch() as ipr:
            return _snapshot(ipr(netns), netns, only, w.strict if netns is None else None)
    except NetlinkError as exc:
        raise kernel_error(exc.code, f"snapshot{'' if netns is None else ' of ' + netns}") \
            from None


def _vxlan(ipr: Any, name: str, strict: Any = None) -> VxlanDevice | None:
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    [msg] = ipr.link("get", index=found[0])
    names = {int(found[0]): name}
    master = msg.get_attr("IFLA_MASTER")
    if master:
        names[master] = ipr.link("get", index=master)[0].get_attr("IFLA_IFNAME")
    link = _link(msg, names)
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if link.kind != "vxlan" or data is None:
        raise kernel_error(errno.EOPNOTSUPP, f"link {name} is a {link.kind or 'device'}, "
                           "not a VXLAN device")
    entries = list(_fdb_entries(ipr, link.index, strict))  # only a VXLAN device's
    local, group = data.get_attr("IFLA_VXLAN_LOCAL"), data.get_attr("IFLA_VXLAN_GROUP")
    return VxlanDevice(
        link=link, vni=data.get_attr("IFLA_VXLAN_ID"), port=data.get_attr("IFLA_VXLAN_PORT"),
        local=ipaddress.IPv4Address(local) if local else None,
        learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
        remote=ipaddress.IPv4Address(group) if group else None,
        fdb=frozenset(e for e, static in entries if static),
        learned=frozenset(e for e, static in entries if not static),
    )


def _port_fdb(ipr: Any, strict: Any, index: int) -> list[Any]:
    """The FDB entries of device ``index``: its own (a VXLAN device's) and its bridge's for
    it as a port. On a strict socket the kernel sends only those; otherwise pyroute2 reads
    and decodes every entry of the namespace and drops the others (173 ms against 1.4 ms
    for a port's 5 entries beside 2,000 others)."""
    if strict is not None:
        return list(strict.fdb("dump", ifindex=index, dump_filter=None))
    return list(ipr.fdb("dump", ifindex=index))


def _fdb_entries(ipr: Any, index: int, strict: Any = None) -> Iterator[tuple[FdbEntry, bool]]:
    """The device's own IPv4 entries, each with True if it was added (NUD_PERMANENT or
    NUD_NOARP) rather than learned from a received frame (NUD_REACHABLE, NUD_STALE)."""
    for msg in _port_fdb(ipr, strict, index):
        dst = msg.get_attr("NDA_DST")
        if msg["ifindex"] == index and msg["flags"] & NTF_SELF and dst and ":" not in dst:
            entry = FdbEntry(msg.get_attr("NDA_LLADDR").lower(), ipaddress.IPv4Address(dst))
            yield entry, bool(msg["state"] & (NUD_PERMANENT | NUD_NOARP))


def _read_pins(w: _Worker, ifname: str, netns: str | None) -> frozenset[str]:
    try:
        with w.batch() as ipr, w.strict_in(netns) as strict:
            sock = ipr(netns)
            index = _index(sock, ifname, f"pinned macs of {ifname}")
            return frozenset(
                msg.get_attr("NDA_LLADDR").lower() for msg in _port_fdb(sock, strict, index)
                if msg["ifindex"] == index and msg["state"] == NUD_NOARP
                and msg.get_attr("NDA_MASTER"))
    except NetlinkError as exc:
        raise kernel_error(exc.code, f"pinned macs of {ifname}") from None



def _forget_learned(w: _Worker, ifname: str, netns: str | None) -> int:
    try:
        with w.batch() as ipr, w.strict_in(netns) as strict:
            sock = ipr(netns)
            index = _index(sock, ifname, f"learned macs of {ifname}")
            learned = [msg.get_attr("NDA_LLADDR") for msg in _port_fdb(sock, strict, index)
                       if msg["ifindex"] == index and msg.get_attr("NDA_MASTER")
                       and not msg["state"] & (NUD_NOARP | NUD_PERMANENT)]
            for mac in learned:
                try:
                    sock.neigh("del", ifindex=index, lladdr=mac, family=AF_BRIDGE,
                               flags=NTF_MASTER)
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:  # it aged out meanwhile
                        raise
            return len(learned)
    except NetlinkError as exc:
        raise kernel_error(exc.code, f"learned macs of {ifname}") from None


def _read_vxlan(w: _Worker, name: str, netns: str | None) -> VxlanDevice | None:
    try:
        with w.batch() as ipr, w.strict_in(netns) as strict:
            return _vxlan(ipr(netns), name, strict)
    except NetlinkError as exc:
        where = "" if netns is None else f" in {netns}"
        raise kernel_error(exc.code, f"read vxlan {name}{where}") from None


# --- the port -----------------------------------------------------------------------------


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
