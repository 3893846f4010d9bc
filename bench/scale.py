"""``make bench-scale``: how the mesh control plane grows with N, in the simulation.

For each N, a child process runs N real routers (``router/testing/sim.py``: the real
mesh, sleeve and store on a fake network, in trio's virtual time), all launched with
one common target, as the issue's measurements were. It measures, per N:

* **converge**: virtual and wall time until every router has an established connection
  to every other one, and the control-plane bytes (TCP, all gossip and heartbeats) sent
  until then;
* **steady**: control bytes per peer per second over ``--steady`` virtual seconds of a
  formed mesh (periodic gossip and heartbeats: what a quiet mesh costs);
* **split** and **heal**: the mesh is cut in two halves and kept apart until every
  router has dropped the other half (its connections time out: a minute or two of
  virtual time with Weave's timers); then the cut is healed, and the virtual and wall
  time and bytes until the full mesh is back are measured;
* the peak RSS of the child (every router of the mesh lives in it).

A child that exceeds ``--wall-limit`` seconds is stopped and reported as such. IPAM is
left out (``--ipalloc-range ''``): this measures the mesh; ``bench.ipam`` measures IPAM.

Usage (from the repository root; no root needed)::

    .venv/bin/python -m bench.scale [--sizes 100,300,1000] [--steady 60]
                                    [--wall-limit 900] [--seed 0]

Exit status: 0 every size measured, 1 a size failed or ran out of time, 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import trio
from trio.testing import MockClock

from router.testing.sim import Sim

POLL = 2.0  # virtual seconds between full-mesh checks (each walks every router's status)
CONVERGE_LIMIT = 1800.0  # virtual seconds to wait for a full mesh before giving up


@dataclass
class Figures:
    n: int
    converge_virtual_s: float
    converge_wall_s: float
    converge_bytes: int
    steady_bytes_per_peer_s: float
    split_virtual_s: float
    heal_virtual_s: float
    heal_wall_s: float
    heal_bytes: int
    peak_rss_mb: float


def _ips(n: int) -> list[str]:
    return [f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(n)]


async def _until(sim: Sim, check: Callable[[], bool], what: str) -> tuple[float, float]:
    """(virtual, wall) seconds until ``check()`` holds."""
    start, wall = trio.current_time(), time.monotonic()
    while not check():
        if trio.current_time() - start > CONVERGE_LIMIT:
            raise RuntimeError(f"not {what} within {CONVERGE_LIMIT:g} virtual s: "
                               f"{sim.mesh_summary()}")
        await trio.sleep(POLL)
    return trio.current_time() - start, time.monotonic() - wall


async def _measure(n: int, steady: float, seed: int, tmp: Path) -> Figures:
    async with trio.open_nursery() as nursery:
        sim = Sim(nursery, tmp, seed=seed)
        try:
            ips = _ips(n)
            options = {"ipalloc_range": None}
            await sim.add_star(ips, router_options=options)
            virtual, wall = await _until(sim, sim.full_mesh, "a full mesh at start")
            converge_bytes = sim.net.tcp_bytes

            before = sim.net.tcp_bytes
            await trio.sleep(steady)
            steady_rate = (sim.net.tcp_bytes - before) / n / steady

            half = n // 2
            sim.net.partition(ips[:half], ips[half:])
            sides = {ip: len(ips[:half]) if i < half else n - half for i, ip in enumerate(ips)}

            def split() -> bool:
                return all(len(r.established_peers()) == sides[r.ip] - 1 for r in sim.running())

            split_virtual, _ = await _until(sim, split, "split in two halves")
            sim.net.heal()
            before = sim.net.tcp_bytes
            heal_virtual, heal_wall = await _until(sim, sim.full_mesh, "healed")
            heal_bytes = sim.net.tcp_bytes - before
        finally:
            nursery.cancel_scope.cancel()
            sim.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Figures(n, virtual, wall, converge_bytes, steady_rate, split_virtual, heal_virtual,
                   heal_wall, heal_bytes, rss_mb)


def _child(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        figures = trio.run(_measure, args.one, args.steady, args.seed,
                           Path(tmp), clock=MockClock(autojump_threshold=0))
    print(json.dumps(asdict(figures)))
    return 0


def _run_size(n: int, args: argparse.Namespace) -> Figures | str:
    argv = [sys.executable, "-m", "bench.scale", "--one", str(n), "--steady", str(args.steady),
            "--seed", str(args.seed)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.wall_limit)
    except subprocess.TimeoutExpired:
        return f"did not finish within {args.wall_limit:g} s of wall time"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"failed (exit {proc.returncode}): {tail}"
    return Figures(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _table(results: dict[int, Figures | str]) -> str:
    head = ("N", "converge virt s", "wall s", "bytes", "steady B/s/peer", "split virt s",
            "heal virt s", "heal wall s", "heal bytes", "peak RSS MB")
    rows = [head]
    for n, fig in results.items():
        if isinstance(fig, str):
            rows.append((str(n), fig, *[""] * (len(head) - 2)))
            continue
        rows.append((str(n), f"{fig.converge_virtual_s:.1f}", f"{fig.converge_wall_s:.1f}",
                     _size(fig.converge_bytes), f"{fig.steady_bytes_per_peer_s:.0f}",
                     f"{fig.split_virtual_s:.1f}",
                     f"{fig.heal_virtual_s:.1f}", f"{fig.heal_wall_s:.1f}",
                     _size(fig.heal_bytes), f"{fig.peak_rss_mb:.0f}"))
    widths = [max(len(r[i]) for r in rows if len(r) > i) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
                     for r in rows)


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of peer counts") from None
    if not sizes or any(not 2 <= s <= 10_000 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: each size must be 2-10000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=[100, 300, 1000])
    parser.add_argument("--steady", type=float, default=60.0, help="virtual seconds")
    parser.add_argument("--wall-limit", type=float, default=900.0, help="seconds per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child's size
    args = parser.parse_args(argv)
    if args.one is not None:
        return _child(args)
    results: dict[int, Figures | str] = {}
    try:
        for n in args.sizes:
            print(f"N = {n} ...", file=sys.stderr, flush=True)
            results[n] = _run_size(n, args)
    except KeyboardInterrupt:
        print(_table(results))
        return 130
    print(_table(results))
    return 1 if any(isinstance(f, str) for f in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
