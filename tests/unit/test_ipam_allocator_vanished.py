"""Addresses of containers that vanished go back to IPAM, and only theirs: which namespaces
still exist (a fake /proc tree and the real one), the registry's two formats, and
``ContainersService.release_vanished`` over a real IpamService and store."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Collection, Sequence
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest
import trio

from router.containers.service import (
    REGISTRY_KEY,
    ContainersService,
    ident_inode,
    live_netns_inodes,
)
from router.errors import KernelError
from router.ipam import AllocatorConfig, Seed
from router.ipam.service import IpamService
from router.kernel.plumbing import host_veth_name
from router.kernel.port import KernelStatistics, Link, NetnsState, Op, TapDevice
from router.mesh.gossip import GossipRouter
from router.mesh.names import PeerName
from router.store import Store

A = PeerName(1)
UNIVERSE = IPv4Network("10.32.0.0/12")
DEAD, ALIVE, VETH = 0xF0000101, 0xF0000102, 0xF0000103  # namespace inodes


def test_only_netns_idents_name_an_inode() -> None:
    assert ident_inode("netns-f0000101") == DEAD
    for other in ("netns-", "netns-F0", "netns-xyz", "web-1", "f0000101", "NETNS-1"):
        assert ident_inode(other) is None


def _fake_proc(root: Path) -> Path:
    """A /proc with two processes: one in namespace 55 with an fd on 77, one whose mount
    namespace has namespace 66 bind-mounted; pid 9 exited while we looked."""
    for pid, mnt, net, fds in (("10", "mnt:[1]", "net:[55]", {"3": "net:[77]", "4": "pipe:[5]"}),
                               ("11", "mnt:[2]", "net:[4]", {})):
        (root / pid / "ns").mkdir(parents=True)
        (root / pid / "task" / pid / "ns").mkdir(parents=True)
        (root / pid / "fd").mkdir()
        os.symlink(mnt, root / pid / "ns" / "mnt")
        os.symlink(net, root / pid / "task" / pid / "ns" / "net")
        for fd, target in fds.items():
            os.symlink(target, root / pid / "fd" / fd)
    (root / "10" / "mountinfo").write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    (root / "11" / "mountinfo").write_text(
        "43 42 0:4 net:[66] /run/netns/c1 rw shared:2 - nsfs nsfs rw\n"
        "44 42 0:4 mnt:[88] /run/mnt rw - nsfs nsfs rw\n"
    )
    (root / "9").mkdir()  # no ns, no task, no fd: gone
    (root / "self").mkdir()
    return root


def test_namespaces_are_found_by_thread_fd_and_bind_mount(tmp_path: Path) -> None:
    proc = str(_fake_proc(tmp_path))
    assert live_netns_inodes({55, 66, 77, 88, 99}, proc=proc) == {55, 66, 77}
    assert live_netns_inodes(set(), proc=proc) == set()
    own = os.stat("/proc/self/ns/net").st_ino  # the real /proc, and a registered path
    assert live_netns_inodes({own, 12345}) == {own}
    assert live_netns_inodes({own}, ["/proc/self/ns/net"], proc=str(tmp_path / "none")) == {own}
    with pytest.raises(OSError):
        live_netns_inodes({12345}, ["/no/such/ns"], proc=str(tmp_path / "none"))


class FakeKernel:
    """The host namespace's links; nothing else is used by release_vanished."""

    def __init__(self, veths: Sequence[str]) -> None:
        self.links = tuple(Link(i + 2, name, "veth", "02:00:00:00:00:01", 1376, True, "weave")
                           for i, name in enumerate(veths))
        self.broken = False

    async def snapshot(self, netns: str | None = None) -> NetnsState:
        if self.broken:
            raise KernelError(5, "netlink: I/O error")
        return NetnsState(netns=netns, links=self.links)

    async def apply(self, ops: Sequence[Op]) -> None:
        raise AssertionError("release_vanished changes no device")

    async def open_tap(self, name: str, *, netns: str | None = None) -> TapDevice:
        raise AssertionError("no taps here")

    def statistics(self) -> KernelStatistics:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        pass


class Liveness:
    """Which inodes exist; counts calls and can fail like an unreadable /proc."""

    def __init__(self, alive: set[int]) -> None:
        self.alive = alive
        self.asked: list[set[int]] = []
        self.error: OSError | None = None

    def __call__(self, wanted: Collection[int], paths: Sequence[str]) -> set[int]:
        self.asked.append(set(wanted))
        if self.error is not None:
            raise self.error
        return self.alive & set(wanted)


