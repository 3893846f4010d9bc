"""What the router asks of the kernel's network configuration: the port and its vocabulary.

The port is small on purpose. Everything it can do to the kernel is an *operation*, a frozen
dataclass below (:class:`AddBridge`, :class:`AddVeth`, :class:`SetUp`, :class:`AddAddress`,
...); a *plan* (``router/kernel/plumbing.py``) is an ordered tuple of them computed from a
:class:`NetnsState` snapshot and the desired state. The port then has four verbs:

* ``snapshot(netns)``: links, addresses and routes of one namespace, as plain data
  (``snapshot(netns, links=[...])``: only those links and their addresses);
* ``apply(ops)``: run operations in order, stopping at the first failure;
* ``open_tap(name, netns=...)``: create/open a TAP device and hand back its file descriptor;
* ``statistics()`` and ``aclose()``.

Two implementations share these semantics and errors: ``router/kernel/netlink.py`` (pyroute2
on one owned worker thread) and ``router/kernel/fake.py`` (in memory, for unit tests). Every
kernel failure surfaces as :class:`~router.errors.KernelError` with the kernel's ``errno``:
``EEXIST`` (link/address/route already there), ``ENODEV`` (no such link), ``EADDRNOTAVAIL``
(no such address), ``ESRCH`` (no such route), ``ENOENT`` (no such namespace), ``ENETDOWN``
(route through a link that is down), ``EOPNOTSUPP`` (master is not a bridge), ``EBUSY``
(TAP already open), ``EINVAL`` (value the kernel refuses, e.g. an MTU out of range).

fastdp's VXLAN device (:class:`AddVxlan`, :class:`AddFdb`, :class:`DeleteFdb`, read back
with :meth:`OverlayPort.vxlan`) adds: ``EEXIST`` (another VXLAN device has that VNI and
port, or a unicast MAC has an entry, ours or one the kernel learned), ``ENOENT`` (no FDB
entry for that MAC), ``EOPNOTSUPP`` (FDB entries on a device that is not VXLAN).

Namespaces are named by path (``/run/netns/NAME``, ``/proc/PID/ns/net``); ``None`` is the
namespace the port was opened in (the router's own). :func:`resolve_netns` (from
``router/kernel/netns.py``) turns what a user typed (a name from ``ip netns``, a path, or a
PID) into such a path.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from router.errors import KernelError, LocalProtocolError
from router.kernel.netns import NETNS_RUN_DIR as NETNS_RUN_DIR
from router.kernel.netns import netns_inode as netns_inode
from router.kernel.netns import resolve_netns as resolve_netns

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IFNAMSIZ = 16  # bytes, including the trailing NUL: names are at most 15 characters
MTU_MIN = 68  # bytes, IPv4 minimum; the kernel refuses smaller on veth/bridge/tap
MTU_MAX = 65535  # bytes, ETH_MAX_MTU
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class Scope(IntEnum):
    """Route scope (``rtm_scope``): how far the destination is."""

    UNIVERSE = 0  # via a gateway or anywhere
    LINK = 253  # directly on the link (e.g. 224.0.0.0/4 dev ethwe)
    HOST = 254  # this host only


# --- what a snapshot holds ----------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One network device as the kernel reports it."""

    index: int
    name: str
    kind: str  # "bridge", "veth", "tun", "vxlan"; "" for loopback and physical devices
    mac: str  # "aa:bb:cc:dd:ee:ff", lowercase
    mtu: int  # bytes
    up: bool  # administratively up (IFF_UP)
    master: str | None = None  # name of the bridge this link is enslaved to


@dataclass(frozen=True)
class Address:
    """An IP address with its prefix length, on a link."""

    ifname: str
    cidr: IPInterface  # e.g. IPv4Interface("10.32.1.1/12")


@dataclass(frozen=True)
class Route:
    """A route in the main table that user space added (kernel-derived routes are left out)."""

    dst: IPNetwork
    ifname: str | None = None  # output device
    gateway: IPAddress | None = None
    scope: Scope = Scope.UNIVERSE


@dataclass(frozen=True)
class NetnsState:
    """A snapshot of one namespace: its links, addresses and user-added routes.

    Addresses exclude IPv6 link-local ones (``fe80::/10``), which the kernel adds by itself.
    """

    netns: str | None
    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        for link in self.links:
            if link.name == name:
                return link
        return None

    def addresses_of(self, ifname: str) -> tuple[IPInterface, ...]:
        """The addresses on ``ifname``, in kernel order."""
        return tuple(a.cidr for a in self.addresses if a.ifname == ifname)

    def routes_via(self, ifname: str) -> tuple[Route, ...]:
        """The routes whose output device is ``ifname``."""
        return tuple(r for r in self.routes if r.ifname == ifname)


