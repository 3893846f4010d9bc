"""``make bench-ipam``: IPAM allocations per second through the HTTP API, and consensus time.

Real ``weave-router`` processes in network namespaces (``router/testing/netns.py``); the
client (``bench/ipam_client.py``) runs inside the host namespace (``ip netns exec``) and
talks HTTP/1.1 to the router's API on ``127.0.0.1:6784`` over persistent connections.

1. **local**: one host, ``weave-router launch`` with no peers (a lone peer: the first
   allocation creates the ring on its own, timed and reported apart). Then ``--rounds``
   rounds, each: a **sequential** burst (one connection, ``--allocs`` POST ``/ip/<id>``,
   each waiting for its answer, which waits for the sqlite commit; then DELETE
   ``/ip/<id>`` of each) and a **concurrent** burst (``--clients`` connections sharing
   ``--allocs`` ids). Figures: allocations/s and frees/s (median of rounds), per-request
   latency p50/p99/max (every round pooled), the router's CPU during the burst.
2. **consensus**: per round and per launch variant, a fresh 3-host mesh:
   ``consensus=3`` (host1 ``launch --ipalloc-init consensus=3``, host2/host3 the same
   plus host1's address) and ``peers`` (each host ``launch`` with the other two addresses,
   the seeds' ``launch $HOST2 $HOST3``: quorum from the target count). Once every host
   has 2 established connections and routes to both others (IPAM still ``idle``), time
   one POST ``/ip/<id>`` on host1 from sending it until it is answered (consensus + the
   first allocation), then one on host2 (it learns the ring by gossip). Median/min/max.
3. Tears everything down (routers, clients, namespaces) on success, failure, Ctrl-C or
   SIGTERM; prints the table; writes ``bench/results/ipam-<UTC timestamp>.json``
   (layout in ``bench/ipam_report.py``).

Exit status: 0 everything measured, 1 a part failed, 2 bad usage or not root, 130
interrupted. A missed target does not change it.

Usage (root; from the repository root)::

    .venv/bin/python -m bench.ipam [--parts local,consensus] [--allocs 2000] [--clients 8]
                                   [--rounds 3] [--consensus-rounds 5] [--quick]
                                   [--output DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ipam_report import (
    BurstRound,
    ConsensusResult,
    ConsensusRound,
    LocalResult,
    format_table,
    to_json,
    write_json,
)
from bench.report import commit_id, machine_info
from bench.run import BUSY_LOAD, Interrupts
from router.testing.netns import CommandError, Host, Mesh, WaitTimeout, parse_status, run_parallel

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CLIENT = Path(__file__).resolve().parent / "ipam_client.py"
UNIVERSE = ipaddress.IPv4Network("10.32.0.0/12")  # the default --ipalloc-range
PARTS = ("local", "consensus")
VARIANTS = ("consensus=3", "peers")
MESH_TIMEOUT = 30.0  # seconds for 3 fresh routers to connect and have routes
WARMUP_ALLOCS = 50  # allocations (and frees) before the measured bursts, not counted
REQUEST_TIMEOUT = 60.0  # seconds one request may wait (consensus included)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchFailure(RuntimeError):
    """A measurement went wrong (an error answer, a duplicate, a client that failed)."""


@dataclass(frozen=True)
class Options:
    """What to run: parts, burst size and concurrency, rounds of each part."""

    parts: tuple[str, ...]
    allocs: int
    clients: int
    rounds: int
    consensus_rounds: int
    output: Path


def _say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _mesh(n_hosts: int, interrupts: Interrupts, cleanup_errors: list[str]) -> Iterator[Mesh]:
    """A fresh mesh, built and torn down with signals deferred; a failed teardown is noted."""
    stack = contextlib.ExitStack()
    try:
        with interrupts.shielded():
            mesh = stack.enter_context(Mesh.build(n_hosts=n_hosts))
        yield mesh
    finally:
        with interrupts.shielded():
            try:
                stack.close()
            except Exception as exc:
                cleanup_errors.append(f"{type(exc).__name__}: {exc}")
                _say(f"  cleanup failed: {exc}")


def _client(host: Host, *args: str, timeout: float) -> dict[str, Any]:
    """Run ``ipam_client.py ARGS`` inside ``host``; its JSON answer."""
    proc = host.run([sys.executable, str(CLIENT), *args], timeout=timeout)
    try:
        out: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise BenchFailure(f"the client printed no JSON: {proc.stdout[-300:]!r} "
                           f"{proc.stderr[-300:]!r}") from None
    return out


def _cpu(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (exited ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def first_allocation(host: Host, ident: str) -> tuple[float, str]:
    """One timed POST /ip/<ident> from inside ``host``: (ms, the CIDR answered)."""
    out = _client(host, "first", "--id", ident, "--timeout", str(REQUEST_TIMEOUT),
                  timeout=REQUEST_TIMEOUT + 15.0)
    if out["status"] != 200:
        raise BenchFailure(f"POST /ip/{ident} on {host.nickname}: {out['status']} {out['body']}")
    address = ipaddress.IPv4Interface(out["body"])
    if address.ip not in UNIVERSE:
        raise BenchFailure(f"POST /ip/{ident} on {host.nickname} answered {address}, "
                           f"outside {UNIVERSE}")
    return float(out["seconds"]) * 1000.0, str(address)


def burst(host: Host, clients: int, allocs: int, prefix: str) -> BurstRound:
    """``allocs`` allocations by ``clients`` connections, then their frees; checked."""
    router_pids = host.pids()  # the router (and its supervisor): the client is not up yet
    cpu0 = _cpu(router_pids)
    out = _client(host, "burst", "--clients", str(clients), "--count", str(allocs),
                  "--prefix", prefix, "--timeout", str(REQUEST_TIMEOUT),
                  timeout=REQUEST_TIMEOUT + allocs)
    cpu = _cpu(router_pids) - cpu0
    alloc, free = out["alloc"], out["free"]
    busy = alloc["seconds"] + free["seconds"]
    result = BurstRound(
        clients=clients, allocs=allocs, seconds=alloc["seconds"],
        free_seconds=free["seconds"], latencies_ms=alloc["latencies_ms"],
        free_latencies_ms=free["latencies_ms"],
        errors=alloc["error_count"] + free["error_count"],
        error_samples=(alloc["errors"] + free["errors"])[:5], reconnects=out["reconnects"],
        distinct=out["distinct"], router_cpu_pct=100.0 * cpu / busy if busy > 0 else None,
        client_cpu_pct=100.0 * out["cpu_seconds"] / busy if busy > 0 else None)
    if result.errors:
        raise BenchFailure(f"{result.errors} failed requests, e.g. {result.error_samples[:2]}")
    if result.distinct != out["answers"]:
        raise BenchFailure(f"{out['answers']} answers but {result.distinct} distinct addresses")
    return result


def run_local(opts: Options, local: LocalResult, interrupts: Interrupts,
              cleanup_errors: list[str]) -> None:
    """The ``local`` part (see the module docstring); a failure is recorded in ``local``."""
    kinds = (("sequential", 1), ("concurrent", opts.clients))
    with _mesh(1, interrupts, cleanup_errors) as mesh:
        host = mesh.hosts[0]
        try:
            host.launch()
            local.first_ms, address = first_allocation(host, "bench-first")
            _say(f"  lone peer's first allocation: {address} in {local.first_ms:.1f} ms")
            burst(host, 1, WARMUP_ALLOCS, "bench-warmup")  # not counted
            for n in range(1, opts.rounds + 1):
                for kind, clients in kinds:
                    r = burst(host, clients, opts.allocs, f"bench-{kind[0]}{n}")
                    local.runs.setdefault(kind, []).append(r)
                    _say(f"  round {n} {kind} ({clients} conn): {r.allocs_per_s:.0f} allocs/s, "
                         f"{r.frees_per_s:.0f} frees/s")
        except (BenchFailure, CommandError, WaitTimeout, KeyError, ValueError) as exc:
            local.error = f"{type(exc).__name__}: {exc}\n{host.diagnostics()}"
            _say(f"  local FAILED: {str(exc).splitlines()[0]}")


def launch_variant(mesh: Mesh, variant: str) -> None:
    """Launch the three hosts the ``variant``'s way (see the module docstring)."""
    h1, h2, h3 = mesh.hosts
    if variant == "consensus=3":
        h1.launch("--ipalloc-init", "consensus=3")
        run_parallel(lambda: h2.launch("--ipalloc-init", "consensus=3", h1.ip),
                     lambda: h3.launch("--ipalloc-init", "consensus=3", h1.ip))
    else:
        ips = [h.ip for h in mesh.hosts]
        run_parallel(*(lambda h=h: h.launch(*(ip for ip in ips if ip != h.ip))
                       for h in mesh.hosts))


