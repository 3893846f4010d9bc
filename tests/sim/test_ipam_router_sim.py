"""IPAM through whole routers: 30 real routers (mesh, gossip, IPAM, sqlite) on a fake network
in virtual time, 10,000 allocations during random partitions, restarts and node deaths.

What must hold (issue 5): no address is ever held by two idents; every answered allocation
is still held by its ident after healing (unless it was freed, or its router was killed and
``rmpeer``'ed); consensus is reached whenever a quorum can talk, and never without one.

Allocations in a partition that cannot reach consensus (or space) wait; each wait is
bounded and counted, never a failure. The run prints its numbers (``pytest -s``).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import trio
from trio.testing import MockClock

from router.config import MeshTimings
from router.ipam import IpamError, IpamStatistics
from router.testing.sim import Sim, SimRouter

N = 30  # routers
QUORUM = N // 2 + 1  # consensus=30
ALLOCATIONS = 10_000
EPOCHS = 36  # rounds of (event, allocations, frees, some virtual time)
FREE_SHARE = 0.01  # of the held idents freed per epoch
MAX_DEATHS = 3
WAIT_BOUND = 20.0  # virtual seconds one allocation may wait before it is given up (counted)
# Shorter than the defaults so that partitions lasting a few epochs break connections (and
# IPAM sees peers become unreachable) and a heal reconnects in seconds, not minutes.
TIMINGS = MeshTimings(tcp_heartbeat_interval=5.0, tcp_timeout=15.0, udp_heartbeat_timeout=15.0,
                      backoff_max=10.0, backoff_reset_after=15.0)
UNIVERSE = IPv4Network("10.32.0.0/18")  # ~546 addresses a peer: space has to move


def _ips(n: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n)]


@dataclass
class Ledger:
    """What the test asked for and what it was answered."""

    router_of: dict[str, str] = field(default_factory=dict)  # ident -> router ip
    held: dict[str, IPv4Interface] = field(default_factory=dict)  # answered allocations
    freed: set[str] = field(default_factory=set)
    timed_out: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)  # ident -> IpamError message
    dead: set[str] = field(default_factory=set)  # killed routers' ips
    inflight: dict[str, dict[str, trio.CancelScope]] = field(default_factory=dict)

    def live(self, ident: str) -> bool:
        return (ident in self.held and ident not in self.freed
                and self.router_of[ident] not in self.dead)


class Workload:
    """Issues allocations as tasks in ``nursery``; each wait is bounded by WAIT_BOUND."""

    def __init__(self, sim: Sim, nursery: trio.Nursery) -> None:
        self.sim = sim
        self.nursery = nursery
        self.ledger = Ledger()
        self.issued = 0

    def allocate(self, ip: str) -> None:
        ident = f"c{self.issued}"
        self.issued += 1
        self.ledger.router_of[ident] = ip
        scope = trio.CancelScope(deadline=trio.current_time() + WAIT_BOUND)
        self.ledger.inflight.setdefault(ip, {})[ident] = scope
        self.nursery.start_soon(self._allocate, ip, ident, scope)

    async def _allocate(self, ip: str, ident: str, scope: trio.CancelScope) -> None:
        router = self.sim.routers[ip].router
        assert router is not None
        try:
            with scope:
                cidr = await router.ipam.allocate(ident)
                self.ledger.held[ident] = cidr
            if scope.cancelled_caught:
                self.ledger.timed_out.add(ident)
        except IpamError as exc:
            self.ledger.refused[ident] = str(exc)
        finally:
            del self.ledger.inflight[ip][ident]

    async def drain(self, ip: str) -> None:
        """Give up every request waiting on ``ip`` (its router is about to stop)."""
        for scope in self.ledger.inflight.get(ip, {}).values():
            scope.cancel()
        while self.ledger.inflight.get(ip):
            await trio.sleep(0.001)

    def pending(self) -> int:
        return sum(len(waiting) for waiting in self.ledger.inflight.values())

    def free_some(self, rng: random.Random) -> None:
        running = {n.ip for n in self.sim.running()}
        candidates = sorted(i for i in self.ledger.held
                            if self.ledger.live(i) and self.ledger.router_of[i] in running)
        for ident in rng.sample(candidates, int(len(candidates) * FREE_SHARE)):
            router = self.sim.routers[self.ledger.router_of[ident]].router
            assert router is not None
            assert router.ipam.free(ident) == [self.ledger.held[ident]], ident
            self.ledger.freed.add(ident)


def _ipam(node: SimRouter) -> IpamStatistics:
    assert node.router is not None, f"{node.ip} is not running"
    return node.router.ipam.statistics()


def _status(node: SimRouter) -> str:
    return _ipam(node).status if node.router is not None else "down"


def _statuses(nodes: list[SimRouter]) -> str:
    return str(Counter(_status(n) for n in nodes))


def _holdings(sim: Sim, ips: list[str]) -> dict[IPv4Address, list[tuple[str, str]]]:
    """Every address held (per the stores, which are written before any answer)."""
    by_address: dict[IPv4Address, list[tuple[str, str]]] = {}
    for ip in ips:
        state = sim.routers[ip].store.load_ipam()
        for ident, record in (state.owned.items() if state is not None else ()):
            for cidr in record.cidrs:
                by_address.setdefault(cidr.ip, []).append((ip, ident))
    return by_address


def _duplicates(holdings: dict[IPv4Address, list[tuple[str, str]]]) -> dict[str, object]:
    return {str(a): who for a, who in holdings.items() if len(who) > 1}


def _split(rng: random.Random, ips: list[str], parts: int) -> list[list[str]]:
    shuffled = rng.sample(ips, len(ips))
    cuts = sorted(rng.sample(range(1, len(ips)), parts - 1))
    bounds = [0, *cuts, len(ips)]
    return [shuffled[a:b] for a, b in itertools.pairwise(bounds)]


async def _issue(work: Workload, ips: list[str], count: int, rng: random.Random) -> None:
    """``count`` allocations; router 10.0.0.k is asked k times as often as 10.0.0.1, so the
    busy ones run out of space and ask the others for more."""
    weights = [int(ip.rsplit(".", 1)[1]) for ip in ips]
    for ip in rng.choices(ips, weights, k=count):
        work.allocate(ip)
    await trio.sleep(0)


async def _settle(work: Workload) -> None:
    while work.pending():
        await trio.sleep(1)


async def _no_quorum_no_consensus(sim: Sim, work: Workload, ips: list[str]) -> None:
    """Three groups of 10 (quorum 16): nobody may initialise the ring."""
    sim.net.partition(ips[:10], ips[10:20], ips[20:])
    for ip in ips:
        work.allocate(ip)
    await _settle(work)
    assert not work.ledger.held, "a ring was made without a quorum"
    assert all(_ipam(n).status.startswith("awaiting consensus (quorum: 16")
               for n in sim.running()), _statuses(sim.running())


async def _quorum_reaches_consensus(sim: Sim, work: Workload, ips: list[str],
                                    rng: random.Random) -> None:
    """A majority side reaches consensus and allocates; the minority cannot."""
    major, minor = _split(rng, ips, 2)
    if len(major) < len(minor):
        major, minor = minor, major
    if len(major) < QUORUM:  # re-cut so one side has a quorum
        major, minor = ips[:QUORUM + 2], ips[QUORUM + 2:]
    sim.net.partition(major, minor)
    await _issue(work, ips, 200, rng)
    group = [sim.routers[ip] for ip in major]
    await sim.wait_until(lambda: all(_status(n) == "ready" for n in group), timeout=60,
                         what=f"consensus among {len(major)} routers that can talk",
                         show=lambda: _statuses(group))
    await _settle(work)
    assert all(_status(sim.routers[ip]) != "ready" for ip in minor), "minority made a ring"
    answered = {work.ledger.router_of[i] for i in work.ledger.held}
    assert answered <= set(major) and answered, answered


async def _kill(sim: Sim, work: Workload, ip: str, rng: random.Random) -> None:
    """Crash ``ip`` for good; a survivor takes over its space (``rmpeer``)."""
    name = sim.routers[ip].status().router.name
    await work.drain(ip)
    await sim.kill(ip)
    work.ledger.dead.add(ip)
    alive = [n.ip for n in sim.running()]
    # Until rmpeer its space is nobody else's: none of its addresses is held elsewhere.
    theirs = set(_holdings(sim, [ip]))
    assert not theirs & set(_holdings(sim, alive)), f"{ip}'s addresses reused before rmpeer"
    # The operator runs rmpeer where the dead peer's space shows; a peer that never got
    # space (it was cut off when the ring was made) has nothing to take over.
    knowing = [n for n in sim.running() if name in {s.name for s in _ipam(n).shares}]
    if knowing:
        node = rng.choice(knowing)
        survivor = node.router
        assert survivor is not None
        # rmpeer of a peer still reachable is refused: wait until its death is noticed
        for _ in range(600):
            if not any(s.name == name and s.reachable for s in _ipam(node).shares):
                break
            await trio.sleep(0.5)
        assert survivor.ipam.rmpeer(name).endswith(f" IPs taken over from {name}")


async def _restart(sim: Sim, work: Workload, ip: str, rng: random.Random) -> None:
    before = {i: c for i, c in work.ledger.held.items()
              if work.ledger.router_of[i] == ip and work.ledger.live(i)}
    await work.drain(ip)
    await sim.stop(ip)
    await trio.sleep(rng.uniform(0, 5))
    await sim.start(ip)
    router = sim.routers[ip].router
    assert router is not None
    lost = {i: c for i, c in before.items() if router.ipam.lookup(i) != [c]}
    assert not lost, f"{ip} lost allocations across a restart: {lost}"


async def _event(sim: Sim, work: Workload, ips: list[str], rng: random.Random) -> str:
    """One random disturbance; returns what it was (for the summary)."""
    alive = [ip for ip in ips if ip not in work.ledger.dead]
    roll = rng.random()
    if roll < 0.3:
        parts = rng.choice((2, 3))
        sim.net.partition(*_split(rng, alive, parts))
        return f"partition{parts}"
    if roll < 0.55:
        sim.net.heal()
        return "heal"
    if roll < 0.85:
        for ip in rng.sample(alive, rng.randint(1, 2)):
            await _restart(sim, work, ip, rng)
        return "restart"
    if len(work.ledger.dead) < MAX_DEATHS:
        await _kill(sim, work, rng.choice(alive), rng)
        return "kill"
    return "none"


async def _heal_and_converge(sim: Sim, work: Workload) -> None:
    sim.net.heal()
    nodes = sim.running()
    await sim.wait_until(lambda: sim.full_mesh(nodes), timeout=900,
                         what="the mesh of survivors to heal", show=lambda: sim.mesh_summary())
    dead_names = {sim.routers[ip].store.get_meta("peer_name") for ip in work.ledger.dead}

    def converged() -> bool:
        shares = [tuple((s.name, s.ips) for s in _ipam(n).shares) for n in nodes]
        return (all(_status(n) == "ready" for n in nodes) and len(set(shares)) == 1
                and not {name for name, _ in shares[0]} & dead_names)

    await sim.wait_until(converged, timeout=300, what="every survivor to agree on the ring",
                         show=lambda: _statuses(nodes))
    await _settle(work)


async def test_thirty_routers_ten_thousand_allocations_partitions_restarts_and_deaths(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    rng = random.Random(5)  # events, partitions, who is asked
    free_rng = random.Random(6)  # kept apart: how many frees depends on answers so far
    ips = _ips(N)
    options = {"ipalloc_init": f"consensus={N}", "ipalloc_range": UNIVERSE}
    async with trio.open_nursery() as nursery:
        sim = Sim(nursery, tmp_path, seed=5, timings=TIMINGS)
        try:
            await sim.add_star(ips, router_options=options)
            await sim.wait_until(sim.full_mesh, timeout=120, what=f"a full mesh of {N}",
                                 show=sim.mesh_summary)
            work = Workload(sim, nursery)
            await _no_quorum_no_consensus(sim, work, ips)
            await _quorum_reaches_consensus(sim, work, ips, rng)
            events: Counter[str] = Counter()
            per_epoch = (ALLOCATIONS - work.issued) // EPOCHS
            for epoch in range(EPOCHS):
                events[await _event(sim, work, ips, rng)] += 1
                count = per_epoch if epoch < EPOCHS - 1 else ALLOCATIONS - work.issued
                await _issue(work, [n.ip for n in sim.running()], count, rng)
                work.free_some(free_rng)
                await trio.sleep(rng.uniform(1, 3))
            await _heal_and_converge(sim, work)
            _check(sim, work, ips)
            ledger = work.ledger
            print(f"\n{work.issued} allocations: {len(ledger.held)} answered, "
                  f"{len(ledger.timed_out)} waits given up, {len(ledger.refused)} refused, "
                  f"{len(ledger.freed)} freed; events {dict(events)}; "
                  f"virtual time {trio.current_time():.0f} s; counters {_counters(sim)}")
        finally:
            nursery.cancel_scope.cancel()
            sim.close()


def _check(sim: Sim, work: Workload, ips: list[str]) -> None:
    ledger = work.ledger
    assert work.issued == ALLOCATIONS
    assert not ledger.refused, dict(list(ledger.refused.items())[:5])
    assert len(ledger.held) > ALLOCATIONS // 2, (len(ledger.held), len(ledger.timed_out))
    alive = [ip for ip in ips if ip not in ledger.dead]
    holdings = _holdings(sim, alive)
    assert not _duplicates(holdings), _duplicates(holdings)
    live = [c.ip for i, c in ledger.held.items() if ledger.live(i)]
    assert len(set(live)) == len(live), "one address answered to two live idents"
    held_where = {ident: ip for who in holdings.values() for ip, ident in who}
    for ident, cidr in ledger.held.items():
        ip = ledger.router_of[ident]
        router = sim.routers[ip].router
        if ip in ledger.dead:
            assert ident not in held_where, f"{ident} of dead {ip} held by {held_where[ident]}"
            continue
        assert router is not None
        expected = [] if ident in ledger.freed else [cidr]
        assert router.ipam.lookup(ident) == expected, (ident, ip, expected)
        assert held_where.get(ident, ip) == ip, (ident, ip, held_where[ident])
    for ident in ledger.timed_out:
        assert ident not in held_where, f"{ident} gave up waiting but holds an address"


def _counters(sim: Sim) -> dict[str, int]:
    """IPAM counters summed over the running routers (since their last start)."""
    total: Counter[str] = Counter()
    for node in sim.running():
        total.update(_ipam(node).counters)
    return {k: v for k, v in total.items() if v}
