"""weaveDNS through whole routers: 30 real routers (mesh, gossip channel "dns") on a fake
network in virtual time. Entries are added and removed on both sides of a partition, the
partition heals, and every router must then answer every name exactly as a naive model
of each origin's own adds and removes says; a stale add carried by the other side never
beats the tombstone its origin set meanwhile. A router that leaves hides its names and
they come back when it returns."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import trio
from trio.testing import MockClock

from router.config import MeshTimings
from router.dns.service import DnsService
from router.testing.sim import Sim, SimRouter

N = 30
TIMINGS = MeshTimings(tcp_heartbeat_interval=5.0, tcp_timeout=15.0, udp_heartbeat_timeout=15.0,
                      backoff_max=10.0, backoff_reset_after=15.0)
NAMES = [f"svc{i}.weave.local." for i in range(8)]
Fact = tuple[str, str, IPv4Address]  # hostname, container, address


def _ips(n: int) -> list[str]:
    return [f"10.0.0.{i + 1}" for i in range(n)]


def _dns(node: SimRouter) -> DnsService:
    assert node.router is not None and node.router.dns is not None
    return node.router.dns


def _disagreements(sim: Sim, truth: dict[str, set[Fact]], group: list[SimRouter]) -> list[str]:
    """Routers of ``group`` whose answers differ from the model (the truth of ``group``)."""
    members = {n.ip for n in group}
    wrong = []
    for node in group:
        for name in NAMES:
            want = {a for ip, facts in truth.items() if ip in members
                    for (n, _, a) in facts if n == name}
            got = set(_dns(node).lookup(name))
            if got != want:
                wrong.append(f"{node.ip} {name}: {sorted(map(str, got))} != "
                             f"{sorted(map(str, want))}")
    return wrong


async def test_thirty_routers_converge_through_a_partition(sim: Sim,
                                                           autojump_clock: MockClock) -> None:
    rng = random.Random(13)
    sim.timings = TIMINGS
    ips = _ips(N)
    # Two hubs, one per side of the coming partition; every other router dials both (no
    # discovery: 57 connections rather than a full mesh's 435, for the suite's time).
    opts = {"ipalloc_range": None}
    hubs = (ips[0], ips[15])
    await sim.add(ips[0], router_options=opts, discovery=False)
    for ip in ips[1:]:
        await sim.add(ip, peers=tuple(h for h in hubs if h != ip), router_options=opts,
                      discovery=False)

    def connected(group: list[SimRouter], n: int) -> bool:
        return all(len(node.status().router.unicast_routes) == n - 1 for node in group)

    await sim.wait_until(lambda: connected(sim.running(), N), timeout=300,
                         what="routes to all 30 routers", show=sim.mesh_summary)
    truth: dict[str, set[Fact]] = {ip: set() for ip in ips}
    serial = 0

    def add(node: SimRouter, name: str) -> Fact:
        nonlocal serial
        serial += 1
        fact = (name, f"c{serial}", IPv4Address(0x0A200000 + serial))
        _dns(node).add(fact[0], fact[1], [fact[2]])
        truth[node.ip].add(fact)
        return fact

    def remove(node: SimRouter, fact: Fact) -> None:
        assert _dns(node).remove(container_id=fact[1]) == 1
        truth[node.ip].discard(fact)

    for node in sim.running():
        for _ in range(3):
            add(node, rng.choice(NAMES))
    everyone = sim.running()
    await sim.wait_until(lambda: not _disagreements(sim, truth, everyone), timeout=60,
                         what="every router to know every entry",
                         show=lambda: "; ".join(_disagreements(sim, truth, everyone)[:3]))

    left, right = everyone[:15], everyone[15:]
    sim.net.partition([n.ip for n in left], [n.ip for n in right])
    await sim.wait_until(lambda: connected(left, 15) and connected(right, 15),
                         timeout=300, what="each side to lose the other",
                         show=sim.mesh_summary)
    # Each side now hides the other's entries.
    for side in (left, right):
        await sim.wait_until(lambda side=side: not _disagreements(sim, truth, side),
                             timeout=60, what="each side to answer only its own entries",
                             show=lambda side=side: "; ".join(
                                 _disagreements(sim, truth, side)[:3]))
    # Removals on the left (the right still holds those entries live: stale adds), new
    # entries and removals on both sides.
    for node in left:
        for fact in list(truth[node.ip])[:2]:
            remove(node, fact)
        add(node, rng.choice(NAMES))
    for node in right:
        remove(node, next(iter(sorted(truth[node.ip]))))
        add(node, rng.choice(NAMES))

    sim.net.heal()
    await sim.wait_until(lambda: connected(everyone, N), timeout=600,
                         what="the mesh to heal", show=sim.mesh_summary)
    await sim.wait_until(lambda: not _disagreements(sim, truth, everyone), timeout=120,
                         what="every router to agree with the model after healing",
                         show=lambda: "; ".join(_disagreements(sim, truth, everyone)[:3]))

    # A router that leaves takes its names with it; they return when it does, and it
    # registers its own entries again from its store (rather than tombstoning the copies
    # the others kept, as it would for entries it did not know).
    gone = everyone[7]
    await sim.stop(gone.ip)
    rest = [n for n in everyone if n is not gone]
    await sim.wait_until(lambda: not _disagreements(sim, truth, rest), timeout=120,
                         what="the stopped router's names to vanish",
                         show=lambda: "; ".join(_disagreements(sim, truth, rest)[:3]))
    await sim.start(gone.ip)
    await sim.wait_until(lambda: connected(everyone, N), timeout=300,
                         what="the restarted router to rejoin", show=sim.mesh_summary)
    await sim.wait_until(lambda: not _disagreements(sim, truth, everyone), timeout=120,
                         what="the restarted router's names to return",
                         show=lambda: "; ".join(_disagreements(sim, truth, everyone)[:3]))
    await trio.sleep(60)  # periodic gossip rounds: the answers stay
    assert _disagreements(sim, truth, everyone) == []