LAUNCH_TEXT = {
    "consensus=3": "host1: launch --ipalloc-init consensus=3; host2, host3: the same + host1",
    "peers": "each host: launch <the other two> (quorum from the 2 targets)",
}


def consensus_round(variant: str, n: int, interrupts: Interrupts,
                    cleanup_errors: list[str]) -> ConsensusRound:
    """One fresh 3-host mesh launched the ``variant``'s way: the timed first allocations."""
    started = time.monotonic()
    with _mesh(3, interrupts, cleanup_errors) as mesh:
        try:
            launch_variant(mesh, variant)
            mesh.wait_full_mesh(timeout=MESH_TIMEOUT)
            mesh.wait_routes(timeout=MESH_TIMEOUT)
            h1, h2 = mesh.hosts[:2]
            status = parse_status(h1.status()).get("ipam", {}).get("Status", "?")
            setup = time.monotonic() - started
            first_ms, address = first_allocation(h1, f"bench-consensus-{n}")
            second_ms, _ = first_allocation(h2, f"bench-consensus-{n}-h2")
        except (BenchFailure, CommandError, KeyError, ValueError) as exc:
            raise BenchFailure(f"{type(exc).__name__}: {exc}\n{mesh.diagnostics()}") from None
    return ConsensusRound(first_ms, second_ms, address, status, setup)


