"""``make bench-dns``: weaveDNS against dnsmasq serving the same 200 names, in one run.

One host in a network namespace (``router/testing/netns.py``) runs a real ``weave-router``
(weaveDNS on its default address 169.254.255.53) and dnsmasq (on the host's eth0 address,
the same 200 names from a hosts file, no upstream). ``dnsperf`` runs in the same
namespace against each in turn, with the same query file (200 ``nI.weave.local A``):

1. **throughput**: ``dnsperf -c 4 -q 100 -l SECONDS``, unthrottled: queries per second of
   each and their ratio (target: weaveDNS >= 0.3 of dnsmasq).
2. **latency at 10,000 qps**: ``dnsperf -Q 10000 -v``: every query's latency, p50 / p99 /
   max, and how many were lost (target: p99 < 2 ms).
3. **memory**: the router's VmRSS with 200 entries, then after 10,000 more (PUT /name).

Prints the figures and writes ``bench/results/dns-<UTC timestamp>.json``. Exit 0 when
everything was measured (a missed target does not change it), 1 when a part failed,
2 not root or dnsperf/dnsmasq missing.

Usage (root; from the repository root)::

    .venv/bin/python -m bench.dns [--seconds 10] [--output DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
from pathlib import Path

from bench.measure import rss_kib
from router.testing.netns import Host, Mesh

NAMES = 200
MORE_ENTRIES = 10_000
TARGET_QPS = 10_000
WEAVEDNS = "169.254.255.53"
_PUT = """
import http.client, sys
start, count = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", 6784)
for i in range(start, start + count):
    ip = f"10.{32 + i // 65536}.{i // 256 % 256}.{i % 256}"
    conn.request("PUT", f"/name/weave:extern/{ip}?fqdn=n{i}.weave.local")
    r = conn.getresponse(); r.read()
    assert r.status == 200, (r.status, i)
"""


def _address(i: int) -> str:
    return f"10.{32 + i // 65536}.{i // 256 % 256}.{i % 256}"


def _dnsperf(host: Host, server: str, qfile: Path, *args: str, timeout: float
             ) -> str:
    return host.run(["dnsperf", "-s", server, "-d", str(qfile), *args],
                    timeout=timeout).stdout


def _qps(out: str) -> float:
    match = re.search(r"Queries per second:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"no 'Queries per second' in dnsperf output: {out[-500:]}")
    return float(match.group(1))


def _latencies(out: str) -> list[float]:
    """Per-query latencies (seconds) of ``dnsperf -v`` lines (``> NOERROR ... 0.000123``)."""
    found = []
    for line in out.splitlines():
        fields = line.split()
        if line.startswith(">") and fields and re.fullmatch(r"\d+\.\d+", fields[-1]):
            found.append(float(fields[-1]))
    return found


def _lost(out: str) -> str:
    match = re.search(r"Queries lost:\s+(\d+ \([\d.]+%\))", out)
    return match.group(1) if match else "?"


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def run(seconds: float, output: Path) -> dict[str, object]:
    with Mesh.build(n_hosts=1) as mesh:
        host = mesh.hosts[0]
        resolv = mesh.run_dir / "no-upstream.conf"
        resolv.write_text("# none\n")
        host.launch("--resolv-conf", str(resolv), "--ipalloc-range", "")
        pid = host.listener_pid()
        assert pid is not None, "no router pid"
        host.run([sys.executable, "-c", _PUT, "0", str(NAMES)], timeout=120)
        hosts_file = mesh.run_dir / "hosts"
        hosts_file.write_text("".join(f"{_address(i)} n{i}.weave.local\n" for i in range(NAMES)))
        qfile = mesh.run_dir / "queries"
        qfile.write_text("".join(f"n{i}.weave.local A\n" for i in range(NAMES)))
        host.popen(["dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                    f"--addn-hosts={hosts_file}", "--bind-interfaces",
                    f"--listen-address={host.ip}", "--user=root",
                    f"--pid-file={mesh.run_dir}/dnsmasq.pid"])
        host.run(["dig", "+short", "+tries=5", f"@{host.ip}", "n1.weave.local"], timeout=20)
        rss_200 = rss_kib(pid)
        flags = ["-c", "4", "-q", "100", "-l", str(seconds)]
        qps = {}
        for name, server in (("dnsmasq", host.ip), ("weavedns", WEAVEDNS)):
            qps[name] = _qps(_dnsperf(host, server, qfile, *flags, timeout=seconds + 30))
        latency = {}
        for name, server in (("weavedns", WEAVEDNS), ("dnsmasq", host.ip)):
            out = _dnsperf(host, server, qfile, "-Q", str(TARGET_QPS), "-l", str(seconds),
                           "-v", timeout=seconds + 60)
            values = _latencies(out)
            latency[name] = {"queries": len(values), "qps": _qps(out), "lost": _lost(out),
                             "p50_ms": _pct(values, 50) * 1e3, "p99_ms": _pct(values, 99) * 1e3,
                             "max_ms": max(values, default=float("nan")) * 1e3}
        host.run([sys.executable, "-c", _PUT, str(NAMES), str(MORE_ENTRIES)], timeout=600)
        rss_more = rss_kib(pid)
    result: dict[str, object] = {
        "names": NAMES, "seconds": seconds, "qps": qps,
        "qps_ratio": qps["weavedns"] / qps["dnsmasq"] if qps["dnsmasq"] else None,
        "latency_at_10000_qps": latency,
        "rss_kib": {"200_entries": rss_200, f"{NAMES + MORE_ENTRIES}_entries": rss_more},
    }
    output.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (output / f"dns-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.dns", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--output", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.dns: needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = [tool for tool in ("dnsperf", "dnsmasq", "dig") if shutil.which(tool) is None]
    if missing:
        print(f"bench.dns: missing {', '.join(missing)} (make setup installs them)",
              file=sys.stderr)
        return 2
    try:
        result = run(args.seconds, args.output)
    except Exception as exc:
        print(f"bench.dns: failed: {exc}", file=sys.stderr)
        return 1
    qps = result["qps"]
    assert isinstance(qps, dict)
    print(f"throughput (qps, {NAMES} names, dnsperf -c 4 -q 100): weaveDNS {qps['weavedns']:.0f}, "
          f"dnsmasq {qps['dnsmasq']:.0f}, ratio {result['qps_ratio']:.2f} (target >= 0.3)")
    latency = result["latency_at_10000_qps"]
    assert isinstance(latency, dict)
    for name, figures in latency.items():
        print(f"at {TARGET_QPS} qps, {name}: achieved {figures['qps']:.0f} qps, lost "
              f"{figures['lost']}, p50 {figures['p50_ms']:.3f} ms, p99 {figures['p99_ms']:.3f} "
              f"ms (target < 2 ms), max {figures['max_ms']:.3f} ms")
    rss = result["rss_kib"]
    assert isinstance(rss, dict)
    print("router RSS: " + ", ".join(f"{k.replace('_', ' ')}: {v / 1024:.1f} MiB"
                                     for k, v in rss.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