async def _setup(tmp_path: Path, kernel: FakeKernel,
                 liveness: Liveness) -> tuple[IpamService, ContainersService, Store]:
    store = Store.open(tmp_path / "weave.db")
    gossip = GossipRouter(A, now=trio.current_time(), rng=random.Random(1))
    ipam = IpamService(AllocatorConfig(A, UNIVERSE, mode=Seed((A,))), store,
                       register=gossip.register, rng=random.Random(1))
    containers = ContainersService(kernel, store, ipam, universe=UNIVERSE,
                                   check_interval=10.0, liveness=liveness)
    return ipam, containers, store


async def test_release_vanished_frees_only_dead_netns_idents(tmp_path: Path) -> None:
    kernel = FakeKernel([host_veth_name(VETH)])
    liveness = Liveness({ALIVE})
    ipam, containers, store = await _setup(tmp_path, kernel, liveness)
    held = {}
    for ident in (f"netns-{DEAD:x}", f"netns-{ALIVE:x}", f"netns-{VETH:x}", "web-1", "netns-zz"):
        held[ident] = await ipam.allocate(ident)
    await ipam.claim("plumbing", IPv4Interface("10.32.9.9/12"), is_container=False)
    # the registry in both formats: an old bare path, and a new entry for the dead one
    store.set_meta(REGISTRY_KEY, json.dumps({
        "old": "/run/netns/old",
        "dead": {"path": "/run/netns/dead", "ident": f"netns-{DEAD:x}"},
    }))

    assert await containers.release_vanished() == [f"netns-{DEAD:x}"]
    assert liveness.asked == [{DEAD, ALIVE}]  # the one with a veth is not even looked for
    assert ipam.lookup(f"netns-{DEAD:x}") == []
    for ident in (f"netns-{ALIVE:x}", f"netns-{VETH:x}", "web-1", "netns-zz"):
        assert ipam.lookup(ident) == [held[ident]]
    assert ipam.lookup("plumbing") == [IPv4Interface("10.32.9.9/12")]
    assert set(json.loads(store.get_meta(REGISTRY_KEY) or "{}")) == {"old"}
    assert containers.statistics() == {"vanished_addresses_released": 1}
    # the next allocation gets the address back
    assert await ipam.allocate("new") == held[f"netns-{DEAD:x}"]
    store.close()


async def test_when_in_doubt_nothing_is_released(tmp_path: Path) -> None:
    kernel = FakeKernel([])
    liveness = Liveness(set())
    ipam, containers, store = await _setup(tmp_path, kernel, liveness)
    got = await ipam.allocate(f"netns-{DEAD:x}")
    liveness.error = PermissionError(13, "Permission denied")
    assert await containers.release_vanished() == []
    kernel.broken = True
    assert await containers.release_vanished() == []
    assert ipam.lookup(f"netns-{DEAD:x}") == [got]
    kernel.broken, liveness.error = False, None
    assert await containers.release_vanished() == [f"netns-{DEAD:x}"]
    store.close()


async def test_the_periodic_check_runs_at_start_and_every_interval(tmp_path: Path,
                                                                  autojump_clock: object) -> None:
    liveness = Liveness({ALIVE})
    ipam, containers, store = await _setup(tmp_path, FakeKernel([]), liveness)
    await ipam.allocate(f"netns-{DEAD:x}")
    await ipam.allocate(f"netns-{ALIVE:x}")
    async with trio.open_nursery() as nursery:
        await nursery.start(containers.run)
        assert ipam.lookup(f"netns-{DEAD:x}") == []  # released before run() was ready
        assert len(liveness.asked) == 1
        await ipam.allocate(f"netns-{VETH:x}")  # vanishes later; nobody asks
        # the check runs in a thread, which the autojump clock does not wait for (virtual
        # time races ahead while it runs): poll, bounded in real time
        give_up = time.monotonic() + 30
        while ipam.lookup(f"netns-{VETH:x}"):
            assert time.monotonic() < give_up, "the periodic check never released it"
            await trio.sleep(1)
        assert trio.current_time() >= 10 and len(liveness.asked) >= 2
        assert ipam.lookup(f"netns-{ALIVE:x}")
        nursery.cancel_scope.cancel()
    store.close()