def run_consensus(opts: Options, results: list[ConsensusResult], interrupts: Interrupts,
                  cleanup_errors: list[str]) -> None:
    """The ``consensus`` part: rounds of every variant, interleaved."""
    for variant in VARIANTS:
        results.append(ConsensusResult(variant, LAUNCH_TEXT[variant]))
    for n in range(1, opts.consensus_rounds + 1):
        for r in results:
            if r.error is not None:
                continue
            try:
                one = consensus_round(r.variant, n, interrupts, cleanup_errors)
            except (BenchFailure, CommandError, WaitTimeout) as exc:
                r.error = f"round {n}: {exc}"
                _say(f"  {r.variant} FAILED: {str(exc).splitlines()[0]}")
                continue
            r.rounds.append(one)
            _say(f"  round {n} {r.variant}: host1 first allocation {one.first_ms:.1f} ms "
                 f"(IPAM was {one.ipam_status_before!r}), then host2 {one.host2_first_ms:.1f} ms")


def parse_args(argv: Sequence[str]) -> Options:
    """The command line as :class:`Options`; bad values exit 2 with argparse's message."""
    parser = argparse.ArgumentParser(prog="python -m bench.ipam",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, from: {', '.join(PARTS)} (default: both)")
    parser.add_argument("--allocs", type=int, default=2000,
                        help="allocations per burst (default 2000)")
    parser.add_argument("--clients", type=int, default=8,
                        help="connections of the concurrent burst (default 8)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the local bursts (default 3)")
    parser.add_argument("--consensus-rounds", type=int, default=5,
                        help="fresh 3-peer meshes per launch variant (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast look: --allocs 500 --rounds 1 --consensus-rounds 2")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="directory for the JSON results (default bench/results)")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        parser.error(f"--parts: choose one or both of {', '.join(PARTS)}, each once")
    allocs, rounds, c_rounds = ((500, 1, 2) if args.quick
                                else (args.allocs, args.rounds, args.consensus_rounds))
    if min(allocs, rounds, c_rounds, args.clients) < 1:
        parser.error("--allocs, --clients, --rounds and --consensus-rounds must be at least 1")
    if args.clients > 32:
        parser.error("--clients: at most 32 (the API serves 64 connections at once)")
    return Options(parts, allocs, args.clients, rounds, c_rounds, args.output)


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _run_parts(opts: Options, interrupts: Interrupts, local: LocalResult | None,
               consensus: list[ConsensusResult], cleanup_errors: list[str]) -> None:
    steps: list[tuple[str, Callable[[], None]]] = []
    if local is not None:
        steps.append((f"local: one peer, {opts.allocs} allocations per burst, "
                      f"{opts.rounds} round(s)",
                      lambda: run_local(opts, local, interrupts, cleanup_errors)))
    if "consensus" in opts.parts:
        steps.append((f"consensus: 3 peers, {opts.consensus_rounds} round(s) per variant",
                      lambda: run_consensus(opts, consensus, interrupts, cleanup_errors)))
    for i, (what, step) in enumerate(steps, start=1):
        _say(f"[{i}/{len(steps)}] {what}")
        step()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts, print the table, write the JSON; return the exit status."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench-ipam: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("ip") is None:
        print("bench-ipam: missing tool: ip (run `make setup`)", file=sys.stderr)
        return 2
    interrupts = Interrupts()
    interrupts.install()
    started, load = _utc(), os.getloadavg()[0]
    if load > BUSY_LOAD * (os.cpu_count() or 1):
        _say(f"note: the machine is busy (load average {load:.1f} on {os.cpu_count()} CPUs): "
             "latencies will be high and noisy")
    local = LocalResult() if "local" in opts.parts else None
    consensus: list[ConsensusResult] = []
    cleanup_errors: list[str] = []
    try:
        _run_parts(opts, interrupts, local, consensus, cleanup_errors)
    except KeyboardInterrupt:
        for part in [local, *consensus]:
            if part is not None and part.error is None:
                part.error = "interrupted"
        print(f"\ninterrupted ({interrupts.signal or 'SIGINT'}); cleaned up", file=sys.stderr,
              flush=True)
    with contextlib.suppress(KeyboardInterrupt), interrupts.shielded():
        return _finish(opts, local, consensus, cleanup_errors, started, load,
                       interrupted=interrupts.signal is not None)
    return 130


