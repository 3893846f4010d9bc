"""rtnetlink messages, sans-IO: the requests the kernel port sends most, and the answers.

pyroute2 spends about half a millisecond of Python on every request, however small
(building its message objects, decoding every attribute of every answer); a CNI ADD
makes a dozen. This module packs the few requests the port sends for links, addresses
and routes with :mod:`struct` and decodes only the fields :mod:`router.kernel.port`
models, which costs tens of microseconds. It knows nothing of sockets:
:mod:`router.kernel.netlink` sends what :func:`request` builds and feeds what it reads
to :func:`messages`. It reads VXLAN devices and FDB entries too (fastdp reads them every
pass); the rarer changes (creating bridges and VXLAN devices, adding and deleting FDB
entries) stay with pyroute2.

Layouts are the kernel's (``linux/netlink.h``, ``linux/rtnetlink.h``, ``linux/if_link.h``,
``linux/if_addr.h``, ``linux/veth.h``), in host byte order except where noted.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# netlink header: length, type, flags, sequence, port id
_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol,
#                                       scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_ERRNO = struct.Struct("=i")

AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10

NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_FD = 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LOCAL = 1, 2, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 7, 15
NDA_DST, NDA_LLADDR, NDA_MASTER = 1, 2, 9
AF_BRIDGE = 7
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15

NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

IFF_UP = 0x1
RTPROT_KERNEL, RTPROT_STATIC = 2, 4  # pyroute2 (and so the port, always) adds "static"
RTN_UNICAST = 1
RT_TABLE_MAIN = 254

SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12  # the kernel filters dumps by the request's fields


class DecodeError(ValueError):
    """The kernel's answer does not parse (truncated, lengths that do not add up)."""


# --- building -------------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def request(kind: int, flags: int, seq: int, body: bytes, *attrs: bytes) -> bytes:
    """A whole message: the header (``NLM_F_REQUEST`` always), ``body``, ``attrs``."""
    payload = body + b"".join(attrs)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, flags | NLM_F_REQUEST, seq,
                          0) + payload


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(AF_UNSPEC, 0, index, flags, change)


def get_link(seq: int, *, name: str | None = None, index: int = 0) -> bytes:
    """RTM_GETLINK of one link, by name or index (the answer: one RTM_NEWLINK, or ENODEV)."""
    attrs = (string(IFLA_IFNAME, name),) if name is not None else ()
    return request(RTM_GETLINK, 0, seq, ifinfomsg(index), *attrs)


def dump_links(seq: int) -> bytes:
    return request(RTM_GETLINK, NLM_F_DUMP, seq, ifinfomsg())


def new_veth(seq: int, name: str, mtu: int, *, peer: str, peer_mtu: int,
             peer_mac: str | None = None, peer_netns_fd: int | None = None) -> bytes:
    """``ip link add NAME mtu MTU type veth peer name PEER mtu .. [address ..] [netns FD]``."""
    peer_attrs = [string(IFLA_IFNAME, peer), u32(IFLA_MTU, peer_mtu)]
    if peer_mac is not None:
        peer_attrs.append(attr(IFLA_ADDRESS, mac_bytes(peer_mac)))
    if peer_netns_fd is not None:
        peer_attrs.append(u32(IFLA_NET_NS_FD, peer_netns_fd))
    info = nest(IFLA_LINKINFO, string(IFLA_INFO_KIND, "veth"),
                nest(IFLA_INFO_DATA, nest(VETH_INFO_PEER, ifinfomsg(), *peer_attrs)))
    return request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, ifinfomsg(),
                   string(IFLA_IFNAME, name), u32(IFLA_MTU, mtu), info)


def set_link(seq: int, index: int, *, up: bool | None = None, mtu: int | None = None,
             master: int | None = None, mac: str | None = None) -> bytes:
    """``ip link set``: up/down, the MTU, the master (0: none), the MAC address."""
    attrs = []
    if mtu is not None:
        attrs.append(u32(IFLA_MTU, mtu))
    if master is not None:
        attrs.append(u32(IFLA_MASTER, master))
    if mac is not None:
        attrs.append(attr(IFLA_ADDRESS, mac_bytes(mac)))
    flags, change = (0, 0) if up is None else (IFF_UP if up else 0, IFF_UP)
    return request(RTM_NEWLINK, NLM_F_ACK, seq, ifinfomsg(index, flags, change), *attrs)


def del_link(seq: int, index: int) -> bytes:
    return request(RTM_DELLINK, NLM_F_ACK, seq, ifinfomsg(index))


