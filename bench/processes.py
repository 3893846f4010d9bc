"""``make bench-processes``: N real router processes (default 20) in network namespaces
form a full mesh; each router's memory and idle CPU.

Issue 16 asks that 20 real routers on this machine form a full mesh and that each stays
under 60 MB of RSS and under 1% of a core when idle. The run:

1. builds N hosts on one LAN (``router/testing/netns.py``), launches host1, then the
   others, four at a time, with host1 as their only target (discovery does the rest),
   and times until every router has N - 1 established connections and nothing else;
2. attaches one container per host (an IPAM address each: the ring is shared by all) and
   pings host N's container from host1's;
3. lets the mesh settle, then samples each router's CPU time (``/proc/PID/stat``: utime +
   stime) over an idle window, and its VmRSS at the end (and its PSS, which shares the
   pages of Python and the libraries among the routers).

Prints one row per router and the worst and median figures against the targets, and
writes ``bench/results/processes-<UTC timestamp>.json``. Exit 0 when everything was
measured (a missed target does not change it), 1 when a step failed, 2 when not root.

Usage (root; from the repository root)::

    .venv/bin/python -m bench.processes [--routers 20] [--idle-seconds 30] [--output DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.measure import process_cpu_seconds, rss_kib
from router.testing.netns import Host, Mesh, run_parallel

RSS_TARGET_MIB = 60.0
CPU_TARGET_PERCENT = 1.0
LAUNCH_BATCH = 4  # routers launched at once (each launch starts a Python process)
LAUNCH_TIMEOUT = 120.0
SETTLE_SECONDS = 10.0  # after the pings, before the idle window


@dataclass(frozen=True)
class RouterFigures:
    host: str
    pid: int
    rss_mib: float
    pss_mib: float  # its share of pages shared with the other routers (Python, libraries)
    idle_cpu_percent: float
    idle_cpu_children_percent: float  # with the processes it ran (nft) in the window


@dataclass(frozen=True)
class MeshFigures:
    routers: int
    launch_seconds: float
    full_mesh_seconds: float
    idle_seconds: float
    rows: list[RouterFigures]


def _pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for pid {pid}")


def _router_pid(host: Host) -> int:
    pid = host.listener_pid()
    if pid is None:
        raise RuntimeError(f"{host.name}: no router listening on 6783")
    return pid


def measure(n: int, idle: float) -> MeshFigures:
    with Mesh.build(n_hosts=n) as mesh:
        started = time.monotonic()
        hub, *rest = mesh.hosts
        hub.launch(timeout=LAUNCH_TIMEOUT)
        for i in range(0, len(rest), LAUNCH_BATCH):  # a few at a time: 2 cores
            run_parallel(*(lambda h=h: h.launch(hub.ip, timeout=LAUNCH_TIMEOUT)
                           for h in rest[i:i + LAUNCH_BATCH]))
        launched = time.monotonic() - started
        mesh.wait_full_mesh(timeout=300.0)
        formed = time.monotonic() - started
        containers = [mesh.add_bare_container(h) for h in mesh.hosts]
        run_parallel(*(c.attach for c in containers))
        far = containers[-1].run(["ip", "-4", "-o", "addr", "show", "ethwe"]).stdout.split()[3]
        ping = containers[0].run(["ping", "-c", "3", "-W", "2", far.split("/")[0]],
                                 check=False, timeout=30)
        if ping.returncode != 0:
            raise RuntimeError(f"host1's container cannot ping host{n}'s ({far}):\n"
                               f"{ping.stdout}{ping.stderr}")
        time.sleep(SETTLE_SECONDS)
        pids = {h.name: _router_pid(h) for h in mesh.hosts}
        before = {name: (process_cpu_seconds(pid), process_cpu_seconds(pid, children=True))
                  for name, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(idle)
        elapsed = time.monotonic() - t0
        rows = [RouterFigures(
            name, pid, round(rss_kib(pid) / 1024, 1), round(_pss_mib(pid), 1),
            round(100 * (process_cpu_seconds(pid) - before[name][0]) / elapsed, 2),
            round(100 * (process_cpu_seconds(pid, children=True) - before[name][1]) / elapsed,
                  2))
            for name, pid in pids.items()]
        return MeshFigures(n, round(launched, 1), round(formed, 1), round(elapsed, 1), rows)


def report(result: MeshFigures) -> str:
    rows, n = result.rows, result.routers
    lines = [f"{n} routers: launched in {result.launch_seconds} s, full mesh "
             f"({n} x {n - 1} established) after {result.full_mesh_seconds} s; "
             f"idle window {result.idle_seconds} s",
             f"{'host':<24} {'pid':>8} {'RSS MiB':>8} {'PSS MiB':>8} {'idle CPU %':>11}"]
    lines += [f"{r.host:<24} {r.pid:>8} {r.rss_mib:>8.1f} {r.pss_mib:>8.1f} "
              f"{r.idle_cpu_percent:>11.2f}" for r in rows]
    rss = [r.rss_mib for r in rows]
    cpu = [r.idle_cpu_percent for r in rows]
    met = "met" if max(rss) < RSS_TARGET_MIB else "missed"
    lines.append(f"RSS MiB: median {statistics.median(rss):.1f}, max {max(rss):.1f} "
                 f"(target < {RSS_TARGET_MIB:.0f}: {met}); PSS MiB: median "
                 f"{statistics.median(r.pss_mib for r in rows):.1f}")
    lines.append(f"idle CPU % of a core: median {statistics.median(cpu):.2f}, max "
                 f"{max(cpu):.2f} (target < {CPU_TARGET_PERCENT:.0f}: "
                 f"{'met' if max(cpu) < CPU_TARGET_PERCENT else 'missed'})")
    lines.append("with the processes they ran (nft): median "
                 f"{statistics.median(r.idle_cpu_children_percent for r in rows):.2f}, max "
                 f"{max(r.idle_cpu_children_percent for r in rows):.2f}")
    lines.append(f"load average: {Path('/proc/loadavg').read_text().split()[0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routers", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.processes: must run as root (network namespaces)", file=sys.stderr)
        return 2
    try:
        result = measure(args.routers, args.idle_seconds)
    except Exception as exc:  # a step failed: say which, exit 1
        print(f"bench.processes: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.output / f"processes-{stamp}.json"
    out.write_text(json.dumps(asdict(result), indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