def _finish(opts: Options, local: LocalResult | None, consensus: list[ConsensusResult],
            cleanup_errors: list[str], started: dt.datetime, load: float, *,
            interrupted: bool) -> int:
    print()
    print(format_table(local, consensus))
    sys.stdout.flush()
    failed = [(name, error) for name, error in
              [("local", local.error if local else None),
               *((f"consensus {c.variant}", c.error) for c in consensus)] if error]
    for name, error in failed:
        print(f"\n--- {name} failed ---\n{error}", file=sys.stderr)
    for error in cleanup_errors:
        print(f"\n--- cleanup failed ---\n{error}", file=sys.stderr)
    options = {"parts": list(opts.parts), "allocs": opts.allocs, "clients": opts.clients,
               "rounds": opts.rounds, "consensus_rounds": opts.consensus_rounds,
               "interrupted": interrupted, "loadavg_at_start": round(load, 2)}
    head = {"started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": _utc().isoformat(timespec="seconds"), "machine": machine_info(),
            "commit": commit_id(REPO), "options": options, "cleanup_errors": cleanup_errors}
    path = write_json(to_json(local, consensus, head=head), opts.output,
                      started.strftime("%Y%m%dT%H%M%SZ"))
    print(f"\nresults: {path}")
    if interrupted:
        print("bench-ipam: interrupted; the table shows what was measured", file=sys.stderr)
        return 130
    if failed or cleanup_errors:
        print(f"bench-ipam: {len(failed) + len(cleanup_errors)} failure(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
