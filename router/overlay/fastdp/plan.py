"""The fastdp plan: the kernel state fastdp wants, and the ordered operations that reach it.

Pure: :func:`desired` turns the local configuration, the fastdp peers (peer name ->
underlay IP) and MACs to place by hand (MAC -> peer name; the router places none, the
kernel learns where container MACs are) into a :class:`Desired`;
:func:`diff` compares it with what the port read (``OverlayPort.vxlan``, a
:class:`~router.kernel.port.VxlanDevice` or None) and returns operations in an order the
kernel accepts. The kernel objects on a host::

    weave (bridge) --+-- vethwe-pcap (the router's TAP: sleeve)
                     +-- vethwepl...  (containers)
                     +-- vxlan-6784   (VXLAN: VNI, dstport 6784, local <underlay IP>,
                                       learning on, no default remote)
                           FDB: 00:00:00:00:00:00 dst <peer IP>   one flood entry per peer
                                <heartbeat MAC>   dst <peer IP>   one per peer probed
                                <container MAC>   dst <peer IP>   learned by the kernel from
                                                                  the frames it received
    pinned (static bridge entries): each probed peer's heartbeat MAC to vxlan-6784, our own
    heartbeat MAC to vethwe-pcap, so heartbeats cross TAP -> VXLAN -> TAP, never flooded

Rules of :func:`diff`:

1. No device (or one whose VNI, port, local address, learning or default remote differ: the
   kernel cannot change those in place): delete it (FDB entries first), create it, enslave
   it, set it up, then add every FDB entry.
2. The device is right: MTU, master and up-ness are changed in place; stale FDB entries are
   removed before new ones are added (a MAC that moved to another peer is deleted, then
   re-added: a unicast MAC has one entry).
3. The kernel's learned entries are its own, except two kinds, removed with the stale ones:
   one that sends to an address that has no flood entry (a peer that left fastdp, or a
   sender that never was a fastdp peer: unicast must not go on down a path the router
   gave up), and one for a MAC the plan wants an entry of its own for (it would make the
   add ``EEXIST``).
4. Pins come last (the port must be enslaved first): stale ones removed, then new ones. A
   re-created or re-enslaved device has lost its pins (the kernel flushes them).
5. fastdp off (:func:`teardown`, also for ``reset``): FDB entries removed, then the device
   (its pins go with it; the TAP's pin goes when the TAP or the bridge does).

Heartbeats are probed to every peer that offers fastdp, on fastdp or not (the flood and MAC
entries follow the choice; the heartbeat entry stays so a fallback can end).

Running the operations and diffing again gives nothing (the plan converges); entries are
sorted, so one input always gives one plan.
"""

from __future__ import annotations

import hashlib
import ipaddress
import string
from collections.abc import Mapping
from dataclasses import dataclass

from router.kernel.plumbing import TAP_NAME
from router.kernel.port import (
    FLOOD_MAC,
    VNI_MAX,
    AddFdb,
    AddVxlan,
    DeleteFdb,
    DeleteLink,
    FdbEntry,
    OverlayOp,
    PinMac,
    SetMaster,
    SetMtu,
    SetUp,
    UnpinMac,
    VxlanDevice,
    check_mac,
    check_name,
)

DEFAULT_PORT = 6783  # TCP (and sleeve UDP); the VXLAN device uses DEFAULT_PORT + 1
DEFAULT_VNI = 0x1A7E  # 24 bits; every fastdp host of a mesh uses the same one
HEARTBEAT_MAC_PREFIX = 0x7A  # first octet of heartbeat MACs: locally administered, unicast
_LOW40 = (1 << 40) - 1
Pins = Mapping[str, frozenset[str]]  # bridge port -> MACs pinned to it


