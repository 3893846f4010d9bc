"""The fake kernel port's VXLAN device and FDB (router.kernel.fake): the kernel's rules,
as tests/integration/test_fastdp_kernel.py checks them against the real kernel."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from router.errors import KernelError, LocalProtocolError
from router.kernel.fake import FakeKernel
from router.kernel.port import (
    FLOOD_MAC,
    AddBridge,
    AddFdb,
    AddVxlan,
    DeleteFdb,
    DeleteLink,
    FdbEntry,
    PinMac,
    SetMaster,
    UnpinMac,
)

LOCAL = ipaddress.IPv4Address("192.168.1.1")
B = ipaddress.IPv4Address("192.168.1.2")
C = ipaddress.IPv4Address("192.168.1.3")
MAC = "02:00:00:00:00:0a"
DEV = "vxlan-6784"


def vxlan(name: str = DEV, vni: int = 7, port: int = 6784) -> AddVxlan:
    return AddVxlan(name, vni=vni, port=port, local=LOCAL, mtu=1376)


async def refused(kernel: FakeKernel, *ops: object) -> int:
    with pytest.raises(KernelError) as info:
        await kernel.apply(ops)  # type: ignore[arg-type]
    return info.value.errno


async def test_device_rules() -> None:
    kernel = FakeKernel()
    await kernel.apply([AddBridge("weave", mtu=1376), vxlan(), SetMaster(DEV, "weave")])
    device = await kernel.vxlan(DEV)
    assert device is not None and (device.vni, device.port, device.local) == (7, 6784, LOCAL)
    assert device.link.kind == "vxlan" and device.link.master == "weave"
    assert device.learning and device.remote is None
    assert await refused(kernel, vxlan()) == errno.EEXIST
    assert await refused(kernel, vxlan("vxlan-b")) == errno.EEXIST  # same VNI and port
    await kernel.apply([vxlan("vxlan-c", port=6790)])  # another port: fine
    assert await refused(kernel, vxlan("vxlan-d", vni=1 << 24, port=1)) == errno.EINVAL
    with pytest.raises(KernelError) as info:
        await kernel.vxlan("weave")
    assert info.value.errno == errno.EOPNOTSUPP
    assert await kernel.vxlan("nothing") is None


async def test_fdb_rules() -> None:
    kernel = FakeKernel()
    await kernel.apply([vxlan()])
    flood_b, flood_c = FdbEntry(FLOOD_MAC, B), FdbEntry(FLOOD_MAC, C)
    await kernel.apply([AddFdb(DEV, flood_b), AddFdb(DEV, flood_c), AddFdb(DEV, flood_b),
                        AddFdb(DEV, FdbEntry(MAC, B))])
    assert await refused(kernel, AddFdb(DEV, FdbEntry(MAC, C))) == errno.EEXIST
    assert await refused(kernel, AddFdb("lo", flood_b)) == errno.EOPNOTSUPP
    assert await refused(kernel, AddFdb("nosuch", flood_b)) == errno.ENODEV
    await kernel.apply([DeleteFdb(DEV, FdbEntry(MAC, C))])  # the MAC has another remote
    assert await refused(kernel, DeleteFdb(DEV, FdbEntry("02:00:00:00:00:0b", B))) == \
        errno.ENOENT
    await kernel.apply([DeleteFdb(DEV, flood_b)])
    device = await kernel.vxlan(DEV)
    assert device is not None and device.fdb == {flood_c, FdbEntry(MAC, B)}
    await kernel.apply([DeleteLink(DEV), vxlan()])  # entries die with the device
    assert (await kernel.vxlan(DEV)).fdb == frozenset()  # type: ignore[union-attr]


def test_entries_check_their_mac() -> None:
    with pytest.raises(LocalProtocolError):
        FdbEntry("02:00:00:00:00:0G", B)
    assert FdbEntry(FLOOD_MAC, B).flood and not FdbEntry(MAC, B).flood
    assert str(AddFdb(DEV, FdbEntry(MAC, B))) == f"add fdb {MAC} dst {B} dev {DEV}"


async def test_pin_rules() -> None:
    kernel = FakeKernel()
    hb = "02:77:65:00:00:02"
    await kernel.apply([AddBridge("weave", mtu=1376), vxlan(), SetMaster(DEV, "weave"),
                        PinMac(DEV, hb)])
    assert await kernel.pinned_macs(DEV) == {hb}
    await kernel.apply([PinMac(DEV, hb)])  # again: no error, nothing changes
    assert await kernel.pinned_macs(DEV) == {hb}
    assert await refused(kernel, PinMac("lo", hb)) == errno.EOPNOTSUPP
    assert await refused(kernel, UnpinMac(DEV, "02:77:65:00:00:09")) == errno.ENOENT
    await kernel.apply([SetMaster(DEV, None)])  # leaving the bridge drops the pins
    assert await kernel.pinned_macs(DEV) == frozenset()
    await kernel.apply([SetMaster(DEV, "weave"), PinMac(DEV, hb), DeleteLink("weave")])
    assert await kernel.pinned_macs(DEV) == frozenset()
    with pytest.raises(KernelError) as info:
        await kernel.pinned_macs("nosuch")
    assert info.value.errno == errno.ENODEV


async def test_learning_as_the_kernels_vxlan_snoop() -> None:
    kernel = FakeKernel()
    await kernel.apply([vxlan(), AddFdb(DEV, FdbEntry(FLOOD_MAC, B)),
                        AddFdb(DEV, FdbEntry("02:00:00:00:00:0c", B))])
    assert kernel.receive_vxlan(DEV, MAC, B)  # a new source: learned
    assert kernel.receive_vxlan(DEV, "01:00:5e:00:00:01", B)  # a group MAC: never learned
    device = await kernel.vxlan(DEV)
    assert device is not None and device.learned == {FdbEntry(MAC, B)}
    assert device.fdb == {FdbEntry(FLOOD_MAC, B), FdbEntry("02:00:00:00:00:0c", B)}
    assert kernel.receive_vxlan(DEV, MAC, C)  # it moved: the learned entry follows
    assert (await kernel.vxlan(DEV)).learned == {FdbEntry(MAC, C)}  # type: ignore[union-attr]
    # An added entry never moves: a frame from that MAC elsewhere is dropped.
    assert not kernel.receive_vxlan(DEV, "02:00:00:00:00:0c", C)
    assert kernel.receive_vxlan(DEV, "02:00:00:00:00:0c", B)
    assert (await kernel.vxlan(DEV)).learned == {FdbEntry(MAC, C)}  # type: ignore[union-attr]
    # A learned MAC refuses an added entry; deleting another remote leaves it; its own goes.
    assert await refused(kernel, AddFdb(DEV, FdbEntry(MAC, B))) == errno.EEXIST
    await kernel.apply([DeleteFdb(DEV, FdbEntry(MAC, B))])
    assert (await kernel.vxlan(DEV)).learned == {FdbEntry(MAC, C)}  # type: ignore[union-attr]
    await kernel.apply([DeleteFdb(DEV, FdbEntry(MAC, C))])
    assert (await kernel.vxlan(DEV)).learned == frozenset()  # type: ignore[union-attr]
    assert await refused(kernel, DeleteFdb(DEV, FdbEntry(MAC, C))) == errno.ENOENT
    await kernel.apply([AddVxlan("vxlan-n", vni=8, port=6784, local=LOCAL, mtu=1376,
                                 learning=False)])
    assert kernel.receive_vxlan("vxlan-n", MAC, B)
    off = await kernel.vxlan("vxlan-n")
    assert off is not None and not off.learning and off.learned == frozenset()