def is_link_local(cidr: IPInterface) -> bool:
    """True for IPv6 link-local addresses (the kernel's own, never ours to manage)."""
    return isinstance(cidr, ipaddress.IPv6Interface) and cidr.ip.is_link_local


# --- operations -----------------------------------------------------------------------------


def check_name(name: str) -> str:
    """``name`` if it is a valid interface name, else LocalProtocolError."""
    if (not name or len(name) >= IFNAMSIZ or name in (".", "..")
            or any(c in name for c in "/: \t\n")):
        raise LocalProtocolError(f"invalid interface name {name!r}")
    return name


def check_mac(mac: str) -> str:
    """``mac`` if it reads ``aa:bb:cc:dd:ee:ff`` (lowercase), else LocalProtocolError."""
    if not _MAC_RE.match(mac):
        raise LocalProtocolError(f"invalid MAC address {mac!r}: expected aa:bb:cc:dd:ee:ff")
    return mac


def _where(netns: str | None) -> str:
    return "" if netns is None else f" in {netns}"


@dataclass(frozen=True)
class AddBridge:
    """Create a bridge with STP off and its MTU pinned (ports never lower it)."""

    name: str
    mtu: int
    mac: str | None = None  # None: the kernel picks one
    netns: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.mac is not None:
            check_mac(self.mac)

    def __str__(self) -> str:
        return f"add bridge {self.name} mtu {self.mtu}{_where(self.netns)}"


@dataclass(frozen=True)
class AddVeth:
    """Create a veth pair: ``name`` here, ``peer`` created directly in ``peer_netns``."""

    name: str
    peer: str
    mtu: int  # both ends
    peer_netns: str | None = None
    peer_mac: str | None = None
    netns: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        check_name(self.peer)
        if self.peer_mac is not None:
            check_mac(self.peer_mac)

    def __str__(self) -> str:
        return (f"add veth {self.name}{_where(self.netns)} peer {self.peer}"
                f"{_where(self.peer_netns)} mtu {self.mtu}")


@dataclass(frozen=True)
class DeleteLink:
    """Delete a link (a veth takes its peer with it; a bridge releases its ports)."""

    name: str
    netns: str | None = None

    def __str__(self) -> str:
        return f"delete link {self.name}{_where(self.netns)}"


@dataclass(frozen=True)
class SetUp:
    """Bring a link administratively up."""

    name: str
    netns: str | None = None

    def __str__(self) -> str:
        return f"set {self.name} up{_where(self.netns)}"


@dataclass(frozen=True)
class SetDown:
    """Bring a link administratively down (the kernel drops the IPv4 routes through it)."""

    name: str
    netns: str | None = None

    def __str__(self) -> str:
        return f"set {self.name} down{_where(self.netns)}"


@dataclass(frozen=True)
class SetMtu:
    """Set a link's MTU in bytes."""

    name: str
    mtu: int
    netns: str | None = None

    def __str__(self) -> str:
        return f"set {self.name} mtu {self.mtu}{_where(self.netns)}"


@dataclass(frozen=True)
class SetMac:
    """Set a link's MAC address."""

    name: str
    mac: str
    netns: str | None = None

    def __post_init__(self) -> None:
        check_mac(self.mac)

    def __str__(self) -> str:
        return f"set {self.name} address {self.mac}{_where(self.netns)}"


@dataclass(frozen=True)
class SetMaster:
    """Enslave a link to the bridge ``master`` (same namespace), or release it (None)."""

    name: str
    master: str | None
    netns: str | None = None

    def __str__(self) -> str:
        target = "nomaster" if self.master is None else f"master {self.master}"
        return f"set {self.name} {target}{_where(self.netns)}"


@dataclass(frozen=True)
class AddAddress:
    """Add an address (with prefix length) to a link."""

    ifname: str
    cidr: IPInterface
    netns: str | None = None

    def __str__(self) -> str:
        return f"add address {self.cidr} dev {self.ifname}{_where(self.netns)}"


@dataclass(frozen=True)
class DeleteAddress:
    """Remove an address from a link."""

    ifname: str
    cidr: IPInterface
    netns: str | None = None

    def __str__(self) -> str:
        return f"delete address {self.cidr} dev {self.ifname}{_where(self.netns)}"


@dataclass(frozen=True)
class AddRoute:
    """Add a route to the main table (the output link must be up)."""

    route: Route
    netns: str | None = None

    def __str__(self) -> str:
        return f"add route {_route_text(self.route)}{_where(self.netns)}"


@dataclass(frozen=True)
class DeleteRoute:
    """Remove a route from the main table."""

    route: Route
    netns: str | None = None

    def __str__(self) -> str:
        return f"delete route {_route_text(self.route)}{_where(self.netns)}"