def heartbeat_mac(peer: str) -> str:
    """The MAC that fastdp heartbeats to ``peer`` are addressed to.

    ``7a`` then the low 40 bits of the peer name (a Weave peer name is a MAC), or of the
    BLAKE2b hash of a name that is not one.
    """
    raw = peer.replace(":", "")
    if len(raw) == 12 and all(c in string.hexdigits for c in raw):
        low = int(raw, 16) & _LOW40
    else:
        low = int.from_bytes(hashlib.blake2b(peer.encode(), digest_size=5).digest(), "big")
    value = (HEARTBEAT_MAC_PREFIX << 40) | low
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


def vxlan_name(port: int) -> str:
    """Weave's name for the VXLAN device on UDP ``port``: ``vxlan-6784``."""
    return f"vxlan-{port}"


@dataclass(frozen=True)
class LocalConfig:
    """This host's side of fastdp: one VXLAN device on the bridge."""

    local: ipaddress.IPv4Address  # underlay address the device sends from
    mtu: int  # bytes, the container MTU (Weave's default 1376)
    port: int = DEFAULT_PORT + 1  # UDP, Weave's port+1
    vni: int = DEFAULT_VNI
    bridge: str = "weave"
    netns: str | None = None  # None: the router's namespace
    peer_name: str | None = None  # ours: its heartbeat MAC is pinned to the TAP
    tap: str = TAP_NAME  # the data plane's bridge port, where heartbeats come out

    def __post_init__(self) -> None:
        check_name(self.bridge)
        if not 0 <= self.vni <= VNI_MAX:
            raise ValueError(f"VNI {self.vni} out of range 0..{VNI_MAX}")
        if not 0 < self.port < 65536:
            raise ValueError(f"UDP port {self.port} out of range")

    @property
    def name(self) -> str:
        """The device name (``vxlan-6784`` for the default port)."""
        return vxlan_name(self.port)


@dataclass(frozen=True)
class Desired:
    """What the kernel should hold: the device as configured, and exactly these entries."""

    config: LocalConfig
    fdb: frozenset[FdbEntry]
    pins: frozenset[tuple[str, str]] = frozenset()  # (bridge port, MAC)

    def pinned_to(self, port: str) -> frozenset[str]:
        """The MACs that should be pinned to ``port``."""
        return frozenset(mac for p, mac in self.pins if p == port)


def desired(config: LocalConfig, peers: Mapping[str, ipaddress.IPv4Address],
            macs: Mapping[str, str],
            heartbeats: Mapping[str, ipaddress.IPv4Address] | None = None) -> Desired:
    """The kernel state for ``peers`` (name -> underlay IP, those on fastdp), ``macs`` (MAC
    -> peer name) and ``heartbeats`` (name -> underlay IP, the peers to probe).

    One flood entry per distinct peer IP (never our own); one entry per unicast MAC whose
    peer is a fastdp peer (a MAC behind a sleeve peer, or a group MAC, gets none); per
    probed peer, its heartbeat MAC's entry and pin.
    """
    entries = {FdbEntry(FLOOD_MAC, ip) for ip in peers.values() if ip != config.local}
    pins: set[tuple[str, str]] = set()
    if config.peer_name is not None:
        pins.add((config.tap, heartbeat_mac(config.peer_name)))
    for probed, underlay in (heartbeats or {}).items():
        if underlay != config.local:
            entries.add(FdbEntry(heartbeat_mac(probed), underlay))
            pins.add((config.name, heartbeat_mac(probed)))
    taken = {e.mac for e in entries}
    for mac, peer in macs.items():
        ip = peers.get(peer)
        if ip is None or ip == config.local or not _unicast(mac) or mac in taken:
            continue
        entries.add(FdbEntry(mac, ip))
    return Desired(config, frozenset(entries), frozenset(pins))


def pin_ports(config: LocalConfig) -> tuple[str, ...]:
    """The bridge ports whose pins the plan manages (read them for :func:`diff`)."""
    return (config.name,) if config.peer_name is None else (config.name, config.tap)


def _unicast(mac: str) -> bool:
    check_mac(mac)
    return mac != FLOOD_MAC and not int(mac[:2], 16) & 1


