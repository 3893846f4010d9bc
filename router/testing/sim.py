"""Whole meshes in one process: N real routers on a :class:`FakeNetwork` in virtual time.

Each simulated router is the real :class:`router.daemon.Router` (mesh, sleeve, store) on a
fake host; only the network and the clock are fake. Run under trio's ``MockClock`` with
``autojump_threshold=0`` and minutes of protocol time pass in milliseconds.

Partitions, loss and restarts are one line each::

    sim.net.partition(first_half, second_half); ...; sim.net.heal()
    await sim.stop("10.0.0.7"); await sim.start("10.0.0.7")
    await sim.kill("10.0.0.9")  # a crash and a pulled cable: no goodbye, never back

Router settings other than the mesh's (``--ipalloc-init``, ``--ipalloc-range``) go in
``router_options``: ``await sim.add(ip, router_options={"ipalloc_init": "consensus=30"})``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from router.config import MeshConfig, MeshTimings, RouterConfig
from router.daemon import Router, settle_name
from router.status import Status
from router.store import Store
from router.testing.fakenet import FakeNetwork


@dataclass(eq=False)
class SimRouter:
    """One simulated host: its address, configuration, store and (while up) its router."""

    ip: str
    config: RouterConfig
    store: Store
    router: Router | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def status(self) -> Status:
        assert self.router is not None, f"{self.ip} is not running"
        return self.router.snapshot()

    def established_peers(self) -> set[str]:
        """Nicknames of peers this router has an established connection to."""
        return {c.peer_nickname for c in self.status().router.connections
                if c.state == "established"}


class Sim:
    """A set of simulated routers sharing one fake network."""

    def __init__(self, nursery: trio.Nursery, tmp: Path, *, seed: int = 0,
                 timings: MeshTimings | None = None, udp_loss: float = 0.0) -> None:
        self.nursery = nursery
        self.tmp = tmp
        self.rng = random.Random(seed)
        self.net = FakeNetwork(rng=self.rng, udp_loss=udp_loss)
        self.timings = timings or MeshTimings()
        self.routers: dict[str, SimRouter] = {}

    async def add(self, ip: str, peers: tuple[str, ...] = (), *,
                  router_options: Mapping[str, object] | None = None,
                  **mesh: object) -> SimRouter:
        """Create a router at ``ip`` (nickname = ip) and start it.

        ``mesh`` overrides :class:`MeshConfig` fields, ``router_options`` other
        :class:`RouterConfig` fields (e.g. ``ipalloc_init``, ``ipalloc_range``).
        """
        mesh_config = replace(MeshConfig(), nickname=ip, peers=peers, timings=self.timings)
        mesh_config = replace(mesh_config, **mesh)  # type: ignore[arg-type]
        config = RouterConfig(mesh=mesh_config, db_path=self.tmp / f"{ip}.db", http_addr=None,
                              metrics_addr=None)
        config = replace(config, **(router_options or {}))  # type: ignore[arg-type]
        store = Store.open(config.db_path)
        sim_router = SimRouter(ip=ip, config=config, store=store)
        self.routers[ip] = sim_router
        await self.start(ip)
        return sim_router

    async def add_star(self, ips: Sequence[str], *,
                       router_options: Mapping[str, object] | None = None,
                       **mesh: object) -> None:
        """Add a router at each of ``ips``, every one but the first with the first as its
        one target (how every mesh simulation here starts); options as for :meth:`add`."""
        # ``mesh`` holds MeshConfig fields other than ``peers`` (mypy cannot tell)
        await self.add(ips[0], router_options=router_options, **mesh)  # type: ignore[arg-type]
        for ip in ips[1:]:
            await self.add(ip, peers=(ips[0],), router_options=router_options, **mesh)

    async def start(self, ip: str) -> None:
        """(Re)start the router at ``ip`` with a fresh UID, as a relaunch would.

        Its name (the first time), UID and short id are drawn from the simulation's seed,
        so a run with the same seed builds the same peers."""
        node = self.routers[ip]
        assert node.router is None, f"{ip} is already running"
        rng = random.Random(self.rng.random())
        name = settle_name(node.store, node.config.mesh.name, rng=rng)
        node.router = Router(node.config, node.store, network=self.net.host(ip), name=name,
                             rng=rng)
        node.scope = trio.CancelScope()
        await self.nursery.start(self._run, node)

    async def _run(self, node: SimRouter, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert node.router is not None
        with node.scope:
            await node.router.run(task_status=task_status)
        node.router = None

    async def stop(self, ip: str) -> None:
        """Stop the router at ``ip``; its peers see its connections close."""
        node = self.routers[ip]
        node.scope.cancel()
        while node.router is not None:
            await trio.sleep(0.01)

    async def kill(self, ip: str) -> None:
        """Crash the router at ``ip`` for good: its host drops off the network first, so
        peers get no goodbye (they time out), then it stops without a reset or hand-over.
        Its store stays readable (``routers[ip].store``); do not :meth:`start` it again
        before :meth:`FakeNetwork.heal` (its host stays isolated until then)."""
        self.net.isolate(ip)
        await self.stop(ip)

    async def wait_until(self, check: Callable[[], bool], *, timeout: float, what: str,
                         show: Callable[[], str] = lambda: "") -> float:
        """Poll ``check`` in virtual time; fail naming ``what`` (and ``show()``) on timeout."""
        start = trio.current_time()
        deadline = start + timeout
        while not check():
            if trio.current_time() >= deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; "
                                     f"seen: {show()}")
            await trio.sleep(min(0.5, max(deadline - trio.current_time(), 0.0)))
        return trio.current_time() - start

    def running(self) -> list[SimRouter]:
        return [r for r in self.routers.values() if r.router is not None]

    def full_mesh(self, group: list[SimRouter] | None = None) -> bool:
        """Every router in ``group`` has an established connection to every other one."""
        group = group if group is not None else self.running()
        names = {r.ip for r in group}
        return all(names - {r.ip} <= r.established_peers() for r in group)

    def mesh_summary(self, group: list[SimRouter] | None = None) -> str:
        group = group if group is not None else self.running()
        counts = sorted(len(r.established_peers()) for r in group)
        return f"established connections per router: min {counts[0]}, max {counts[-1]}" \
            if counts else "no routers"

    def close(self) -> None:
        for node in self.routers.values():
            node.store.close()

