"""Plans for the kernel plumbing of a host: desired state + a snapshot -> ordered operations.

Sans-IO: every function takes :class:`~router.kernel.port.NetnsState` snapshots (from
``KernelPort.snapshot``) and returns a :class:`~router.kernel.port.Plan`; the caller runs it
with ``router.kernel.port.execute``. A plan only does what is missing, so running a plan
and planning again gives an empty plan (plans converge), and restarting the router over a
bridge that stayed up changes nothing. The shape on a host::

    container netns                     host netns (the router's)
    +-----------------------+           +------------------------------------------+
    | ethwe  (veth, MAC,    |<--------->| vethwepl<id>  --+                        |
    |   CIDRs, 224.0.0.0/4) |           |                 +-- weave (bridge, MTU   |
    +-----------------------+           | vethwe-pcap ----+     pinned, STP off)   |
                                        |   (TAP: the data plane's capture device) |
                                        +------------------------------------------+

* :func:`bridge_plan`: the bridge, up, with its MTU (and MAC if given).
* :func:`tap_plan`: an open TAP (``KernelPort.open_tap``) enslaved to the bridge, up.
* :func:`attach_plan`: a veth into a container, its addresses, the multicast route. The
  veth is created with its container end already inside the container's namespace, so
  nothing appears in the host under the name ``ethwe``. Rollback deletes what it created.
* :func:`detach_plan`: remove addresses (keeping the others, see :func:`_removal_ops`);
  when none is left, the veth (Weave's rule).
* :func:`reset_plan`: delete every device of ours and the bridge.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from router.errors import KernelError, LocalProtocolError
from router.kernel.port import (
    AddAddress,
    AddBridge,
    AddRoute,
    AddVeth,
    DeleteAddress,
    DeleteLink,
    IPInterface,
    Link,
    NetnsState,
    Op,
    Plan,
    Route,
    Scope,
    SetMac,
    SetMaster,
    SetMtu,
    SetUp,
    check_name,
)

BRIDGE_NAME = "weave"
CONTAINER_IFNAME = "ethwe"
TAP_NAME = "vethwe-pcap"
DEVICE_PREFIX = "vethwe"  # every device of ours on the host starts with this
HOST_VETH_PREFIX = "vethwepl"  # + up to 7 hex digits of the container namespace's inode
MULTICAST_NET = ipaddress.IPv4Network("224.0.0.0/4")
_NSFS_FIRST_INODE = 0xF0000000  # namespace inodes are allocated upwards from here


@dataclass(frozen=True)
class Attachment:
    """What ``ps`` shows of an attached container: its ``ethwe`` MAC and addresses."""

    mac: str
    cidrs: tuple[IPInterface, ...]


def host_veth_name(netns_inode: int) -> str:
    """The host end of a container's veth: ``vethwepl`` + the namespace inode, in hex.

    Inodes of live namespaces are distinct and sit in ``0xF0000000 + [0, 2**28)``, so the
    low 28 bits (7 hex digits) name the container uniquely while it lives, within the
    15-character limit.
    """
    return f"{HOST_VETH_PREFIX}{(netns_inode - _NSFS_FIRST_INODE) & 0x0FFFFFFF:x}"


def multicast_route_via(ifname: str = CONTAINER_IFNAME) -> Route:
    """``224.0.0.0/4 dev <ifname> scope link``: multicast leaves through the weave network."""
    return Route(dst=MULTICAST_NET, ifname=ifname, scope=Scope.LINK)


def bridge_plan(host: NetnsState, *, mtu: int, name: str = BRIDGE_NAME,
                mac: str | None = None) -> Plan:
    """The bridge ``name`` exists, is up, has ``mtu`` (and ``mac`` if given)."""
    ns = host.netns
    link = host.link(name)
    if link is None:
        return Plan(ops=(AddBridge(name, mtu, mac=mac, netns=ns), SetUp(name, ns)),
                    rollback=(DeleteLink(name, ns),))
    _require_bridge(link, errno.EEXIST, "exists and is not a bridge; run `weave-router reset`")
    ops: list[Op] = []
    if link.mtu != mtu:
        ops.append(SetMtu(name, mtu, ns))
    if mac is not None and link.mac != mac:
        ops.append(SetMac(name, mac, ns))
    if not link.up:
        ops.append(SetUp(name, ns))
    return Plan(ops=tuple(ops))


def tap_plan(host: NetnsState, *, mtu: int, name: str = TAP_NAME,
             bridge: str = BRIDGE_NAME) -> Plan:
    """The open TAP ``name`` has ``mtu``, is a port of ``bridge``, and is up."""
    ns = host.netns
    _bridge_of(host, bridge)
    tap = host.link(name)
    if tap is None or tap.kind != "tun":
        raise KernelError(errno.ENODEV, f"TAP {name} is not open")
    ops: list[Op] = []
    if tap.mtu != mtu:
        ops.append(SetMtu(name, mtu, ns))
    if tap.master != bridge:
        ops.append(SetMaster(name, bridge, ns))
    if not tap.up:
        ops.append(SetUp(name, ns))
    return Plan(ops=tuple(ops))


def attach_plan(host: NetnsState, container: NetnsState, *, host_veth: str,
                cidrs: Sequence[IPInterface], mac: str | None = None, mtu: int | None = None,
                bridge: str = BRIDGE_NAME, ifname: str = CONTAINER_IFNAME,
                multicast_route: bool = True) -> Plan:
    """The container has ``ifname`` on ``bridge`` with ``cidrs`` (added to any it has).

    ``mtu`` defaults to the bridge's. ``multicast_route`` adds the 224.0.0.0/4 route unless
    there. Raises KernelError ``ENODEV`` if the bridge is missing, ``EEXIST`` if the
    container has an ``ifname`` that is not a veth.
    """
    check_name(host_veth)
    if container.netns == host.netns:
        raise LocalProtocolError("attach: the container namespace is the host's own")
    wanted = tuple(dict.fromkeys(cidrs))
    existing = container.link(ifname)
    if existing is None:
        return _new_attachment(host, container, host_veth=host_veth, cidrs=wanted, mac=mac,
                               mtu=mtu if mtu is not None else _bridge_of(host, bridge).mtu,
                               bridge=bridge, ifname=ifname, multicast_route=multicast_route)
    if existing.kind != "veth":
        kind = existing.kind or "device"
        raise KernelError(errno.EEXIST, f"{ifname} in {container.netns} is a {kind}, not a veth")
    return _extend_attachment(host, container, existing, host_veth=host_veth, cidrs=wanted,
                              mac=mac, bridge=bridge, multicast_route=multicast_route)


def _new_attachment(host: NetnsState, container: NetnsState, *, host_veth: str,
                    cidrs: tuple[IPInterface, ...], mac: str | None, mtu: int, bridge: str,
                    ifname: str, multicast_route: bool) -> Plan:
    h, c = host.netns, container.netns
    _bridge_of(host, bridge)
    ops: list[Op] = []
    if host.link(host_veth) is not None:  # left from a namespace that is gone: stale
        ops.append(DeleteLink(host_veth, h))
    ops += [
        AddVeth(host_veth, ifname, mtu, peer_netns=c, peer_mac=mac, netns=h),
        SetMaster(host_veth, bridge, h),
        SetUp(host_veth, h),
        SetUp(ifname, c),
    ]
    ops += [AddAddress(ifname, cidr, c) for cidr in cidrs]
    if multicast_route:
        ops.append(AddRoute(multicast_route_via(ifname), c))
    return Plan(ops=tuple(ops), rollback=(DeleteLink(host_veth, h),))


def _extend_attachment(host: NetnsState, container: NetnsState, existing: Link, *,
                       host_veth: str, cidrs: tuple[IPInterface, ...], mac: str | None,
                       bridge: str, multicast_route: bool) -> Plan:
    h, c, ifname = host.netns, container.netns, existing.name
    ops: list[Op] = []
    host_end = host.link(host_veth)
    if host_end is not None:
        if host_end.master != bridge:
            _bridge_of(host, bridge)
            ops.append(SetMaster(host_veth, bridge, h))
        if not host_end.up:
            ops.append(SetUp(host_veth, h))
    if mac is not None and existing.mac != mac:
        ops.append(SetMac(ifname, mac, c))
    if not existing.up:
        ops.append(SetUp(ifname, c))
    have = set(container.addresses_of(ifname))
    added = [AddAddress(ifname, cidr, c) for cidr in cidrs if cidr not in have]
    ops += added
    route = multicast_route_via(ifname)
    if multicast_route and route not in container.routes:
        ops.append(AddRoute(route, c))
    return Plan(ops=tuple(ops),
                rollback=tuple(DeleteAddress(a.ifname, a.cidr, c) for a in added))


def detach_plan(container: NetnsState, *, cidrs: Sequence[IPInterface] | None = None,
                ifname: str = CONTAINER_IFNAME) -> Plan:
    """Remove ``cidrs`` (all when None) from ``ifname``; with none left, delete the veth.

    Deleting the container end removes the host end too. Addresses that are not there are
    ignored, and a container without ``ifname`` gives an empty plan.
    """
    c = container.netns
    link = container.link(ifname)
    if link is None:
        return Plan()
    have = container.addresses_of(ifname)
    if cidrs is None:
        return Plan(ops=(DeleteLink(ifname, c),))
    gone = [cidr for cidr in dict.fromkeys(cidrs) if cidr in have]
    if len(gone) == len(have):
        return Plan(ops=(DeleteLink(ifname, c),))
    return Plan(ops=tuple(_removal_ops(have, set(gone), ifname, c)))


def _removal_ops(have: Sequence[IPInterface], gone: set[IPInterface], ifname: str,
                 netns: str | None) -> list[Op]:
    """Delete ``gone`` from ``have`` (kernel order) without losing any other address.

    The first IPv4 address of a subnet (same network and prefix length) is its *primary*;
    later ones are *secondaries*, and deleting the primary makes the kernel drop them too
    (``promote_secondaries`` is off by default). So within a subnet group secondaries are
    deleted before the primary (last first), and when the primary goes but some of its
    secondaries stay, those are deleted and added back afterwards.
    """
    groups: dict[object, list[IPInterface]] = {}
    for cidr in have:
        key = cidr.network if isinstance(cidr, ipaddress.IPv4Interface) else cidr
        groups.setdefault(key, []).append(cidr)
    deletes: list[Op] = []
    readds: list[Op] = []
    for members in groups.values():
        doomed = [m for m in members if m in gone]
        survivors = [m for m in members if m not in gone]
        if not doomed:
            continue
        if members[0] in gone and survivors:
            deletes += [DeleteAddress(ifname, m, netns) for m in reversed(members)]
            readds += [AddAddress(ifname, m, netns) for m in survivors]
        else:
            deletes += [DeleteAddress(ifname, m, netns) for m in reversed(doomed)]
    return deletes + readds


def reset_plan(host: NetnsState, *, bridge: str = BRIDGE_NAME,
               prefixes: Sequence[str] = (DEVICE_PREFIX,), names: Sequence[str] = ()) -> Plan:
    """Delete our devices (names starting with ``prefixes``, or in ``names``), then the bridge.

    A host veth end takes the container end with it, so containers lose ``ethwe`` too.
    """
    h = host.netns
    ours = [link.name for link in host.links if link.name != bridge
            and (link.name in names or link.name.startswith(tuple(prefixes)))]
    ops: list[Op] = [DeleteLink(name, h) for name in ours]
    if host.link(bridge) is not None:
        ops.append(DeleteLink(bridge, h))
    return Plan(ops=tuple(ops))


def attachment(container: NetnsState, *, ifname: str = CONTAINER_IFNAME) -> Attachment | None:
    """The container's ``ifname`` MAC and addresses, or None if it is not attached."""
    link = container.link(ifname)
    if link is None:
        return None
    return Attachment(mac=link.mac, cidrs=container.addresses_of(ifname))


def _bridge_of(host: NetnsState, bridge: str) -> Link:
    link = host.link(bridge)
    if link is None:
        why = f'bridge "{bridge}" not present; did you launch weave-router?'
        raise KernelError(errno.ENODEV, why)
    _require_bridge(link, errno.EOPNOTSUPP, "is not a bridge")
    return link


def _require_bridge(link: Link, code: int, why: str) -> None:
    if link.kind != "bridge":
        raise KernelError(code, f'link "{link.name}" {why}')