def needs_recreate(config: LocalConfig, have: VxlanDevice) -> bool:
    """True when ``have`` differs from ``config`` in what the kernel cannot change in place."""
    return (have.vni != config.vni or have.port != config.port or have.local != config.local
            or not have.learning or have.remote is not None)


def diff(want: Desired, have: VxlanDevice | None, pinned: Pins | None = None
         ) -> tuple[OverlayOp, ...]:
    """Operations that turn ``have`` (None: no such device) and ``pinned`` (port -> MACs, as
    read for :func:`pin_ports`) into ``want``, in order."""
    config = want.config
    pinned = dict(pinned or {})
    if have is None or needs_recreate(config, have):
        removal = () if have is None else _teardown(have, config.netns)
        pinned[config.name] = frozenset()  # a new device has no pins
        return removal + _create(want) + _pin_ops(want, pinned)
    ops: list[OverlayOp] = []
    if have.link.mtu != config.mtu:
        ops.append(SetMtu(config.name, config.mtu, netns=config.netns))
    if have.link.master != config.bridge:
        ops.append(SetMaster(config.name, config.bridge, netns=config.netns))
        pinned[config.name] = frozenset()  # a port that changes bridge loses its pins
    if not have.link.up:
        ops.append(SetUp(config.name, netns=config.netns))
    ops += [DeleteFdb(config.name, e, netns=config.netns) for e in _sorted(have.fdb - want.fdb)]
    ops += [DeleteFdb(config.name, e, netns=config.netns)
            for e in _sorted(stale_learned(want, have))]
    ops += [AddFdb(config.name, e, netns=config.netns) for e in _sorted(want.fdb - have.fdb)]
    return (*ops, *_pin_ops(want, pinned))


def stale_learned(want: Desired, have: VxlanDevice) -> frozenset[FdbEntry]:
    """The learned entries of ``have`` that must go (rule 3): to an address without a flood
    entry, or for a MAC ``want`` has an entry for."""
    floods = {e.dst for e in want.fdb if e.flood}
    ours = {e.mac for e in want.fdb if not e.flood}
    return frozenset(e for e in have.learned if e.dst not in floods or e.mac in ours)


def _pin_ops(want: Desired, pinned: Pins) -> tuple[OverlayOp, ...]:
    netns = want.config.netns
    ops: list[OverlayOp] = []
    for port in pin_ports(want.config):
        have = pinned.get(port, frozenset())
        ops += [UnpinMac(port, mac, netns=netns) for mac in sorted(have - want.pinned_to(port))]
    for port in pin_ports(want.config):
        have = pinned.get(port, frozenset())
        ops += [PinMac(port, mac, netns=netns) for mac in sorted(want.pinned_to(port) - have)]
    return tuple(ops)


def _create(want: Desired) -> tuple[OverlayOp, ...]:
    c = want.config
    return (
        AddVxlan(c.name, vni=c.vni, port=c.port, local=c.local, mtu=c.mtu, netns=c.netns),
        SetMaster(c.name, c.bridge, netns=c.netns),
        SetUp(c.name, netns=c.netns),
        *(AddFdb(c.name, e, netns=c.netns) for e in _sorted(want.fdb)),
    )


def _teardown(have: VxlanDevice, netns: str | None) -> tuple[OverlayOp, ...]:
    name = have.link.name  # learned entries go with the device
    return (*(DeleteFdb(name, e, netns=netns) for e in _sorted(have.fdb)),
            DeleteLink(name, netns=netns))


def teardown(have: VxlanDevice | None, *, netns: str | None = None) -> tuple[OverlayOp, ...]:
    """Operations that remove fastdp's device read from ``netns`` (``reset``)."""
    return () if have is None else _teardown(have, netns)


def _sorted(entries: frozenset[FdbEntry]) -> list[FdbEntry]:
    return sorted(entries, key=lambda e: (e.mac, e.dst))