def change_address(seq: int, *, add: bool, index: int,
                   cidr: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bytes:
    """``ip addr add|del CIDR dev INDEX`` (no broadcast address, as pyroute2 adds it)."""
    family = AF_INET if cidr.version == 4 else AF_INET6
    packed = cidr.ip.packed
    body = _IFADDRMSG.pack(family, cidr.network.prefixlen, 0, 0, index)
    kind, flags = (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL) if add else (RTM_DELADDR, 0)
    return request(kind, flags | NLM_F_ACK, seq, body, attr(IFA_LOCAL, packed),
                   attr(IFA_ADDRESS, packed))


def dump_addresses(seq: int, index: int = 0) -> bytes:
    """Every address; on a strict socket (:data:`NETLINK_GET_STRICT_CHK`) with ``index``,
    that link's only."""
    return request(RTM_GETADDR, NLM_F_DUMP, seq,
                   _IFADDRMSG.pack(AF_UNSPEC, 0, 0, 0, index))


def change_route(seq: int, *, add: bool,
                 dst: ipaddress.IPv4Network | ipaddress.IPv6Network, scope: int,
                 oif: int | None = None,
                 gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
                 ) -> bytes:
    """``ip route add|del DST [via GW] [dev OIF] scope .. table main proto static``."""
    family = AF_INET if dst.version == 4 else AF_INET6
    body = _RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN,
                       RTPROT_STATIC if add else 0, scope, RTN_UNICAST, 0)
    attrs = [u32(RTA_TABLE, RT_TABLE_MAIN)]
    if dst.prefixlen:
        attrs.append(attr(RTA_DST, dst.network_address.packed))
    if oif is not None:
        attrs.append(u32(RTA_OIF, oif))
    if gateway is not None:
        attrs.append(attr(RTA_GATEWAY, gateway.packed))
    kind, flags = (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL) if add else (RTM_DELROUTE, 0)
    return request(kind, flags | NLM_F_ACK, seq, body, *attrs)


def dump_fdb(seq: int, index: int = 0) -> bytes:
    """The bridge FDB entries (``bridge fdb show``): a device's own (``self``) and its
    bridge's for it as a port; on a strict socket with ``index``, that device's only."""
    return request(RTM_GETNEIGH, NLM_F_DUMP, seq, _NDMSG.pack(AF_BRIDGE, index, 0, 0, 0))


def dump_routes(seq: int) -> bytes:
    return request(RTM_GETROUTE, NLM_F_DUMP, seq, _RTMSG.pack(AF_UNSPEC, 0, 0, 0, 0,
                                                              0, 0, 0, 0))


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    kind: int
    flags: int
    seq: int
    payload: bytes


def messages(data: bytes) -> Iterator[Message]:
    """The messages of one datagram the kernel sent."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise DecodeError(f"netlink message of length {length} at {offset} of "
                              f"{len(data)} bytes")
        yield Message(kind, flags, seq, data[offset + _NLMSGHDR.size:offset + length])
        offset += (length + 3) & ~3


def error_code(message: Message) -> int:
    """The errno of an NLMSG_ERROR (0: an acknowledgement)."""
    if len(message.payload) < _ERRNO.size:
        raise DecodeError("short NLMSG_ERROR")
    return -int(_ERRNO.unpack_from(message.payload)[0])


def attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """Type -> payload of the attributes from ``offset`` (the first of a type wins)."""
    found: dict[int, bytes] = {}
    end = len(data)
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > end:
            raise DecodeError(f"attribute of length {length} at {offset} of {end} bytes")
        found.setdefault(kind & NLA_TYPE_MASK, data[offset + _RTATTR.size:offset + length])
        offset += (length + 3) & ~3
    return found


def _fixed(payload: bytes, header: struct.Struct,
           what: str) -> tuple[tuple[int, ...], dict[int, bytes]]:
    """A message's fixed header fields and its attributes."""
    if len(payload) < header.size:
        raise DecodeError(f"short {what}")
    return header.unpack_from(payload), attributes(payload, header.size)


def _mac(value: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in value or b"")


def _string(value: bytes | None) -> str:
    return "" if value is None else value.split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: bytes | None) -> int:
    return 0 if value is None or len(value) < 4 else int(_U32.unpack_from(value)[0])


@dataclass(frozen=True)
class LinkInfo:
    """The fields of an RTM_NEWLINK the port models (its master as an index)."""

    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool
    master: int


def decode_link(payload: bytes) -> LinkInfo:
    (_, _, index, flags, _), attrs = _fixed(payload, _IFINFOMSG, "ifinfomsg")
    kind = ""
    if (info := attrs.get(IFLA_LINKINFO)) is not None:
        kind = _string(attributes(info, 0).get(IFLA_INFO_KIND))
    return LinkInfo(index=index, name=_string(attrs.get(IFLA_IFNAME)), kind=kind,
                    mac=_mac(attrs.get(IFLA_ADDRESS)), mtu=_u32(attrs.get(IFLA_MTU)),
                    up=bool(flags & IFF_UP), master=_u32(attrs.get(IFLA_MASTER)))


@dataclass(frozen=True)
class VxlanInfo:
    vni: int
    port: int  # UDP, host order
    local: ipaddress.IPv4Address | None
    group: ipaddress.IPv4Address | None
    learning: bool


