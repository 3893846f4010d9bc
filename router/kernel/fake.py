"""An in-memory kernel port for unit tests: the same semantics and errors as the real one.

:class:`FakeKernel` keeps namespaces of links, addresses and routes and applies the port's
operations to them the way Linux does (``router/kernel/port.py`` lists the errnos):

* a veth pair dies as a whole; deleting a bridge releases its ports; deleting a link takes
  its addresses and routes with it; deleting the first (primary) IPv4 address of a subnet
  takes the later (secondary) ones of that subnet along, as with ``promote_secondaries`` off;
* a refused ``SetMaster`` still leaves the old master (the kernel releases first);
* bringing a link down drops the routes through it; a route needs its link up
  (``ENETDOWN``) and a gateway on a connected network (``ENETUNREACH``);
* only a bridge can be a master (``EOPNOTSUPP``), and a bridge cannot be a port (``ELOOP``);
* MTUs are checked against each kind's range; a bridge's MTU is pinned (as ``AddBridge``
  makes it on the real kernel) so ports never change it;
* a TAP is a ``tun`` link that lives while its :class:`FakeTap` is open;
* a VXLAN device's VNI and port are unique in its namespace (``EEXIST``); FDB entries go
  only on VXLAN devices (``EOPNOTSUPP``); appending a flood entry that is there already
  succeeds, a second unicast entry for a MAC (added or learned) is ``EEXIST``; deleting an
  entry for a MAC that has none is ``ENOENT``, while deleting a missing remote of a MAC
  that has others succeeds and changes nothing (both as the kernel's ``vxlan_fdb_delete``);
* a VXLAN device with learning learns what :meth:`FakeKernel.receive_vxlan` says arrived
  as the kernel's ``vxlan_snoop`` does: a new source MAC gets a learned entry, a learned
  one moves to the new sender, an added one never moves (the frame is dropped);
* a MAC can be pinned only to a bridge port (``EOPNOTSUPP``); pinning takes it from
  another port of the same bridge, and pinning it again is no error (``bridge fdb
  replace``); leaving the bridge drops a port's pins.

Left out on purpose (no plan depends on them): kernel-derived routes (snapshots of the real
port leave them out too), IPv6 link-local addresses, a bridge adopting a port's MAC,
interface indexes matching the kernel's and the ageing of learned entries. Tests create
namespaces with :meth:`add_netns` and can make an operation fail with :meth:`fail_when`
(e.g. to exercise a rollback).
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from router.errors import ClosedError, KernelError
from router.kernel.port import (
    FLOOD_MAC,
    MTU_MAX,
    MTU_MIN,
    VNI_MAX,
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
    SetDown,
    SetMac,
    SetMaster,
    SetMtu,
    SetUp,
    UnpinMac,
    VxlanDevice,
    kernel_error,
)

MAX_MTU_BY_KIND = {"tun": 65521, "": 65536}  # others: MTU_MAX


@dataclass
class _Link:
    link: Link
    peer: tuple[str | None, str] | None = None  # veth: (namespace, name) of the other end
    tap_open: bool = False
    vxlan: AddVxlan | None = None  # a VXLAN device: how it was made
    fdb: set[FdbEntry] = field(default_factory=set)  # a VXLAN device's added entries
    learned: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)  # MAC -> sender
    pinned: set[str] = field(default_factory=set)  # MACs pinned to this bridge port


class _Netns:
    def __init__(self) -> None:
        self.links: dict[str, _Link] = {}
        self.addresses: list[Address] = []
        self.routes: list[Route] = []
        self.next_index = 1


class FakeTap:
    """A TAP opened on a :class:`FakeKernel`. It moves no frames: ``fileno()`` is -1."""

    def __init__(self, kernel: FakeKernel, netns: str | None, name: str) -> None:
        self._kernel = kernel
        self._netns = netns
        self._name = name
        self._open = True

    @property
    def name(self) -> str:
        """The device name."""
        return self._name

    def fileno(self) -> int:
        """Always -1: there is no descriptor behind a fake TAP."""
        return -1

    def close(self) -> None:
        """Remove the device, as closing a real TAP's descriptor does. Idempotent."""
        if self._open:
            self._open = False
            self._kernel._tap_closed(self._netns, self._name)


