"""A full disk never gives an answer that is not durable (issue 9, item 3).

The IPAM service runs over a real sqlite file on a real 1 MiB tmpfs (mounted in a
temporary directory, unmounted in ``finally``; needs root like the integration tests).
While the disk is full every request is refused with one line (the API's 503), also a
retry for the same container; once there is room again the refused change is written
first, and after a restart every address that was answered is still held by its
container and given to nobody else.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network

import pytest
import trio

from router.errors import ClosedError
from router.ipam import AllocatorConfig, Seed
from router.ipam.service import IpamService
from router.mesh.gossip import GossipRouter
from router.mesh.names import PeerName
from router.store import Store, StoreError
from router.testing.tmpfs import TinyDisk, tiny_tmpfs

A = PeerName(1)
UNIVERSE = IPv4Network("10.32.0.0/12")
DISK_SIZE = 1024 * 1024  # bytes
MAX_TRIES = 400  # allocations until the full disk must have refused one


@pytest.fixture
def disk() -> Iterator[TinyDisk]:
    with tiny_tmpfs(DISK_SIZE) as mounted:
        yield mounted


def _service(store: Store) -> IpamService:
    gossip = GossipRouter(A, now=trio.current_time(), rng=random.Random(1))
    return IpamService(AllocatorConfig(A, UNIVERSE, mode=Seed((A,))), store,
                       register=gossip.register, rng=random.Random(1))


async def _allocate_until_refused(ipam: IpamService,
                                  answered: dict[str, IPv4Interface]) -> tuple[str, str]:
    """Allocate new idents until the store refuses one: (that ident, the error line)."""
    for i in range(MAX_TRIES):
        ident = f"full-{i}"
        try:
            answered[ident] = await ipam.allocate(ident)
        except ClosedError as exc:
            return ident, str(exc)
    raise AssertionError(f"{MAX_TRIES} allocations on a full disk were all answered")


async def test_full_disk_refuses_until_durable_and_a_restart_keeps_every_answer(
        disk: TinyDisk) -> None:
    path = disk.path / "weave.db"
    answered: dict[str, IPv4Interface] = {}
    with Store.open(path) as store:
        ipam = _service(store)
        for i in range(5):
            answered[f"before-{i}"] = await ipam.allocate(f"before-{i}")
        disk.fill()
        refused, line = await _allocate_until_refused(ipam, answered)
        assert "\n" not in line and str(path) in line and "full" in line, line
        with pytest.raises(StoreError):  # the same container again: still refused
            await ipam.allocate(refused)
        with pytest.raises(StoreError):
            ipam.free("before-0")
        status = ipam.statistics().status
        assert "cannot write" in status and str(path) in status, status
        assert ipam.statistics().counters["store_failures"] >= 2
        disk.release()
        answered[refused] = await ipam.allocate(refused)
        for i in range(5):
            answered[f"after-{i}"] = await ipam.allocate(f"after-{i}")
        assert "cannot write" not in ipam.statistics().status
        held = {ident: ipam.lookup(ident) for ident in answered}
    assert held == {ident: [cidr] for ident, cidr in answered.items()}
    with Store.open(path) as store:  # restart
        ipam = _service(store)
        restored = {ident: ipam.lookup(ident) for ident in answered}
        assert restored == {ident: [cidr] for ident, cidr in answered.items()}
        fresh = [await ipam.allocate(f"new-{i}") for i in range(20)]
    given = [*answered.values(), *fresh]
    assert len({c.ip for c in given}) == len(given), "an address was given out twice"


async def test_while_suspended_gossip_is_dropped_and_ours_carries_nothing(
        disk: TinyDisk) -> None:
    """No peer may learn state a restart could make us forget: our gossip (encoded when
    sent) is empty while suspended, and incoming gossip is dropped without an exception
    into the gossip router."""
    with Store.open(disk.path / "weave.db") as store:
        ipam = _service(store)
        await ipam.allocate("warm-up")
        queued = ipam.gossip()
        assert queued is not None and queued.encode()
        peer_state = queued.encode()[0]
        disk.fill()
        await _allocate_until_refused(ipam, {})
        assert ipam.suspended is not None
        assert queued.encode() == [] and ipam.gossip() is None
        assert ipam.on_gossip(peer_state) is None
        assert ipam.on_gossip_broadcast(A, peer_state) is None
        assert ipam.statistics().counters["gossip_dropped_suspended"] == 2
        disk.release()
        await ipam.allocate("after")
        assert ipam.suspended is None and queued.encode()


async def test_the_timer_retries_about_once_a_second_and_resumes_by_itself(
        disk: TinyDisk) -> None:
    with Store.open(disk.path / "weave.db") as store:
        ipam = _service(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(ipam.run)
            await ipam.allocate("warm-up")
            disk.fill()
            await _allocate_until_refused(ipam, {})
            failures = ipam.statistics().counters["store_failures"]
            await trio.sleep(2.5)
            retried = ipam.statistics().counters["store_failures"] - failures
            assert 1 <= retried <= 4, f"{retried} retries in 2.5 s"
            disk.release()
            with trio.fail_after(3):
                while ipam.suspended is not None:  # no request needed: the timer resumes
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()


def test_no_room_to_open_the_database_is_a_store_error_not_a_config_error(
        disk: TinyDisk) -> None:
    """Exit 1, which the supervisor retries, rather than 2 ("fix your flags")."""
    path = disk.path / "weave.db"
    with Store.open(path) as store:
        store.save_targets(["192.168.1.2"])
    disk.fill()
    with pytest.raises(StoreError, match=r"^cannot open .*weave\.db: .*\(is the disk full\?\)$"):
        Store.open(path)
    disk.release()
    with Store.open(path) as store:
        assert store.load_targets() == ["192.168.1.2"]
