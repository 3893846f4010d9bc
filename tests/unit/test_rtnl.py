"""router.kernel.rtnl: the rtnetlink requests, byte for byte, and the answers' decoding.

The layouts are checked against the kernel's structures here; the integration tests of
the netlink port (tests/integration/test_kernel_netlink.py) send them to a real kernel
and compare what it did with ``ip``'s view.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.kernel import rtnl

HEADER = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")


def header(message: bytes) -> tuple[int, int, int, int, int]:
    return HEADER.unpack_from(message)


def reply(kind: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(HEADER.size + len(payload), kind, flags, seq, 0) + payload + \
        b"\0" * (-len(payload) % 4)


def link_payload(index: int, name: str, *, flags: int = 0, kind: str | None = None,
                 mac: bytes = b"", mtu: int = 1500, master: int = 0) -> bytes:
    attrs = [rtnl.string(rtnl.IFLA_IFNAME, name), rtnl.u32(rtnl.IFLA_MTU, mtu)]
    if mac:
        attrs.append(rtnl.attr(rtnl.IFLA_ADDRESS, mac))
    if master:
        attrs.append(rtnl.u32(rtnl.IFLA_MASTER, master))
    if kind is not None:
        attrs.append(rtnl.nest(rtnl.IFLA_LINKINFO, rtnl.string(rtnl.IFLA_INFO_KIND, kind)))
    return IFINFO.pack(0, 1, index, flags, 0) + b"".join(attrs)


def test_a_veth_into_another_namespace_is_the_kernels_nested_layout() -> None:
    message = rtnl.new_veth(7, "vethwecn1", 1376, peer="eth0", peer_mtu=1376,
                            peer_mac="02:00:00:aa:bb:cc", peer_netns_fd=9)
    length, kind, flags, seq, pid = header(message)
    assert (length, kind, seq, pid) == (len(message), rtnl.RTM_NEWLINK, 7, 0)
    assert flags == rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
    body = message[HEADER.size:]
    assert IFINFO.unpack_from(body) == (0, 0, 0, 0, 0)
    attrs = rtnl.attributes(body, IFINFO.size)
    assert attrs[rtnl.IFLA_IFNAME] == b"vethwecn1\0"
    assert struct.unpack("=I", attrs[rtnl.IFLA_MTU]) == (1376,)
    info = rtnl.attributes(attrs[rtnl.IFLA_LINKINFO], 0)
    assert info[rtnl.IFLA_INFO_KIND] == b"veth\0"
    peer = rtnl.attributes(info[rtnl.IFLA_INFO_DATA], 0)[rtnl.VETH_INFO_PEER]
    assert IFINFO.unpack_from(peer) == (0, 0, 0, 0, 0)
    peer_attrs = rtnl.attributes(peer, IFINFO.size)
    assert peer_attrs[rtnl.IFLA_IFNAME] == b"eth0\0"
    assert peer_attrs[rtnl.IFLA_ADDRESS] == bytes.fromhex("020000aabbcc")
    assert struct.unpack("=I", peer_attrs[rtnl.IFLA_NET_NS_FD]) == (9,)
    # nested attributes carry NLA_F_NESTED, as the kernel's strict parsing wants
    info_type = struct.unpack_from("=HH", body, IFINFO.size + 16 + 8)
    assert info_type[1] == rtnl.IFLA_LINKINFO | rtnl.NLA_F_NESTED


@pytest.mark.parametrize(("change", "flags_change", "attrs"), [
    ({"up": True}, (rtnl.IFF_UP, rtnl.IFF_UP), {}),
    ({"up": False}, (0, rtnl.IFF_UP), {}),
    ({"mtu": 9000}, (0, 0), {rtnl.IFLA_MTU: struct.pack("=I", 9000)}),
    ({"master": 0}, (0, 0), {rtnl.IFLA_MASTER: struct.pack("=I", 0)}),
    ({"mac": "AA:bb:cc:dd:ee:0f"}, (0, 0), {rtnl.IFLA_ADDRESS: bytes.fromhex("aabbccddee0f")}),
])
def test_setting_a_link_changes_only_what_is_asked(
        change: dict[str, object], flags_change: tuple[int, int],
        attrs: dict[int, bytes]) -> None:
    message = rtnl.set_link(3, 42, **change)  # type: ignore[arg-type]
    _, kind, flags, _, _ = header(message)
    assert (kind, flags) == (rtnl.RTM_NEWLINK, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK)
    _, _, index, iff, ifchange = IFINFO.unpack_from(message, HEADER.size)
    assert (index, (iff, ifchange)) == (42, flags_change)
    assert rtnl.attributes(message[HEADER.size:], IFINFO.size) == attrs


def test_an_address_is_local_and_peer_with_no_broadcast() -> None:
    cidr = ipaddress.IPv4Interface("10.32.0.7/12")
    message = rtnl.change_address(1, add=True, index=5, cidr=cidr)
    _, kind, flags, _, _ = header(message)
    assert kind == rtnl.RTM_NEWADDR and flags & rtnl.NLM_F_EXCL
    assert struct.unpack_from("=BBBBI", message, HEADER.size) == (rtnl.AF_INET, 12, 0, 0, 5)
    attrs = rtnl.attributes(message[HEADER.size:], 8)
    assert attrs == {rtnl.IFA_LOCAL: cidr.ip.packed, rtnl.IFA_ADDRESS: cidr.ip.packed}
    _, kind, flags, _, _ = header(rtnl.change_address(2, add=False, index=5, cidr=cidr))
    assert kind == rtnl.RTM_DELADDR and not flags & rtnl.NLM_F_CREATE


def test_a_route_is_static_in_the_main_table() -> None:
    message = rtnl.change_route(1, add=True, dst=ipaddress.IPv4Network("0.0.0.0/0"),
                                scope=0, oif=4,
                                gateway=ipaddress.IPv4Address("10.32.0.1"))
    assert struct.unpack_from("=BBBBBBBBI", message, HEADER.size) == (
        rtnl.AF_INET, 0, 0, 0, rtnl.RT_TABLE_MAIN, rtnl.RTPROT_STATIC, 0, rtnl.RTN_UNICAST, 0)
    attrs = rtnl.attributes(message[HEADER.size:], 12)
    assert rtnl.RTA_DST not in attrs  # a default route names no destination
    assert attrs[rtnl.RTA_OIF] == struct.pack("=I", 4)
    assert attrs[rtnl.RTA_GATEWAY] == bytes([10, 32, 0, 1])
    multicast = rtnl.change_route(2, add=False, dst=ipaddress.IPv4Network("224.0.0.0/4"),
                                  scope=253, oif=4)
    assert header(multicast)[1] == rtnl.RTM_DELROUTE
    assert rtnl.attributes(multicast[HEADER.size:], 12)[rtnl.RTA_DST] == bytes([224, 0, 0, 0])


def test_a_link_decodes_to_what_the_port_models() -> None:
    payload = link_payload(6, "vethwecn1", flags=rtnl.IFF_UP | 0x1000, kind="veth",
                           mac=bytes.fromhex("0A1B2C3D4E5F"), mtu=1376, master=3)
    assert rtnl.decode_link(payload) == rtnl.LinkInfo(
        index=6, name="vethwecn1", kind="veth", mac="0a:1b:2c:3d:4e:5f", mtu=1376, up=True,
        master=3)
    plain = rtnl.decode_link(link_payload(1, "lo"))
    assert (plain.kind, plain.mac, plain.up, plain.master) == ("", "", False, 0)


def test_addresses_of_both_families_and_local_before_peer() -> None:
    body = struct.pack("=BBBBI", rtnl.AF_INET, 32, 0, 0, 9)
    point_to_point = body + rtnl.attr(rtnl.IFA_ADDRESS, bytes([10, 0, 0, 2])) + \
        rtnl.attr(rtnl.IFA_LOCAL, bytes([10, 0, 0, 1]))
    assert rtnl.decode_address(point_to_point) == rtnl.AddressInfo(
        9, ipaddress.IPv4Interface("10.0.0.1/32"))
    v6 = struct.pack("=BBBBI", rtnl.AF_INET6, 64, 0, 0, 2) + rtnl.attr(
        rtnl.IFA_ADDRESS, ipaddress.IPv6Address("fe80::1").packed)
    assert rtnl.decode_address(v6) == rtnl.AddressInfo(2, ipaddress.IPv6Interface("fe80::1/64"))
    assert rtnl.decode_address(struct.pack("=BBBBI", 17, 0, 0, 0, 2)) is None
    with pytest.raises(rtnl.DecodeError):  # an IPv4 address of 16 bytes
        rtnl.decode_address(struct.pack("=BBBBI", rtnl.AF_INET, 24, 0, 0, 2) + rtnl.attr(
            rtnl.IFA_ADDRESS, bytes(16)))


def test_routes_take_their_table_attribute_and_a_default_destination() -> None:
    body = struct.pack("=BBBBBBBBI", rtnl.AF_INET6, 0, 0, 0, 252, rtnl.RTPROT_STATIC, 0,
                       rtnl.RTN_UNICAST, 0)
    route = rtnl.decode_route(body + rtnl.u32(rtnl.RTA_TABLE, rtnl.RT_TABLE_MAIN)
                              + rtnl.u32(rtnl.RTA_OIF, 3))
    assert route == rtnl.RouteInfo(table=rtnl.RT_TABLE_MAIN, protocol=rtnl.RTPROT_STATIC,
                                   type=rtnl.RTN_UNICAST, scope=0,
                                   dst=ipaddress.IPv6Network("::/0"), oif=3, gateway=None)
    with pytest.raises(rtnl.DecodeError):  # host bits set
        rtnl.decode_route(struct.pack("=BBBBBBBBI", rtnl.AF_INET, 8, 0, 0, 254, 4, 0, 1, 0)
                          + rtnl.attr(rtnl.RTA_DST, bytes([10, 1, 2, 3])))


def test_a_vxlan_device_decodes_its_settings_and_other_kinds_are_none() -> None:
    data = rtnl.nest(rtnl.IFLA_INFO_DATA, rtnl.u32(rtnl.IFLA_VXLAN_ID, 0xABCDEF),
                     rtnl.attr(rtnl.IFLA_VXLAN_LOCAL, bytes([10, 2, 0, 1])),
                     rtnl.attr(rtnl.IFLA_VXLAN_LEARNING, b"\0"),
                     rtnl.attr(rtnl.IFLA_VXLAN_PORT, struct.pack("!H", 6784)))
    payload = IFINFO.pack(0, 1, 8, 0, 0) + rtnl.string(rtnl.IFLA_IFNAME, "vxlan-6784") + \
        rtnl.nest(rtnl.IFLA_LINKINFO, rtnl.string(rtnl.IFLA_INFO_KIND, "vxlan"), data)
    assert rtnl.decode_vxlan(payload) == rtnl.VxlanInfo(
        vni=0xABCDEF, port=6784, local=ipaddress.IPv4Address("10.2.0.1"), group=None,
        learning=False)
    assert rtnl.decode_vxlan(link_payload(3, "veth0", kind="veth")) is None
    assert rtnl.decode_vxlan(link_payload(1, "lo")) is None


def test_fdb_entries_decode_with_their_remote_and_master() -> None:
    ndmsg = struct.Struct("=BxxxiHBB")
    own = ndmsg.pack(rtnl.AF_BRIDGE, 8, 0x80, 0x02, 0) + rtnl.attr(
        rtnl.NDA_LLADDR, bytes(6)) + rtnl.attr(rtnl.NDA_DST, bytes([10, 2, 0, 3]))
    assert rtnl.decode_neighbour(own) == rtnl.NeighbourInfo(
        index=8, state=0x80, flags=0x02, mac="00:00:00:00:00:00",
        dst=ipaddress.IPv4Address("10.2.0.3"), master=0)
    pinned = ndmsg.pack(rtnl.AF_BRIDGE, 9, 0x40, 0x04, 0) + rtnl.attr(
        rtnl.NDA_LLADDR, bytes.fromhex("02AB00000001")) + rtnl.u32(rtnl.NDA_MASTER, 4)
    entry = rtnl.decode_neighbour(pinned)
    assert (entry.mac, entry.dst, entry.master) == ("02:ab:00:00:00:01", None, 4)
    request = rtnl.dump_fdb(4, index=9)
    assert header(request)[1:3] == (rtnl.RTM_GETNEIGH, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP)
    assert ndmsg.unpack_from(request, HEADER.size) == (rtnl.AF_BRIDGE, 9, 0, 0, 0)


def test_an_answer_is_an_ack_an_error_or_a_dump_to_its_end() -> None:
    ack = rtnl.Answer(5)
    assert ack.feed(reply(rtnl.NLMSG_ERROR, 5, struct.pack("=i", 0) + bytes(16)))
    assert (ack.errno, ack.messages) == (0, [])
    failed = rtnl.Answer(6)
    stale = reply(rtnl.NLMSG_ERROR, 5, struct.pack("=i", -errno.EEXIST) + bytes(16))
    assert not failed.feed(stale)  # a late answer to another request is not ours
    assert failed.feed(reply(rtnl.NLMSG_ERROR, 6, struct.pack("=i", -errno.ENODEV)
                             + bytes(16)))
    assert failed.errno == errno.ENODEV
    dump = rtnl.Answer(7)
    part = reply(rtnl.RTM_NEWLINK, 7, link_payload(1, "lo"), rtnl.NLM_F_MULTI)
    assert not dump.feed(part + reply(rtnl.RTM_NEWLINK, 7, link_payload(2, "eth0"),
                                      rtnl.NLM_F_MULTI | rtnl.NLM_F_DUMP_INTR))
    assert dump.feed(reply(rtnl.NLMSG_DONE, 7, struct.pack("=i", 0), rtnl.NLM_F_MULTI))
    assert [rtnl.decode_link(m.payload).name for m in dump.messages] == ["lo", "eth0"]
    assert dump.interrupted and dump.errno == 0
    single = rtnl.Answer(8)  # a get: one message, no NLM_F_MULTI
    assert single.feed(reply(rtnl.RTM_NEWLINK, 8, link_payload(1, "lo")))
    assert len(single.messages) == 1


def test_lengths_that_do_not_add_up_are_decode_errors() -> None:
    whole = reply(rtnl.RTM_NEWLINK, 1, link_payload(1, "lo"))
    with pytest.raises(rtnl.DecodeError):
        list(rtnl.messages(whole[:-8]))
    with pytest.raises(rtnl.DecodeError):
        rtnl.attributes(rtnl.attr(rtnl.IFLA_IFNAME, b"lo\0")[:-4] + b"\xff\xff", 0)
    with pytest.raises(rtnl.DecodeError):
        rtnl.decode_link(b"\0" * 8)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_a_decode_error(data: bytes) -> None:
    for decode in (rtnl.decode_link, rtnl.decode_address, rtnl.decode_route,
                   rtnl.decode_vxlan, rtnl.decode_neighbour):
        with contextlib.suppress(rtnl.DecodeError):
            decode(data)
    with contextlib.suppress(rtnl.DecodeError):
        list(rtnl.messages(data))