class FakeKernel:
    """:class:`router.kernel.port.KernelPort` in memory. ``None`` is the port's own namespace."""

    def __init__(self) -> None:
        self._ns: dict[str | None, _Netns] = {}
        self._macs = 0
        self._closed = False
        self._stats = KernelStatistics()
        self._faults: list[tuple[Callable[[Op], bool], int]] = []
        self.add_netns(None)

    # --- test controls --------------------------------------------------------------------

    def add_netns(self, netns: str | None) -> None:
        """Create a namespace (with ``lo``, down), like ``ip netns add``."""
        if netns in self._ns:
            raise kernel_error(errno.EEXIST, f"namespace {netns}")
        ns = self._ns[netns] = _Netns()
        self._new_link(ns, "lo", "", 65536, "00:00:00:00:00:00")

    def delete_netns(self, netns: str) -> None:
        """Destroy a namespace and its links (veth peers elsewhere die with them)."""
        ns = self._get(netns)
        for name in list(ns.links):
            if name in ns.links:
                self._delete(netns, name)
        del self._ns[netns]

    def fail_when(self, match: Callable[[Op], bool], code: int) -> None:
        """Make the next operation that ``match`` accepts fail with ``code`` (once)."""
        self._faults.append((match, code))

    def receive_vxlan(self, ifname: str, src_mac: str, sender: ipaddress.IPv4Address, *,
                      netns: str | None = None) -> bool:
        """A frame from ``src_mac`` arrived at VXLAN device ``ifname`` from the underlay
        address ``sender``; False if the kernel would drop it (an added entry sends that
        MAC elsewhere). Learned as the kernel's ``vxlan_snoop`` does, if learning is on."""
        item = self._vxlan_of_name(netns, ifname)
        assert item.vxlan is not None
        if not item.vxlan.learning or int(src_mac[:2], 16) & 1 or src_mac == FLOOD_MAC:
            return True
        added = {e.dst for e in item.fdb if e.mac == src_mac}
        if added:
            return sender in added
        item.learned[src_mac] = sender  # new, or moved from another sender
        return True

    def namespaces(self) -> tuple[str | None, ...]:
        """The namespaces that exist."""
        return tuple(self._ns)

    # --- the port -------------------------------------------------------------------------

    async def snapshot(self, netns: str | None = None, *,
                       links: Sequence[str] | None = None) -> NetnsState:
        """See :meth:`router.kernel.port.KernelPort.snapshot`."""
        self._check_open()
        ns = self._get(netns)
        self._bump(snapshots=1)
        if links is None:
            return NetnsState(
                netns=netns, links=tuple(item.link for item in ns.links.values()),
                addresses=tuple(ns.addresses), routes=tuple(ns.routes),
            )
        wanted = [ns.links[name].link for name in dict.fromkeys(links) if name in ns.links]
        names = {link.name for link in wanted}
        return NetnsState(
            netns=netns, links=tuple(wanted),
            addresses=tuple(a for a in ns.addresses if a.ifname in names),
        )

    async def apply(self, ops: Sequence[Op]) -> None:
        """See :meth:`router.kernel.port.KernelPort.apply`."""
        self._check_open()
        for op in ops:
            try:
                self._fault(op)
                self._apply(op)
            except KernelError:
                self._bump(ops_failed=1)
                raise
            self._bump(ops_applied=1)

    async def vxlan(self, name: str, *, netns: str | None = None) -> VxlanDevice | None:
        """See :meth:`router.kernel.port.OverlayPort.vxlan`."""
        self._check_open()
        item = self._get(netns).links.get(name)
        self._bump(snapshots=1)
        if item is None:
            return None
        if item.vxlan is None:
            raise kernel_error(errno.EOPNOTSUPP, f"link {name} is a "
                               f"{item.link.kind or 'device'}, not a VXLAN device")
        return VxlanDevice(link=item.link, vni=item.vxlan.vni, port=item.vxlan.port,
                           local=item.vxlan.local, learning=item.vxlan.learning, remote=None,
                           fdb=frozenset(item.fdb),
                           learned=frozenset(FdbEntry(m, d) for m, d in item.learned.items()))

    async def pinned_macs(self, ifname: str, *, netns: str | None = None) -> frozenset[str]:
        """See :meth:`router.kernel.port.OverlayPort.pinned_macs`."""
        self._check_open()
        self._bump(snapshots=1)
        return frozenset(self._find(netns, ifname, f"pinned macs of {ifname}").pinned)

    async def forget_learned(self, ifname: str, *, netns: str | None = None) -> int:
        """See :meth:`router.kernel.port.OverlayPort.forget_learned`: a fake bridge learns
        nothing, so there is nothing to forget (ENODEV if no such link)."""
        self._check_open()
        self._bump(snapshots=1)
        self._find(netns, ifname, f"learned macs of {ifname}")
        return 0

    async def open_tap(self, name: str, *, netns: str | None = None) -> FakeTap:
        """See :meth:`router.kernel.port.KernelPort.open_tap`."""
        self._check_open()
        ns = self._get(netns)
        existing = ns.links.get(name)
        if existing is None:
            existing = self._new_link(ns, name, "tun", 1500, self._mac())
        elif existing.link.kind != "tun":
            raise kernel_error(errno.EINVAL, f"TAP {name}")
        elif existing.tap_open:
            raise kernel_error(errno.EBUSY, f"TAP {name}")
        existing.tap_open = True
        self._bump(taps_opened=1)
        return FakeTap(self, netns, name)

    def statistics(self) -> KernelStatistics:
        """Counters since the fake was made."""
        return self._stats

    async def aclose(self) -> None:
        """Refuse further calls (the namespaces stay, as the kernel's do)."""
        self._closed = True

    # --- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("kernel port is closed")

    def _bump(self, **deltas: int) -> None:
        s = self._stats
        self._stats = KernelStatistics(
            snapshots=s.snapshots + deltas.get("snapshots", 0),
            ops_applied=s.ops_applied + deltas.get("ops_applied", 0),
            ops_failed=s.ops_failed + deltas.get("ops_failed", 0),
            taps_opened=s.taps_opened + deltas.get("taps_opened", 0),
        )

    def _fault(self, op: Op) -> None:
        for i, (match, code) in enumerate(self._faults):
            if match(op):
                del self._faults[i]
                raise kernel_error(code, f"{op} (injected)")

    def _get(self, netns: str | None) -> _Netns:
        ns = self._ns.get(netns)
        if ns is None:
            raise kernel_error(errno.ENOENT, f"namespace {netns}")
        return ns

    def _mac(self) -> str:
        self._macs += 1
        raw = (0x02 << 40) | self._macs  # locally administered, unicast
        return ":".join(f"{b:02x}" for b in raw.to_bytes(6, "big"))

    def _new_link(self, ns: _Netns, name: str, kind: str, mtu: int, mac: str) -> _Link:
        item = _Link(Link(index=ns.next_index, name=name, kind=kind, mac=mac, mtu=mtu,
                          up=False))
        ns.next_index += 1
        ns.links[name] = item
        return item

    def _find(self, netns: str | None, name: str, op: object) -> _Link:
        item = self._get(netns).links.get(name)
        if item is None:
            raise kernel_error(errno.ENODEV, f"{op}: link {name}")
        return item

    def _ports_of(self, netns: str | None, bridge: str) -> list[_Link]:
        return [item for item in self._get(netns).links.values() if item.link.master == bridge]

    def _apply(self, op: Op) -> None:
        match op:
            case AddBridge():
                self._add_bridge(op)
            case AddVeth():
                self._add_veth(op)
            case DeleteLink():
                self._delete_link(op)
            case SetUp():
                self._set_up(op)
            case SetDown():
                self._set_down(op)
            case SetMtu():
                self._set_mtu(op)
            case SetMac():
                self._set_mac(op)
            case SetMaster():
                self._set_master(op)
            case AddAddress():
                self._add_address(op)
            case DeleteAddress():
                self._delete_address(op)
            case AddRoute():
                self._add_route(op)
            case DeleteRoute():
                self._delete_route(op)
            case AddVxlan():
                self._add_vxlan(op)
            case AddFdb():
                self._add_fdb(op)
            case DeleteFdb():
                self._delete_fdb(op)
            case PinMac():
                self._pin(op)
            case UnpinMac():
                self._unpin(op)

    def _check_mtu(self, kind: str, mtu: int, op: Op) -> None:
        if not MTU_MIN <= mtu <= MAX_MTU_BY_KIND.get(kind, MTU_MAX):
            raise kernel_error(errno.EINVAL, f"{op}: mtu {mtu} out of range")

    def _check_mac(self, mac: str, op: Op) -> None:
        first = int(mac[:2], 16)
        if first & 1 or mac == "00:00:00:00:00:00":
            raise kernel_error(errno.EADDRNOTAVAIL, f"{op}: {mac} is not a unicast address")

    def _add_bridge(self, op: AddBridge) -> None:
        ns = self._get(op.netns)
        if op.name in ns.links:
            raise kernel_error(errno.EEXIST, str(op))
        self._check_mtu("bridge", op.mtu, op)
        if op.mac is not None:
            self._check_mac(op.mac, op)
        self._new_link(ns, op.name, "bridge", op.mtu, op.mac or self._mac())

    def _add_veth(self, op: AddVeth) -> None:
        ns, peer_ns = self._get(op.netns), self._get(op.peer_netns)
        same = op.netns == op.peer_netns and op.name == op.peer
        if op.name in ns.links or op.peer in peer_ns.links or same:
            raise kernel_error(errno.EEXIST, str(op))
        self._check_mtu("veth", op.mtu, op)
        if op.peer_mac is not None:
            self._check_mac(op.peer_mac, op)
        here = self._new_link(ns, op.name, "veth", op.mtu, self._mac())
        there = self._new_link(peer_ns, op.peer, "veth", op.mtu, op.peer_mac or self._mac())
        here.peer = (op.peer_netns, op.peer)
        there.peer = (op.netns, op.name)

    def _delete_link(self, op: DeleteLink) -> None:
        item = self._find(op.netns, op.name, op)
        if item.link.kind == "" and op.name == "lo":
            raise kernel_error(errno.EOPNOTSUPP, str(op))
        self._delete(op.netns, op.name)

    def _delete(self, netns: str | None, name: str) -> None:
        ns = self._get(netns)
        item = ns.links.pop(name)
        ns.addresses = [a for a in ns.addresses if a.ifname != name]
        ns.routes = [r for r in ns.routes if r.ifname != name]
        for port in ns.links.values():
            if port.link.master == name:
                port.link = replace(port.link, master=None)
                port.pinned.clear()
        if item.peer is not None:
            peer_ns, peer = item.peer
            if peer_ns in self._ns and peer in self._ns[peer_ns].links:
                self._ns[peer_ns].links[peer].peer = None
                self._delete(peer_ns, peer)

    def _tap_closed(self, netns: str | None, name: str) -> None:
        ns = self._ns.get(netns)
        item = ns.links.get(name) if ns is not None else None
        if item is not None and item.link.kind == "tun" and item.tap_open:
            self._delete(netns, name)

    def _set_up(self, op: SetUp) -> None:
        item = self._find(op.netns, op.name, op)
        item.link = replace(item.link, up=True)

    def _set_down(self, op: SetDown) -> None:
        item = self._find(op.netns, op.name, op)
        item.link = replace(item.link, up=False)
        ns = self._get(op.netns)
        ns.routes = [r for r in ns.routes if r.ifname != op.name]

    def _set_mtu(self, op: SetMtu) -> None:
        item = self._find(op.netns, op.name, op)
        self._check_mtu(item.link.kind, op.mtu, op)
        item.link = replace(item.link, mtu=op.mtu)

    def _set_mac(self, op: SetMac) -> None:
        item = self._find(op.netns, op.name, op)
        self._check_mac(op.mac, op)
        item.link = replace(item.link, mac=op.mac)

    def _set_master(self, op: SetMaster) -> None:
        # As the kernel's do_set_master: leave the old master first, then join the new one,
        # so a refused join leaves the link with no master at all.
        item = self._find(op.netns, op.name, op)
        master = None if op.master is None else self._find(op.netns, op.master, op)
        if item.link.master == op.master:
            return
        item.link = replace(item.link, master=None)
        item.pinned.clear()  # the kernel flushes a port's entries when it leaves the bridge
        if master is None:
            return
        if master.link.kind != "bridge":
            raise kernel_error(errno.EOPNOTSUPP, f"{op}: {op.master} is not a bridge")
        if item.link.kind == "bridge":
            raise kernel_error(errno.ELOOP, f"{op}: a bridge cannot be a port")
        if item.link.name == "lo":
            raise kernel_error(errno.EINVAL, str(op))
        item.link = replace(item.link, master=op.master)

    def _add_address(self, op: AddAddress) -> None:
        self._find(op.netns, op.ifname, op)
        ns = self._get(op.netns)
        address = Address(op.ifname, op.cidr)
        if address in ns.addresses:
            raise kernel_error(errno.EEXIST, str(op))
        ns.addresses.append(address)

    def _delete_address(self, op: DeleteAddress) -> None:
        self._find(op.netns, op.ifname, op)
        ns = self._get(op.netns)
        address = Address(op.ifname, op.cidr)
        if address not in ns.addresses:
            raise kernel_error(errno.EADDRNOTAVAIL, str(op))
        group = [a for a in ns.addresses if a == address or _same_subnet(a, address)]
        if group[0] == address:  # a primary takes its secondaries along
            ns.addresses = [a for a in ns.addresses if a not in group]
        else:
            ns.addresses.remove(address)

    def _add_route(self, op: AddRoute) -> None:
        ns = self._get(op.netns)
        route = op.route
        if route.ifname is not None and not self._find(op.netns, route.ifname, op).link.up:
            raise kernel_error(errno.ENETDOWN, str(op))
        if route.gateway is not None:
            via = self._connected(ns, route.gateway, route.ifname)
            if via is None:
                raise kernel_error(errno.ENETUNREACH, str(op))
            route = replace(route, ifname=via)
        if any(r.dst == route.dst for r in ns.routes):
            raise kernel_error(errno.EEXIST, str(op))
        ns.routes.append(route)

    def _connected(self, ns: _Netns, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address,
                   ifname: str | None) -> str | None:
        for a in ns.addresses:
            if (ifname in (None, a.ifname) and gateway in a.cidr.network
                    and ns.links[a.ifname].link.up):
                return a.ifname
        return None

    def _delete_route(self, op: DeleteRoute) -> None:
        ns = self._get(op.netns)
        for r in ns.routes:
            if r.dst == op.route.dst and op.route.ifname in (None, r.ifname):
                ns.routes.remove(r)
                return
        raise kernel_error(errno.ESRCH, str(op))

    def _add_vxlan(self, op: AddVxlan) -> None:
        ns = self._get(op.netns)
        if op.name in ns.links or any(
                item.vxlan is not None and (item.vxlan.vni, item.vxlan.port) == (op.vni, op.port)
                for item in ns.links.values()):
            raise kernel_error(errno.EEXIST, str(op))
        if not 0 <= op.vni <= VNI_MAX or not 0 < op.port < 65536:
            raise kernel_error(errno.EINVAL, str(op))
        self._check_mtu("vxlan", op.mtu, op)
        self._new_link(ns, op.name, "vxlan", op.mtu, self._mac()).vxlan = op

    def _vxlan_of(self, op: AddFdb | DeleteFdb) -> _Link:
        return self._vxlan_of_name(op.netns, op.ifname, op)

    def _vxlan_of_name(self, netns: str | None, ifname: str, op: object = None) -> _Link:
        what = op if op is not None else f"vxlan {ifname}"
        item = self._find(netns, ifname, what)
        if item.vxlan is None:
            raise kernel_error(errno.EOPNOTSUPP, f"{what}: not a VXLAN device")
        return item

    def _add_fdb(self, op: AddFdb) -> None:
        item = self._vxlan_of(op)
        mac = op.entry.mac
        if not op.entry.flood and (mac in item.learned or any(e.mac == mac for e in item.fdb)):
            raise kernel_error(errno.EEXIST, str(op))
        item.fdb.add(op.entry)

    def _delete_fdb(self, op: DeleteFdb) -> None:
        item = self._vxlan_of(op)
        mac = op.entry.mac
        if mac in item.learned:  # a learned entry has one remote
            if item.learned[mac] == op.entry.dst:
                del item.learned[mac]
            return
        if not any(e.mac == mac for e in item.fdb):
            raise kernel_error(errno.ENOENT, str(op))
        item.fdb.discard(op.entry)

    def _pin(self, op: PinMac) -> None:
        item = self._find(op.netns, op.ifname, op)
        if item.link.master is None:
            raise kernel_error(errno.EOPNOTSUPP, f"{op}: not a bridge port")
        for other in self._ports_of(op.netns, item.link.master):
            other.pinned.discard(op.mac)  # one entry per MAC in a bridge
        item.pinned.add(op.mac)

    def _unpin(self, op: UnpinMac) -> None:
        item = self._find(op.netns, op.ifname, op)
        if item.link.master is None:
            raise kernel_error(errno.EOPNOTSUPP, f"{op}: not a bridge port")
        if op.mac not in item.pinned:
            raise kernel_error(errno.ENOENT, str(op))
        item.pinned.discard(op.mac)


def _same_subnet(a: Address, b: Address) -> bool:
    """Same link, IPv4, same network and prefix length: one primary/secondaries group."""
    return (a.ifname == b.ifname and isinstance(a.cidr, ipaddress.IPv4Interface)
            and a.cidr.network == b.cidr.network)