def _route_text(route: Route) -> str:
    text = str(route.dst)
    if route.gateway is not None:
        text += f" via {route.gateway}"
    if route.ifname is not None:
        text += f" dev {route.ifname}"
    if route.scope is not Scope.UNIVERSE:
        text += f" scope {route.scope.name.lower()}"
    return text


# --- VXLAN (fastdp) ---------------------------------------------------------------------------

VNI_MAX = 0xFFFFFF  # a VXLAN network identifier is 24 bits
FLOOD_MAC = "00:00:00:00:00:00"  # FDB entry for unknown/broadcast/multicast destinations


@dataclass(frozen=True)
class AddVxlan:
    """Create a VXLAN device with no default remote (FDB entries say where to send).

    ``port`` is the UDP port the device listens on and sends to (Weave: 6784, its port+1).
    With ``learning`` the kernel notes each received frame's source MAC -> the sender's
    underlay IP as a *learned* (dynamic) FDB entry, aged out after 300 s unused, moved when
    the MAC shows up behind another sender, but never over an entry added by
    :class:`AddFdb` (a frame whose source MAC has one of those to another IP is dropped).
    """

    name: str
    vni: int
    port: int  # UDP
    local: ipaddress.IPv4Address  # underlay source address
    mtu: int  # bytes
    netns: str | None = None
    learning: bool = True

    def __post_init__(self) -> None:
        check_name(self.name)

    def __str__(self) -> str:
        return (f"add vxlan {self.name} id {self.vni} dstport {self.port} local {self.local}"
                f" {'' if self.learning else 'no'}learning mtu {self.mtu}{_where(self.netns)}")


@dataclass(frozen=True)
class FdbEntry:
    """Where the VXLAN device sends frames for ``mac``: to the peer at ``dst``.

    ``mac == FLOOD_MAC`` is a flood entry: a device may have one per remote (``append``),
    and sends each broadcast, multicast or unknown-unicast frame to all of them. Any other
    MAC has at most one entry.
    """

    mac: str
    dst: ipaddress.IPv4Address

    def __post_init__(self) -> None:
        check_mac(self.mac)

    @property
    def flood(self) -> bool:
        """True for a flood (all-zeros MAC) entry."""
        return self.mac == FLOOD_MAC

    def __str__(self) -> str:
        return f"{self.mac} dst {self.dst}"


@dataclass(frozen=True)
class AddFdb:
    """Add an FDB entry to a VXLAN device (a flood entry is appended beside the others).

    Appending a flood entry that is there already succeeds; a unicast MAC that has an
    entry already is ``EEXIST`` (delete it first).
    """

    ifname: str
    entry: FdbEntry
    netns: str | None = None

    def __str__(self) -> str:
        return f"add fdb {self.entry} dev {self.ifname}{_where(self.netns)}"


@dataclass(frozen=True)
class DeleteFdb:
    """Remove one FDB entry, ours or learned: ``ENOENT`` if the MAC has none (the kernel's
    rule); a MAC whose entries send elsewhere is left as it is, without error."""

    ifname: str
    entry: FdbEntry
    netns: str | None = None

    def __str__(self) -> str:
        return f"delete fdb {self.entry} dev {self.ifname}{_where(self.netns)}"


@dataclass(frozen=True)
class PinMac:
    """Pin ``mac`` to bridge port ``ifname`` (``bridge fdb add MAC dev IFNAME master static``).

    The bridge then forwards frames for ``mac`` to that port only, never ages it and never
    moves it (fastdp's heartbeats: to the VXLAN port on the sender, to the router's TAP on
    the receiver, never to containers). It takes over whatever entry the bridge has for
    ``mac``: one it learned on any port, or a pin to another port; pinning it again where
    it is pinned changes nothing. ``EOPNOTSUPP`` if ``ifname`` is not a bridge port.
    Leaving the bridge drops the port's pins.
    """

    ifname: str
    mac: str
    netns: str | None = None

    def __post_init__(self) -> None:
        check_mac(self.mac)

    def __str__(self) -> str:
        return f"pin {self.mac} to {self.ifname}{_where(self.netns)}"


@dataclass(frozen=True)
class UnpinMac:
    """Remove a :class:`PinMac` (``ENOENT`` if it is not there)."""

    ifname: str
    mac: str
    netns: str | None = None

    def __post_init__(self) -> None:
        check_mac(self.mac)

    def __str__(self) -> str:
        return f"unpin {self.mac} from {self.ifname}{_where(self.netns)}"


