"""``make bench-api``: the control API's ``/status`` latency while 200 slow clients hold
connections and a reconnect storm runs (issue 9: "the API keeps answering ``/status``
within 100 ms while 200 slow clients hold connections").

One real router in a network namespace (``router/testing/netns.py``), launched as users
launch it; its API on TCP ``127.0.0.1:6784`` (in the namespace) and its unix socket.

1. **idle**: probes with nobody else connected (the baseline of this run);
2. **soak**: start ``--slow`` slow clients (half as ``nobody``, half as root; each sends
   half a request head and then a byte a second, and reconnects as soon as the router
   drops it) and ``--storm`` tasks (as ``nobody``) that connect, send half a head and
   hang up, as fast as they can; once every slow client is connected, probe again.

A probe (``router/testing/slow_clients.py probe``) is ``--count`` sequential ``GET
/status`` requests 20 ms apart, each on a new connection as the CLI makes them, over the
unix socket (root), over TCP as root (Weave's script runs curl as root), and over TCP as
user ``daemon`` (a local user who is not the attacker). Figures: p50, p99 and max in ms
and failed requests, per phase and path; the target is p99 under 100 ms in the soak.
Plus ``weave-router status`` (the CLI, a new Python process each time) timed 5 times per
phase. Bounded: at most ``MAX_SLOW`` clients and ``MAX_SECONDS`` seconds of holding; only
loopback inside throwaway namespaces. Writes ``bench/results/api-<UTC timestamp>.json``.

Exit status: 0 measured (a missed target does not change it), 1 a part failed, 2 bad
usage or not root.

Usage (root; from the repository root)::

    .venv/bin/python -m bench.api_soak [--slow 200] [--storm 8] [--count 200] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.report import commit_id, machine_info
from router.testing import as_user
from router.testing.netns import CommandError, Host, Mesh

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MAX_SLOW = 1000
MAX_SECONDS = 300.0  # the holders give up after this, whatever happens
TARGET_P99_MS = 100.0
CLIENTS = "router.testing.slow_clients"


def _clients(user: str | None, *args: str) -> list[str]:
    """slow_clients ARGS, as root or as ``user`` (router/testing/as_user.py)."""
    if user is None:
        return [sys.executable, "-m", CLIENTS, *args]
    return as_user.argv(user, CLIENTS, *args)
ENV = {"PYTHONPATH": str(REPO)}


def _say(text: str) -> None:
    print(text, flush=True)


def _summary(latencies: list[float]) -> dict[str, float | int]:
    ordered = sorted(latencies)
    if not ordered:
        return {"n": 0}
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(ordered), "p50": statistics.median(ordered), "p99": p99,
            "max": ordered[-1]}


def _probe(host: Host, path: str, count: int) -> dict[str, Any]:
    sock = str(host.db_path.with_suffix(".sock"))
    where = {"unix (root)": ["--unix", sock], "tcp (root)": ["--tcp", "127.0.0.1:6784"],
             "tcp (daemon)": ["--tcp", "127.0.0.1:6784"]}[path]
    user = "daemon" if path == "tcp (daemon)" else None
    try:
        proc = host.run(_clients(user, "probe", *where, "--count", str(count)), env=ENV,
                        timeout=60 + count * 0.5)
        result = dict(json.loads(proc.stdout))
    except (CommandError, ValueError) as exc:  # counted as failures, the run goes on
        return {"n": 0, "failures": count, "failure_examples": [str(exc)[:300]]}
    return {**_summary(result["latencies_ms"]), "failures": result["failure_count"],
            "failure_examples": result["failures"][:3]}


def _cli_times(host: Host, rounds: int = 5) -> dict[str, Any]:
    """``weave-router status`` over TCP (the default in the namespace), timed."""
    times, failures = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        proc = host.router("status", check=False, timeout=60)
        elapsed = (time.perf_counter() - start) * 1000.0
        if proc.returncode == 0:
            times.append(elapsed)
        else:
            failures += 1
    return {**_summary(times), "failures": failures}


def _measure(host: Host, count: int) -> dict[str, Any]:
    paths = ("unix (root)", "tcp (root)", "tcp (daemon)")
    return {**{p: _probe(host, p, count) for p in paths}, "cli status": _cli_times(host)}


def _holders(host: Host, slow: int, storm: int) -> list[subprocess.Popen[str]]:
    half = slow // 2
    procs = []
    for user, n, m in (("nobody", slow - half, storm), (None, half, 0)):
        argv = _clients(user, "hold", "--slow", str(n), "--storm", str(m), "--trickle", "1",
                        "--seconds", str(MAX_SECONDS))
        proc = host.popen(argv, stdin=subprocess.PIPE, env=ENV)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if json.loads(line or "{}").get("ready") is not True:
            raise RuntimeError(f"slow clients did not all connect: {line!r}")
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    counts = []
    for proc in procs:
        try:
            out, _ = proc.communicate("", timeout=30)
            lines = out.strip().splitlines()
            counts.append(json.loads(lines[-1]) if lines else {})
        except subprocess.TimeoutExpired:
            proc.kill()
            counts.append({"error": "did not stop"})
    return counts


def run(slow: int, storm: int, count: int) -> dict[str, Any]:
    """Both phases on one fresh router; the figures as a JSON-ready dict."""
    with Mesh.build(n_hosts=1) as mesh:
        host = mesh.hosts[0]
        host.launch()
        _say("idle: probing /status ...")
        idle = _measure(host, count)
        _say(f"soak: {slow} slow clients and a storm of {storm} ...")
        procs = _holders(host, slow, storm)
        try:
            soak = _measure(host, count)
        finally:
            counts = _stop(procs)
        log = host.log_file.read_text(errors="replace")
    return {"idle": idle, "soak": soak, "slow_clients": counts,
            "router_tracebacks": log.count("Traceback")}


def format_table(doc: dict[str, Any]) -> str:
    rows = [f"{'phase':<6} {'path':<14} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'failed':>6}"]
    for phase in ("idle", "soak"):
        for path, s in doc[phase].items():
            if s.get("n"):
                rows.append(f"{phase:<6} {path:<14} {s['n']:>5} {s['p50']:>8.1f} "
                            f"{s['p99']:>8.1f} {s['max']:>8.1f} {s['failures']:>6}")
            else:
                rows.append(f"{phase:<6} {path:<14} {0:>5} {'-':>8} {'-':>8} {'-':>8} "
                            f"{s['failures']:>6}")
    worst = max((s.get("p99", float("inf")) if s.get("n") else float("inf"))
                for path, s in doc["soak"].items() if path != "cli status")
    verdict = "met" if worst < TARGET_P99_MS else "MISSED"
    rows.append(f"target: /status p99 < {TARGET_P99_MS:g} ms with the slow clients: {verdict} "
                f"(worst p99 {worst:.1f} ms)")
    for i, counts in enumerate(doc["slow_clients"]):
        who = "nobody" if i == 0 else "root"
        rows.append(f"slow clients ({who}): {json.dumps(counts, sort_keys=True)}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_soak")
    parser.add_argument("--slow", type=int, default=200, help="slow clients (default 200)")
    parser.add_argument("--storm", type=int, default=8, help="reconnect-storm tasks")
    parser.add_argument("--count", type=int, default=200, help="requests per probe")
    parser.add_argument("--quick", action="store_true", help="--count 50")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 0 <= args.slow <= MAX_SLOW or not 0 <= args.storm <= 100 or not 1 <= args.count <= 2000:
        print(f"bench-api: --slow 0-{MAX_SLOW}, --storm 0-100, --count 1-2000", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench-api: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    count = 50 if args.quick else args.count
    started = dt.datetime.now(dt.UTC)
    try:
        doc = run(args.slow, args.storm, count)
    except Exception as exc:
        print(f"bench-api: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    doc = {"started_utc": started.isoformat(timespec="seconds"), "machine": machine_info(),
           "commit": commit_id(REPO), "loadavg_at_start": os.getloadavg()[0],
           "options": {"slow": args.slow, "storm": args.storm, "count": count}, **doc}
    print()
    print(format_table(doc))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"api-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nresults: {path}")
    failed = sum(s["failures"] for phase in ("idle", "soak") for s in doc[phase].values())
    if failed or doc["router_tracebacks"]:
        print(f"bench-api: {failed} failed request(s), {doc['router_tracebacks']} "
              "traceback(s) in the router log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
