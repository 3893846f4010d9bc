"""``make bench-cni``: time of a CNI ADD and DEL through weave-net, against the reference
``bridge`` + ``host-local`` plugins (Debian's containernetworking-plugins) in the same run.

One host namespace with a real ``weave-router`` (``router/testing/netns.py``) and
``--pods`` bare pod namespaces per plugin. The timing loop runs *inside* the host
namespace (this module re-run there with ``--inner``), so each figure is one plugin
process from exec to exit, as a runtime sees it, with no ``ip netns exec`` in it:

1. ADD of every pod, one at a time, then DEL of each, the two plugins alternating pod by
   pod (so both see the same host, with the same load on the machine); figures:
   p50/p99/max per verb and plugin, and the ratio weave-net / reference;
2. bursts: the pods in groups of ``--concurrency`` added at once (then deleted at once),
   the plugins alternating burst by burst: p50/p99 of each ADD and DEL inside a burst,
   and the wall time of a burst (mean over the bursts), as ratios too: a runtime
   starting many pods together.

Prints a table, writes ``bench/results/cni-<UTC timestamp>.json``. Exit 0 when measured
(a missed 2x target does not change it), 1 a part failed, 2 not root.

Usage (root, from the repository root)::

    .venv/bin/python -m bench.cni [--pods 100] [--concurrency 20] [--output DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "build" / "cni"
REFERENCE_DIR = Path("/usr/lib/cni")
TARGET_RATIO = 2.0


def weave_conf() -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "hairpinMode": True}


def reference_conf(data_dir: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cniref0",
            "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": data_dir,
                     "ranges": [[{"subnet": "10.99.0.0/16"}]]}}


# --- inside the host namespace --------------------------------------------------------------


def invoke(plugin: str, command: str, conf: dict[str, Any], pod: str,
           cni_path: str) -> float:
    """Run ``plugin`` for one pod; seconds from exec to exit. Raises on failure."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": pod, "CNI_NETNS": f"/run/netns/{pod}",
           "CNI_IFNAME": "eth0", "CNI_PATH": cni_path, "PATH": os.environ["PATH"]}
    started = time.perf_counter()
    proc = subprocess.run([plugin], input=json.dumps(conf), env=env, capture_output=True,
                          text=True, timeout=120)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{plugin} {command} {pod} exited {proc.returncode}: "
                           f"{proc.stdout.strip()} {proc.stderr.strip()}")
    return took


def at_once(plugin: str, command: str, conf: dict[str, Any], pods: list[str],
            cni_path: str) -> tuple[float, list[float]]:
    """``command`` for every pod at once: the wall time and each invocation's time."""
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        started = time.perf_counter()
        each = list(pool.map(lambda p: invoke(plugin, command, conf, p, cni_path), pods))
        return time.perf_counter() - started, each


def inner(spec: dict[str, Any]) -> dict[str, Any]:
    """The timing loops (run in the host namespace); the figures as JSON."""
    cni_path = f"{PLUGIN_DIR}:{REFERENCE_DIR}"
    plugins = {"weave-net": (str(PLUGIN_DIR / "weave-net"), weave_conf()),
               "reference": (str(REFERENCE_DIR / "bridge"), reference_conf(spec["data_dir"]))}
    out: dict[str, Any] = {name: {"add": [], "del": [], "burst_add": [], "burst_del": [],
                                  "burst_add_wall": [], "burst_del_wall": []}
                           for name in plugins}
    n = len(spec["pods"]["weave-net"])
    for verb in ("ADD", "DEL"):
        for i in range(n):
            for name, (plugin, conf) in plugins.items():
                took = invoke(plugin, verb, conf, spec["pods"][name][i], cni_path)
                out[name][verb.lower()].append(took)
    size = spec["concurrency"]
    for first in range(0, n - size + 1, size):
        for verb in ("ADD", "DEL"):
            for name, (plugin, conf) in plugins.items():
                wall, each = at_once(plugin, verb, conf,
                                     spec["pods"][name][first:first + size], cni_path)
                out[name][f"burst_{verb.lower()}"] += each
                out[name][f"burst_{verb.lower()}_wall"].append(wall)
    for data in out.values():
        data["burst"] = size
    return out