def decode_vxlan(payload: bytes) -> VxlanInfo | None:
    """The VXLAN settings of an RTM_NEWLINK; None for another kind of link."""
    info = _fixed(payload, _IFINFOMSG, "ifinfomsg")[1].get(IFLA_LINKINFO)
    if info is None:
        return None
    nested = attributes(info, 0)
    if _string(nested.get(IFLA_INFO_KIND)) != "vxlan" or IFLA_INFO_DATA not in nested:
        return None
    data = attributes(nested[IFLA_INFO_DATA], 0)
    port = data.get(IFLA_VXLAN_PORT)
    local, group = data.get(IFLA_VXLAN_LOCAL), data.get(IFLA_VXLAN_GROUP)
    learning = data.get(IFLA_VXLAN_LEARNING)
    return VxlanInfo(vni=_u32(data.get(IFLA_VXLAN_ID)),
                     port=int(_BE16.unpack(port)[0]) if port and len(port) == 2 else 0,
                     local=_ipv4(local) if local else None,
                     group=_ipv4(group) if group else None,
                     learning=bool(learning and learning[0]))


@dataclass(frozen=True)
class NeighbourInfo:
    """A bridge FDB entry (an RTM_NEWNEIGH of family AF_BRIDGE)."""

    index: int
    state: int
    flags: int
    mac: str
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None  # a VXLAN entry's remote
    master: int


def decode_neighbour(payload: bytes) -> NeighbourInfo:
    (_, index, state, flags, _), attrs = _fixed(payload, _NDMSG, "ndmsg")
    dst = attrs.get(NDA_DST)
    if dst is not None and len(dst) not in (4, 16):
        raise DecodeError(f"an FDB destination of {len(dst)} bytes")
    return NeighbourInfo(index=index, state=state, flags=flags,
                         mac=_mac(attrs.get(NDA_LLADDR)),
                         dst=ipaddress.ip_address(dst) if dst else None,
                         master=_u32(attrs.get(NDA_MASTER)))


@dataclass(frozen=True)
class AddressInfo:
    index: int
    cidr: ipaddress.IPv4Interface | ipaddress.IPv6Interface


def decode_address(payload: bytes) -> AddressInfo | None:
    """None for an address of neither family, or without one."""
    (family, prefixlen, _, _, index), attrs = _fixed(payload, _IFADDRMSG, "ifaddrmsg")
    packed = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if packed is None or family not in (AF_INET, AF_INET6):
        return None
    try:
        return AddressInfo(index, ipaddress.ip_interface(
            f"{_ip(packed, family)}/{prefixlen}"))
    except ValueError as exc:  # a prefix longer than the address
        raise DecodeError(f"address: {exc}") from None


@dataclass(frozen=True)
class RouteInfo:
    table: int
    protocol: int
    type: int
    scope: int
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    oif: int
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None


def decode_route(payload: bytes) -> RouteInfo | None:
    """None for a route of neither IP family."""
    (family, dst_len, _, _, table, protocol, scope, kind, _), attrs = _fixed(
        payload, _RTMSG, "rtmsg")
    if family not in (AF_INET, AF_INET6):
        return None
    if (raw_table := attrs.get(RTA_TABLE)) is not None:
        table = _u32(raw_table)
    raw_dst = attrs.get(RTA_DST)
    dst_ip = _ip(raw_dst, family) if raw_dst else _ip(
        bytes(4 if family == AF_INET else 16), family)
    gateway = attrs.get(RTA_GATEWAY)
    try:
        dst = ipaddress.ip_network(f"{dst_ip}/{dst_len}")
    except ValueError as exc:  # host bits set, a prefix longer than the address
        raise DecodeError(f"route: {exc}") from None
    return RouteInfo(table=table, protocol=protocol, type=kind, scope=scope, dst=dst,
                     oif=_u32(attrs.get(RTA_OIF)),
                     gateway=_ip(gateway, family) if gateway else None)


def _ipv4(packed: bytes) -> ipaddress.IPv4Address:
    if len(packed) != 4:
        raise DecodeError(f"an IPv4 address of {len(packed)} bytes")
    return ipaddress.IPv4Address(packed)


def _ip(packed: bytes, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if len(packed) != (4 if family == AF_INET else 16):
        raise DecodeError(f"an address of {len(packed)} bytes in family {family}")
    return ipaddress.ip_address(packed)


class Answer:
    """The answer to request ``seq``, from the datagrams read after sending it."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.messages: list[Message] = []  # the data messages (RTM_NEW*)
        self.complete = False
        self.errno = 0  # the kernel's error (0: none)
        self.interrupted = False  # a dump the kernel says changed while it was read

    def feed(self, data: bytes) -> bool:
        """Take one datagram; True once the answer is complete."""
        for message in messages(data):
            if message.seq != self.seq or self.complete:
                continue  # a late answer to an earlier request on this socket
            if message.flags & NLM_F_DUMP_INTR:
                self.interrupted = True
            if message.kind == NLMSG_DONE:
                self.complete = True
            elif message.kind == NLMSG_ERROR:
                self.errno, self.complete = error_code(message), True
            else:
                self.messages.append(message)
                self.complete = not message.flags & NLM_F_MULTI
        return self.complete
