"""The fastdp plan (router.overlay.fastdp.plan) applied to the fake kernel port.

For any actual state (no device, a device with other settings, stale or missing FDB
entries) and any desired state, running the diff reaches the desired state, and a second
diff is empty. Operations come in an order the kernel accepts.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import KernelError
from router.kernel.fake import FakeKernel
from router.kernel.port import (
    FLOOD_MAC,
    AddBridge,
    AddFdb,
    AddVxlan,
    DeleteFdb,
    DeleteLink,
    FdbEntry,
    Link,
    OverlayOp,
    PinMac,
    SetMaster,
    SetMtu,
    SetUp,
    UnpinMac,
    VxlanDevice,
)
from router.overlay.fastdp.plan import (
    DEFAULT_VNI,
    Desired,
    LocalConfig,
    Pins,
    desired,
    diff,
    heartbeat_mac,
    needs_recreate,
    pin_ports,
    stale_learned,
    teardown,
)

IPS = [ipaddress.IPv4Address(f"192.168.1.{i}") for i in range(1, 6)]
MACS = [f"02:00:00:00:00:{i:02x}" for i in range(1, 6)] + ["01:00:5e:00:00:01", FLOOD_MAC]
PEERS = ["peer-a", "peer-b", "peer-c", "aa:bb:cc:00:00:0d"]
OWN_NAME = "aa:bb:cc:00:00:01"
HB_MACS = [heartbeat_mac(p) for p in [*PEERS, OWN_NAME]] + ["7a:00:00:00:00:99"]
DEV = "vxlan-6784"
TAP = "vethwe-pcap"


@dataclass(frozen=True)
class Actual:
    present: bool
    vni: int
    port: int
    local: ipaddress.IPv4Address
    mtu: int
    enslaved: bool
    up: bool
    flood: frozenset[ipaddress.IPv4Address]
    unicast: dict[str, ipaddress.IPv4Address]
    vxlan_pins: frozenset[str]
    tap_pins: frozenset[str]
    learning: bool = True
    learned: tuple[tuple[str, ipaddress.IPv4Address], ...] = ()  # frames received


actuals = st.builds(
    Actual, present=st.booleans(), vni=st.sampled_from([DEFAULT_VNI, 42]),
    port=st.sampled_from([6784, 6790]), local=st.sampled_from(IPS[:2]),
    mtu=st.sampled_from([1376, 1400, 8950]), enslaved=st.booleans(), up=st.booleans(),
    flood=st.frozensets(st.sampled_from(IPS)),
    unicast=st.dictionaries(st.sampled_from(MACS[:5]), st.sampled_from(IPS)),
    vxlan_pins=st.frozensets(st.sampled_from(HB_MACS)),
    tap_pins=st.frozensets(st.sampled_from(HB_MACS)),
    learning=st.booleans(),
    learned=st.lists(st.tuples(st.sampled_from(MACS[:5] + HB_MACS), st.sampled_from(IPS)),
                     max_size=6).map(tuple),
)
configs = st.builds(LocalConfig, local=st.sampled_from(IPS[:2]),
                    mtu=st.sampled_from([1376, 1400, 8950]),
                    peer_name=st.sampled_from([None, OWN_NAME]))
peer_maps = st.dictionaries(st.sampled_from(PEERS), st.sampled_from(IPS))
mac_maps = st.dictionaries(st.sampled_from(MACS), st.sampled_from([*PEERS, "unknown"]))


def build(kernel: FakeKernel, actual: Actual) -> None:
    async def tap() -> None:
        await kernel.apply([AddBridge("weave", mtu=1376)])
        await kernel.open_tap(TAP)
        await kernel.apply([SetMaster(TAP, "weave"), *(PinMac(TAP, m) for m in actual.tap_pins)])

    trio.run(tap)
    ops: list[object] = []
    if actual.present:
        ops.append(AddVxlan(DEV, vni=actual.vni, port=actual.port,
                            local=actual.local, mtu=actual.mtu, learning=actual.learning))
        if actual.enslaved:
            ops.append(SetMaster(DEV, "weave"))
        if actual.up:
            ops.append(SetUp(DEV))
        ops += [AddFdb(DEV, FdbEntry(FLOOD_MAC, ip)) for ip in actual.flood]
        ops += [AddFdb(DEV, FdbEntry(mac, ip))
                for mac, ip in actual.unicast.items()]
        if actual.enslaved:
            ops += [PinMac(DEV, mac) for mac in actual.vxlan_pins]
    trio.run(kernel.apply, ops)
    if actual.present:
        for mac, sender in actual.learned:
            kernel.receive_vxlan(DEV, mac, sender)


def pins(kernel: FakeKernel, config: LocalConfig) -> Pins:
    async def read_all() -> dict[str, frozenset[str]]:
        found = {}
        for port in pin_ports(config):
            with contextlib.suppress(KernelError):
                found[port] = await kernel.pinned_macs(port)
        return found

    return trio.run(read_all)


def read(kernel: FakeKernel, name: str = DEV) -> VxlanDevice | None:
    return trio.run(lambda: kernel.vxlan(name))


def apply(kernel: FakeKernel, ops: Sequence[OverlayOp]) -> None:
    trio.run(kernel.apply, ops)


def reached(want: Desired, have: VxlanDevice | None, pinned: Pins) -> bool:
    return (have is not None and not needs_recreate(want.config, have)
            and have.link.mtu == want.config.mtu and have.link.master == want.config.bridge
            and have.link.up and have.fdb == want.fdb and not stale_learned(want, have)
            and all(pinned.get(port) == want.pinned_to(port) for port in pin_ports(want.config)))


def check_order(ops: Sequence[OverlayOp]) -> None:
    kinds = [type(op) for op in ops]
    if AddVxlan in kinds:
        assert all(i > kinds.index(AddVxlan) for i, k in enumerate(kinds) if k is AddFdb)
    if DeleteLink in kinds:
        assert all(i < kinds.index(DeleteLink) for i, k in enumerate(kinds) if k is DeleteFdb)
        assert kinds.index(DeleteLink) < kinds.index(AddVxlan)
    fdb_ops = [i for i, k in enumerate(kinds) if k in (AddFdb, DeleteFdb, AddVxlan, SetMaster)]
    pin_ops = [i for i, k in enumerate(kinds) if k in (PinMac, UnpinMac)]
    assert not fdb_ops or not pin_ops or max(fdb_ops) < min(pin_ops)
    deletes = [i for i, k in enumerate(kinds) if k is DeleteFdb]
    adds = [i for i, k in enumerate(kinds) if k is AddFdb]
    assert not deletes or not adds or max(deletes) < min(adds)


@settings(max_examples=150, deadline=None)
@given(actual=actuals, config=configs, peers=peer_maps, macs=mac_maps, probed=peer_maps)
def test_the_diff_reaches_the_desired_state_and_then_is_empty(
        actual: Actual, config: LocalConfig, peers: dict[str, ipaddress.IPv4Address],
        macs: dict[str, str], probed: dict[str, ipaddress.IPv4Address]) -> None:
    kernel = FakeKernel()
    build(kernel, actual)
    want = desired(config, peers, macs, probed)
    ops = diff(want, read(kernel), pins(kernel, config))
    check_order(ops)
    apply(kernel, ops)
    have, pinned = read(kernel), pins(kernel, config)
    assert reached(want, have, pinned), (ops, have, pinned)
    assert diff(want, have, pinned) == ()
    assert diff(want, have, pinned) == diff(want, read(kernel), pins(kernel, config))
    apply(kernel, teardown(have))
    assert read(kernel) is None


def test_desired_entries() -> None:
    config = LocalConfig(local=IPS[0], mtu=1376)
    peers = {"a": IPS[1], "b": IPS[2], "c": IPS[2], "self": IPS[0]}
    macs = {MACS[0]: "a", MACS[1]: "b", MACS[2]: "sleeve-peer", MACS[3]: "self",
            "01:00:5e:00:00:01": "a"}
    want = desired(config, peers, macs)
    assert want.fdb == {FdbEntry(FLOOD_MAC, IPS[1]), FdbEntry(FLOOD_MAC, IPS[2]),
                        FdbEntry(MACS[0], IPS[1]), FdbEntry(MACS[1], IPS[2])}
    assert config.name == "vxlan-6784" and config.port == 6784


def converged(config: LocalConfig, peers: dict[str, ipaddress.IPv4Address],
              macs: dict[str, str] | None = None) -> tuple[FakeKernel, Desired]:
    kernel = FakeKernel()
    apply(kernel, [AddBridge("weave", mtu=1376)])
    want = desired(config, peers, macs or {})
    apply(kernel, diff(want, read(kernel)))
    return kernel, want


def test_first_plan_creates_then_enslaves_then_adds_entries() -> None:
    config = LocalConfig(local=IPS[0], mtu=1376)
    ops = diff(desired(config, {"a": IPS[1]}, {MACS[0]: "a"}), None)
    assert [str(op) for op in ops] == [
        f"add vxlan {DEV} id {DEFAULT_VNI} dstport 6784 local {IPS[0]} learning mtu 1376",
        f"set {DEV} master weave", f"set {DEV} up",
        f"add fdb {FLOOD_MAC} dst {IPS[1]} dev {DEV}",
        f"add fdb {MACS[0]} dst {IPS[1]} dev {DEV}",
    ]


def test_mtu_changes_in_place_and_a_new_local_ip_recreates() -> None:
    config = LocalConfig(local=IPS[0], mtu=1376)
    kernel, _ = converged(config, {"a": IPS[1]})
    have = read(kernel)
    assert diff(desired(LocalConfig(local=IPS[0], mtu=1400), {"a": IPS[1]}, {}), have) == (
        SetMtu(DEV, 1400),)
    ops = diff(desired(LocalConfig(local=IPS[1], mtu=1376), {"a": IPS[2]}, {}), have)
    assert [type(op) for op in ops] == [DeleteFdb, DeleteLink, AddVxlan, SetMaster, SetUp,
                                        AddFdb]


def test_a_mac_that_moves_is_deleted_before_it_is_re_added() -> None:
    config = LocalConfig(local=IPS[0], mtu=1376)
    peers = {"a": IPS[1], "b": IPS[2]}
    kernel, _ = converged(config, peers, {MACS[0]: "a"})
    ops = diff(desired(config, peers, {MACS[0]: "b"}), read(kernel))
    assert ops == (DeleteFdb(DEV, FdbEntry(MACS[0], IPS[1])),
                   AddFdb(DEV, FdbEntry(MACS[0], IPS[2])))
    apply(kernel, ops)  # the fake refuses a second unicast entry: the order matters


def test_a_peer_that_leaves_loses_its_flood_entry_and_macs() -> None:
    config = LocalConfig(local=IPS[0], mtu=1376)
    kernel, _ = converged(config, {"a": IPS[1], "b": IPS[2]}, {MACS[0]: "a", MACS[1]: "b"})
    ops = diff(desired(config, {"b": IPS[2]}, {MACS[0]: "a", MACS[1]: "b"}), read(kernel))
    assert set(ops) == {DeleteFdb(DEV, FdbEntry(FLOOD_MAC, IPS[1])),
                        DeleteFdb(DEV, FdbEntry(MACS[0], IPS[1]))}


def test_a_device_without_learning_or_with_a_default_remote_is_recreated() -> None:
    config = LocalConfig(local=IPS[0], mtu=1376)
    link = Link(index=3, name=DEV, kind="vxlan", mac="02:00:00:00:00:09", mtu=1376, up=True,
                master="weave")
    good = VxlanDevice(link=link, vni=DEFAULT_VNI, port=6784, local=IPS[0], learning=True,
                       remote=None)
    assert diff(desired(config, {}, {}), good) == ()
    for bad in (VxlanDevice(link=link, vni=DEFAULT_VNI, port=6784, local=IPS[0],
                            learning=False, remote=None),
                VxlanDevice(link=link, vni=DEFAULT_VNI, port=6784, local=IPS[0],
                            learning=True, remote=ipaddress.IPv4Address("239.1.1.1"))):
        assert [type(op) for op in diff(desired(config, {}, {}), bad)] == [
            DeleteLink, AddVxlan, SetMaster, SetUp]


def test_config_refuses_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="VNI"):
        LocalConfig(local=IPS[0], mtu=1376, vni=1 << 24)
    with pytest.raises(ValueError, match="port"):
        LocalConfig(local=IPS[0], mtu=1376, port=70000)


def test_heartbeat_macs_entries_and_pins() -> None:
    assert heartbeat_mac("aa:bb:cc:dd:ee:ff") == "7a:bb:cc:dd:ee:ff"
    hashed = heartbeat_mac("not-a-mac")
    assert hashed.startswith("7a:") and hashed == heartbeat_mac("not-a-mac")
    config = LocalConfig(local=IPS[0], mtu=1376, peer_name=OWN_NAME)
    hb_a = heartbeat_mac("peer-a")
    want = desired(config, {}, {hb_a: "peer-a"}, {"peer-a": IPS[1]})  # on sleeve, probed
    assert want.fdb == {FdbEntry(hb_a, IPS[1])}  # no flood entry: the sleeve carries it
    assert want.pins == {(DEV, hb_a), (TAP, heartbeat_mac(OWN_NAME))}
    ops = diff(want, None, {TAP: frozenset({"7a:00:00:00:00:99"})})
    assert [str(op) for op in ops[-3:]] == [
        f"unpin 7a:00:00:00:00:99 from {TAP}", f"pin {hb_a} to {DEV}",
        f"pin {heartbeat_mac(OWN_NAME)} to {TAP}"]


def test_learned_entries_are_the_kernels_until_their_peer_leaves_fastdp() -> None:
    config = LocalConfig(local=IPS[0], mtu=1376)
    peers = {"a": IPS[1], "b": IPS[2]}
    kernel, want = converged(config, peers)
    assert kernel.receive_vxlan(DEV, MACS[0], IPS[1]) and kernel.receive_vxlan(DEV, MACS[1],
                                                                                IPS[2])
    assert kernel.receive_vxlan(DEV, MACS[2], IPS[3])  # a sender that is no fastdp peer
    have = read(kernel)
    assert have is not None and have.fdb == want.fdb  # learned ones are not the plan's
    assert diff(want, have) == (DeleteFdb(DEV, FdbEntry(MACS[2], IPS[3])),)
    apply(kernel, diff(want, have))
    assert diff(want, read(kernel)) == ()  # the plan leaves the others alone
    ops = diff(desired(config, {"b": IPS[2]}, {}), read(kernel))  # a goes to sleeve
    assert ops == (DeleteFdb(DEV, FdbEntry(FLOOD_MAC, IPS[1])),
                   DeleteFdb(DEV, FdbEntry(MACS[0], IPS[1])))
    apply(kernel, ops)
    assert read(kernel).learned == {FdbEntry(MACS[1], IPS[2])}  # type: ignore[union-attr]


def test_a_learned_heartbeat_mac_makes_way_for_the_plans_entry() -> None:
    config = LocalConfig(local=IPS[0], mtu=1376)
    kernel, _ = converged(config, {"a": IPS[1]})
    hb = heartbeat_mac("a")
    assert kernel.receive_vxlan(DEV, hb, IPS[1])  # before the plan probes a: learned
    want = desired(config, {"a": IPS[1]}, {}, {"a": IPS[1]})
    ops = diff(want, read(kernel))
    assert ops[:2] == (DeleteFdb(DEV, FdbEntry(hb, IPS[1])), AddFdb(DEV, FdbEntry(hb, IPS[1])))
    apply(kernel, ops)  # the fake refuses the add over a learned entry: the order matters
    assert diff(want, read(kernel), pins(kernel, config)) == ()
