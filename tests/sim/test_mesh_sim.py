"""Whole meshes of real routers on a fake network, in virtual time."""

from __future__ import annotations

from pathlib import Path

import trio
from trio.testing import MockClock

from router.testing.sim import Sim


def _ips(n: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n)]


async def _start(sim: Sim, n: int) -> list[str]:
    ips = _ips(n)
    await sim.add_star(ips)
    return ips


async def test_three_routers_discover_each_other(sim: Sim, autojump_clock: MockClock) -> None:
    await _start(sim, 3)
    await sim.wait_until(sim.full_mesh, timeout=30, what="a full mesh of 3",
                         show=sim.mesh_summary)
    for node in sim.running():
        status = node.status().router
        assert len(status.peers) == 3
        assert all(c.overlay == "sleeve" for c in status.connections)
        assert status.unicast_routes.keys() == {p.name for p in status.peers} - {status.name}


async def test_fifty_routers_with_one_common_target_form_a_full_mesh_survive_a_partition_and_heal(
    sim: Sim, autojump_clock: MockClock
) -> None:
    ips = await _start(sim, 50)
    took = await sim.wait_until(sim.full_mesh, timeout=120, what="a full mesh of 50",
                                show=sim.mesh_summary)
    assert took < 120
    left, right = sim.running()[:25], sim.running()[25:]

    sim.net.partition([n.ip for n in left], [n.ip for n in right])

    def split() -> bool:
        return all(len(n.status().router.peers) == 25 for n in sim.running())

    await sim.wait_until(split, timeout=300, what="each side to forget the other",
                         show=sim.mesh_summary)
    assert sim.full_mesh(left) and sim.full_mesh(right)

    sim.net.heal()
    await sim.wait_until(sim.full_mesh, timeout=600, what="the mesh to heal",
                         show=sim.mesh_summary)
    assert all(len(n.status().router.peers) == 50 for n in sim.running())
    assert {n.ip for n in sim.running()} == set(ips)


async def test_a_restarted_router_rejoins_with_a_new_uid(
    sim: Sim, autojump_clock: MockClock
) -> None:
    ips = await _start(sim, 4)
    await sim.wait_until(sim.full_mesh, timeout=30, what="a full mesh of 4")
    old_uid = {p.name: p.uid for p in sim.routers[ips[0]].status().router.peers}
    name = sim.routers[ips[3]].status().router.name

    await sim.stop(ips[3])
    await sim.wait_until(lambda: all(len(n.status().router.peers) == 3 for n in sim.running()),
                         timeout=120, what="the stopped router to be forgotten")
    await sim.start(ips[3])
    await sim.wait_until(sim.full_mesh, timeout=300, what="the restarted router to rejoin",
                         show=sim.mesh_summary)
    peers = {p.name: p.uid for p in sim.routers[ips[0]].status().router.peers}
    assert name in peers and peers[name] != old_uid[name]


async def test_a_silent_peer_times_out_and_is_retried(sim: Sim, autojump_clock: MockClock) -> None:
    ips = await _start(sim, 2)
    await sim.wait_until(sim.full_mesh, timeout=30, what="two connected routers")
    sim.net.isolate(ips[1])
    await sim.wait_until(lambda: not sim.routers[ips[0]].established_peers(), timeout=120,
                         what="the connection to the isolated router to time out")
    failed = [c for c in sim.routers[ips[1]].status().router.connections]
    assert all(c.state in ("retrying", "failed", "connecting") for c in failed), failed
    sim.net.heal()
    await sim.wait_until(sim.full_mesh, timeout=400, what="the connection to come back")
    await trio.sleep(0)


async def _peers_of_a_run(tmp: Path, seed: int) -> list[tuple[str, int]]:
    async with trio.open_nursery() as nursery:
        sim = Sim(nursery, tmp, seed=seed)
        try:
            await _start(sim, 4)
            return [(str(n.router.name), n.router.uid) for n in sim.running()
                    if n.router is not None]
        finally:
            nursery.cancel_scope.cancel()
            sim.close()


async def test_a_seed_repeats_the_peers_names_and_uids(tmp_path: Path,
                                                       autojump_clock: MockClock) -> None:
    first = await _peers_of_a_run(tmp_path / "a", seed=7)
    assert await _peers_of_a_run(tmp_path / "b", seed=7) == first
    other = await _peers_of_a_run(tmp_path / "c", seed=8)
    assert {name for name, _ in other}.isdisjoint(name for name, _ in first)