@dataclass(frozen=True)
class VxlanDevice:
    """A VXLAN device as the kernel reports it, with its (``self``) FDB entries: ``fdb``
    those :class:`AddFdb` made (permanent), ``learned`` those the kernel learned from
    received frames (dynamic: one remote per MAC)."""

    link: Link
    vni: int
    port: int  # UDP
    local: ipaddress.IPv4Address | None
    learning: bool
    remote: ipaddress.IPv4Address | None  # the default remote (group); fastdp sets none
    fdb: frozenset[FdbEntry] = frozenset()
    learned: frozenset[FdbEntry] = frozenset()


Op = (AddBridge | AddVeth | DeleteLink | SetUp | SetDown | SetMtu | SetMac | SetMaster
      | AddAddress | DeleteAddress | AddRoute | DeleteRoute | AddVxlan | AddFdb | DeleteFdb
      | PinMac | UnpinMac)
OverlayOp = (AddVxlan | AddFdb | DeleteFdb | DeleteLink | SetUp | SetMtu | SetMaster | PinMac
             | UnpinMac)


@dataclass(frozen=True)
class Plan:
    """Operations to run in order, and what undoes the ones that create things.

    ``rollback`` is run (best effort) when an operation of ``ops`` fails, so that a failed
    attach leaves nothing half-created.
    """

    ops: tuple[Op, ...] = ()
    rollback: tuple[Op, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ops)


# --- the port ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelStatistics:
    """Counters of a kernel port."""

    snapshots: int = 0
    ops_applied: int = 0
    ops_failed: int = 0
    taps_opened: int = 0


class TapDevice(Protocol):
    """An open TAP device: frames in and out of ``fileno()``, each after a virtio-net header.

    Closing it removes the device from the kernel (it is not persistent).
    """

    @property
    def name(self) -> str: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


class KernelPort(Protocol):
    """The kernel's network configuration, as the router uses it."""

    async def snapshot(self, netns: str | None = None, *,
                       links: Sequence[str] | None = None) -> NetnsState:
        """Links, addresses (without IPv6 link-local) and user-added main-table routes.

        ``links``: only those of these links that exist (a link's ``master`` is named
        all the same) and the addresses on them; ``routes`` is left empty. Far cheaper
        than the whole namespace on a host with many devices.
        """
        ...

    async def apply(self, ops: Sequence[Op]) -> None:
        """Run ``ops`` in order; at the first failure raise KernelError (earlier ops stay)."""
        ...

    async def open_tap(self, name: str, *, netns: str | None = None) -> TapDevice:
        """Create and open TAP ``name`` (IFF_NO_PI, IFF_VNET_HDR, CSUM/TSO4/TSO6 offloads).

        The device starts down and unenslaved; ``plumbing.tap_plan`` finishes it.
        """
        ...

    def statistics(self) -> KernelStatistics: ...

    async def aclose(self) -> None: ...


class OverlayPort(Protocol):
    """What fastdp asks of the kernel: one tunnel device on the bridge and where it sends.

    Narrow on purpose: the VXLAN backend (netlink, fake) implements it today; an
    openvswitch datapath could implement the same reads and operations one day.
    """

    async def vxlan(self, name: str, *, netns: str | None = None) -> VxlanDevice | None:
        """The VXLAN device ``name`` (None if absent); EOPNOTSUPP if ``name`` is another kind."""
        ...

    async def pinned_macs(self, ifname: str, *, netns: str | None = None) -> frozenset[str]:
        """The MACs pinned (:class:`PinMac`) to bridge port ``ifname``; ENODEV if no such link."""
        ...

    async def forget_learned(self, ifname: str, *, netns: str | None = None) -> int:
        """Delete the MACs the bridge learned on its port ``ifname`` (not the pinned ones),
        so frames to them are flooded until it learns them again; how many. ENODEV if no
        such link. fastdp calls it when a peer changes overlay: a MAC learned behind the
        VXLAN device (or the TAP) would otherwise keep its frames on the old path."""
        ...

    async def apply(self, ops: Sequence[OverlayOp]) -> None:
        """Run ``ops`` in order; at the first failure raise KernelError (earlier ops stay)."""
        ...

    def statistics(self) -> KernelStatistics: ...


async def execute(port: KernelPort, plan: Plan) -> None:
    """Apply ``plan``; if it fails, run its rollback (errors there are ignored) and re-raise."""
    if not plan.ops:
        return
    try:
        await port.apply(plan.ops)
    except KernelError:
        for op in plan.rollback:  # undo what we can; the original failure is what matters
            with suppress(KernelError):
                await port.apply((op,))
        raise


def kernel_error(code: int, what: str) -> KernelError:
    """A KernelError for ``what`` failing with ``code``, worded like the kernel's message."""
    return KernelError(code, f"{what}: {os.strerror(code)}")