# --- outside ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(times: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(times, 0.5) * 1e3, "p99_ms": percentile(times, 0.99) * 1e3,
            "max_ms": max(times) * 1e3, "mean_ms": statistics.fmean(times) * 1e3}


def measure(n_pods: int, concurrency: int) -> dict[str, Any]:
    from router.testing.netns import Mesh

    load_before = _loadavg()
    with Mesh.build(n_hosts=1) as mesh, tempfile.TemporaryDirectory() as tmp:
        [host] = mesh.hosts
        host.launch()
        host.wait_ready()
        pods = {name: [mesh.add_bare_container(host).name for _ in range(n_pods)]
                for name in ("weave-net", "reference")}
        spec = {"pods": pods, "concurrency": min(concurrency, n_pods),
                "data_dir": str(Path(tmp) / "host-local")}
        proc = host.run([sys.executable, "-m", "bench.cni", "--inner", json.dumps(spec)],
                        timeout=1800)
        raw = json.loads(proc.stdout)
    figures: dict[str, Any] = {"pods": n_pods, "concurrency": spec["concurrency"],
                               "loadavg": f"{load_before} -> {_loadavg()}"}
    for name, data in raw.items():
        figures[name] = {verb: summary(data[verb])
                         for verb in ("add", "del", "burst_add", "burst_del")}
        for verb in ("burst_add", "burst_del"):
            figures[name][f"{verb}_wall_s"] = statistics.fmean(data[f"{verb}_wall"])
    ours, ref = figures["weave-net"], figures["reference"]
    figures["ratio"] = {f"{verb}_{q}": ours[verb][f"{q}_ms"] / ref[verb][f"{q}_ms"]
                        for verb in VERBS for q in ("p50", "p99")}
    for verb in ("burst_add", "burst_del"):
        figures["ratio"][f"{verb}_wall"] = ours[f"{verb}_wall_s"] / ref[f"{verb}_wall_s"]
    return figures


VERBS = ("add", "del", "burst_add", "burst_del")


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: figures move with it)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def table(f: dict[str, Any]) -> str:
    lines = [f"CNI ADD/DEL over {f['pods']} pods (ms): one at a time, and in bursts of "
             f"{f['concurrency']} at once (each call's time; wall: a whole burst); "
             f"load average {f['loadavg']}",
             f"{'':12}" + "".join(f"{h:>10}" for h in (
                 "ADD p50", "ADD p99", "DEL p50", "DEL p99", "bADD p50", "bADD p99",
                 "bDEL p50", "bDEL p99", "bADD wall", "bDEL wall"))]
    for name in ("weave-net", "reference"):
        x = f[name]
        cells = [x[v][f"{q}_ms"] for v in VERBS for q in ("p50", "p99")]
        cells += [x["burst_add_wall_s"] * 1e3, x["burst_del_wall_s"] * 1e3]
        lines.append(f"{name:12}" + "".join(f"{c:10.1f}" for c in cells))
    r = f["ratio"]
    cells = [r[f"{v}_{q}"] for v in VERBS for q in ("p50", "p99")]
    cells += [r["burst_add_wall"], r["burst_del_wall"]]
    lines.append(f"{'ratio':12}" + "".join(f"{c:10.2f}" for c in cells))
    worst = max(cells)
    verdict = "within" if worst <= TARGET_RATIO else "MISSES"
    lines.append(f"target: every figure <= {TARGET_RATIO:g}x the reference's: {verdict} "
                 f"(worst {worst:.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.cni", description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(json.loads(args.inner))))
        return 0
    if os.geteuid() != 0:
        print("bench.cni: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    if not (PLUGIN_DIR / "weave-net").exists():
        print("bench.cni: build the plugin first (make cni)", file=sys.stderr)
        return 1
    try:
        figures = measure(args.pods, args.concurrency)
    except Exception as exc:
        print(f"bench.cni: failed: {exc}", file=sys.stderr)
        return 1
    print(table(figures))
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output / f"cni-{stamp}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
