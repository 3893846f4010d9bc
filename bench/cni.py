"""``make bench-cni``: time of a CNI ADD and DEL through weave-net, against the reference
``bridge`` + ``host-local`` plugins (Debian's containernetworking-plugins) in the same run.

One host namespace with a real ``weave-router`` (``router/testing/netns.py``) and
``--pods`` bare pod namespaces per plugin. The timing loop runs *inside* the host
namespace (this module re-run there with ``--inner``), so each figure is one plugin
process from exec to exit, as a runtime sees it, with no ``ip netns exec`` in it:

1. ADD of every pod, one at a time (weave-net, then the reference), then DEL of each;
   figures: p50/p99/max per verb and plugin, and the ratio weave-net / reference;
2. ``--concurrency`` pods added at once (and deleted at once), wall time per plugin: a
   runtime starting many pods together (the kernel port plumbs one at a time).

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
            cni_path: str) -> float:
    """Wall time of ``command`` for every pod at once."""
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        started = time.perf_counter()
        list(pool.map(lambda p: invoke(plugin, command, conf, p, cni_path), pods))
        return time.perf_counter() - started


def inner(spec: dict[str, Any]) -> dict[str, Any]:
    """The timing loops (run in the host namespace); the figures as JSON."""
    cni_path = f"{PLUGIN_DIR}:{REFERENCE_DIR}"
    plugins = {"weave-net": (str(PLUGIN_DIR / "weave-net"), weave_conf()),
               "reference": (str(REFERENCE_DIR / "bridge"), reference_conf(spec["data_dir"]))}
    out: dict[str, Any] = {}
    for name, (plugin, conf) in plugins.items():
        pods = spec["pods"][name]
        add = [invoke(plugin, "ADD", conf, p, cni_path) for p in pods]
        delete = [invoke(plugin, "DEL", conf, p, cni_path) for p in pods]
        burst = pods[: spec["concurrency"]]
        add_wall = at_once(plugin, "ADD", conf, burst, cni_path)
        del_wall = at_once(plugin, "DEL", conf, burst, cni_path)
        out[name] = {"add": add, "del": delete, "burst": len(burst),
                     "burst_add_wall": add_wall, "burst_del_wall": del_wall}
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
    figures: dict[str, Any] = {"pods": n_pods, "concurrency": spec["concurrency"]}
    for name, data in raw.items():
        figures[name] = {"add": summary(data["add"]), "del": summary(data["del"]),
                         "burst_add_wall_s": data["burst_add_wall"],
                         "burst_del_wall_s": data["burst_del_wall"]}
    ours, ref = figures["weave-net"], figures["reference"]
    figures["ratio"] = {f"{verb}_{q}": ours[verb][f"{q}_ms"] / ref[verb][f"{q}_ms"]
                        for verb in ("add", "del") for q in ("p50", "p99")}
    figures["ratio"]["burst_add"] = (figures["weave-net"]["burst_add_wall_s"]
                                     / figures["reference"]["burst_add_wall_s"])
    return figures


def table(f: dict[str, Any]) -> str:
    lines = [f"CNI ADD/DEL over {f['pods']} pods, one at a time (ms); burst: "
             f"{f['concurrency']} at once (s)",
             f"{'':12}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}"
             f"{'burst ADD':>11}{'burst DEL':>11}"]
    for name in ("weave-net", "reference"):
        x = f[name]
        lines.append(f"{name:12}{x['add']['p50_ms']:9.1f}{x['add']['p99_ms']:9.1f}"
                     f"{x['del']['p50_ms']:9.1f}{x['del']['p99_ms']:9.1f}"
                     f"{x['burst_add_wall_s']:11.2f}{x['burst_del_wall_s']:11.2f}")
    r = f["ratio"]
    lines.append(f"{'ratio':12}{r['add_p50']:9.2f}{r['add_p99']:9.2f}{r['del_p50']:9.2f}"
                 f"{r['del_p99']:9.2f}{r['burst_add']:11.2f}")
    worst = max(r["add_p50"], r["del_p50"])
    verdict = "within" if worst <= TARGET_RATIO else "MISSES"
    lines.append(f"target: p50 <= {TARGET_RATIO:g}x the reference: {verdict} ({worst:.2f}x)")
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
