"""Results of a benchmark run: per-mode figures, ratios, targets, the table and the JSON.

Ratios are taken within one run only: each mode's throughput (the median of its rounds)
over the kernel VXLAN figure (``BASELINE``), and its ping RTT (every round's pings
pooled) minus the underlay's (``LATENCY_BASELINE``), so machines and runs of different
speed compare by ratio, never by absolute Gbit/s.

JSON layout (``bench/results/<UTC timestamp>.json``, ``schema`` 1)::

    {"schema": 1, "started_utc": "...", "finished_utc": "...", "ok": true,
     "machine": {"kernel", "cpus", "cpu_model", "python"}, "commit": "<sha>[-dirty]",
     "options": {"modes", "rounds", "duration_s", "omit_s", "pings", "ping_interval_s",
                 "profile", "interrupted", "loadavg_at_start"},
     "baseline": "vxlan", "latency_baseline": "underlay",
     "modes": {"<mode>": {"ok", "error", "path", "mtu", "seconds", "details",
                          "tcp_1": {"gbps": <median of rounds>, "router_cpu_pct",
                                    "runs": [{streams, seconds, gbps, retransmits,
                                              cpu_client_pct, cpu_server_pct,
                                              router_cpu_pct}, ...]},
                          "tcp_4": {...}, "ping": {sent, received, avg_ms, p99_ms, ...},
                          "ratio_1", "ratio_4", "added_avg_ms", "added_p99_ms"}},
     "targets": [{"name", "mode", "value", "limit", "met"}]}
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import PingResult, TcpResult
from bench.modes import BASELINE, LATENCY_BASELINE

STREAMS = (1, 4)  # iperf3 parallel streams measured per mode


@dataclass
class ModeResult:
    """What one mode measured over all rounds: iperf3 runs by stream count, ping RTTs."""

    mode: str
    path: str = ""
    mtu: int | None = None
    tcp: dict[int, list[TcpResult]] = field(default_factory=dict)
    rtts: list[float] = field(default_factory=list)  # ms, every round pooled
    pings_sent: int = 0
    error: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def gbps(self, streams: int) -> float | None:
        """Median Gbit/s of the ``streams``-stream runs (``None`` if none ran)."""
        runs = self.tcp.get(streams)
        return statistics.median(r.gbps for r in runs) if runs else None

    def router_cpu(self, streams: int) -> float | None:
        """Median router CPU (% of one core) of the ``streams``-stream runs, if watched."""
        cpu = [r.router_cpu_pct for r in self.tcp.get(streams, [])
               if r.router_cpu_pct is not None]
        return statistics.median(cpu) if cpu else None

    @property
    def ping(self) -> PingResult | None:
        """RTT summary of every ping of every round."""
        return PingResult.of(self.rtts, self.pings_sent) if self.rtts else None

    @property
    def measured(self) -> bool:
        """Whether anything was measured (a failed mode may still have earlier rounds)."""
        return bool(self.rtts or self.tcp)


@dataclass(frozen=True)
class Target:
    """A goal from the issue: ``value`` must be >= ``limit`` (or < it when ``below``)."""

    name: str
    mode: str
    value: float | None  # None: the mode or its baseline did not run
    limit: float
    below: bool = False

    @property
    def met(self) -> bool | None:
        """Whether the goal was reached (``None`` when it could not be measured)."""
        if self.value is None:
            return None
        return self.value < self.limit if self.below else self.value >= self.limit


def _ratio(result: ModeResult | None, base: ModeResult | None, streams: int) -> float | None:
    mine = result.gbps(streams) if result else None
    ref = base.gbps(streams) if base else None
    if mine is None or ref is None or ref <= 0:
        return None
    return mine / ref


def _added(result: ModeResult | None, base: ModeResult | None, attr: str) -> float | None:
    mine, ref = (result.ping if result else None), (base.ping if base else None)
    if mine is None or ref is None:
        return None
    return float(getattr(mine, attr) - getattr(ref, attr))


@dataclass(frozen=True)
class Derived:
    """The within-run comparisons of one mode."""

    ratio_1: float | None
    ratio_4: float | None
    added_avg_ms: float | None
    added_p99_ms: float | None


def derive(results: dict[str, ModeResult], name: str) -> Derived:
    """Ratios to the baseline's throughput and RTT added over the underlay's."""
    mine, base, under = results.get(name), results.get(BASELINE), results.get(LATENCY_BASELINE)
    return Derived(_ratio(mine, base, 1), _ratio(mine, base, 4),
                   _added(mine, under, "avg_ms"), _added(mine, under, "p99_ms"))


def targets(results: dict[str, ModeResult]) -> list[Target]:
    """The issue's goals for the sleeve, for every sleeve mode that was asked for."""
    out: list[Target] = []
    for mode, floor in (("sleeve", 0.5), ("sleeve-encrypted", 0.35)):
        if mode not in results:
            continue
        d = derive(results, mode)
        out.append(Target(f"{mode} 1-stream throughput / {BASELINE}", mode, d.ratio_1, floor))
        out.append(Target(f"{mode} 4-stream throughput / {BASELINE}", mode, d.ratio_4, floor))
        out.append(Target(f"{mode} added ping avg vs {LATENCY_BASELINE} (ms)", mode,
                          d.added_avg_ms, 0.3, below=True))
    if "fastdp" in results:  # the issue: >= 0.95 of kernel VXLAN, RTT within 10%, CPU < 5%
        d = derive(results, "fastdp")
        base = derive(results, BASELINE) if BASELINE in results else None
        out.append(Target(f"fastdp 1-stream throughput / {BASELINE}", "fastdp", d.ratio_1, 0.95))
        out.append(Target(f"fastdp 4-stream throughput / {BASELINE}", "fastdp", d.ratio_4, 0.95))
        rtt = (None if base is None or d.added_avg_ms is None or base.added_avg_ms is None
               else d.added_avg_ms - base.added_avg_ms)
        limit = 0.1 * abs(base.added_avg_ms) if base and base.added_avg_ms else 0.0
        out.append(Target(f"fastdp added ping avg over {BASELINE}'s (ms)", "fastdp", rtt,
                          max(limit, 0.005), below=True))
        cpu = results["fastdp"].router_cpu(1)
        out.append(Target("fastdp router CPU, 1 stream (% of a core)", "fastdp", cpu, 5.0,
                          below=True))
    return out


def _num(value: float | None, fmt: str, width: int) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def format_table(results: dict[str, ModeResult]) -> str:
    """The human table: one row per mode, then how each mode was connected, then targets."""
    head = (f"{'mode':<17}{'1 stream':>9}{'4 streams':>10}{'ping avg':>10}{'p99':>8}"
            f"{'1s/' + BASELINE:>10}{'4s/' + BASELINE:>10}{'+avg':>8}{'+p99':>8}")
    units = f"{'':<17}{'Gbit/s':>9}{'Gbit/s':>10}{'ms':>10}{'ms':>8}{'':>20}{'ms':>8}{'ms':>8}"
    rows = [head, units]
    for name, r in results.items():
        if r.error is not None and not r.measured:
            first = r.error.splitlines()[0] if r.error.strip() else "?"
            rows.append(f"{name:<17}FAILED: {first[:70]}")
            continue
        d = derive(results, name)
        tcp_1, tcp_4 = r.gbps(1), r.gbps(4)
        avg, p99 = (r.ping.avg_ms, r.ping.p99_ms) if r.ping else (None, None)
        rows.append(
            f"{name:<17}{_num(tcp_1, '.2f', 9)}{_num(tcp_4, '.2f', 10)}"
            f"{_num(avg, '.3f', 10)}{_num(p99, '.3f', 8)}"
            f"{_num(d.ratio_1, '.2f', 10)}{_num(d.ratio_4, '.2f', 10)}"
            f"{_num(d.added_avg_ms, '+.3f', 8)}{_num(d.added_p99_ms, '+.3f', 8)}"
            + ("  (incomplete, see below)" if r.error else ""))
    rows.append("")
    for name, r in results.items():
        if r.path:
            cpu = [(n, r.router_cpu(n)) for n in STREAMS]
            shown = ", ".join(f"{n} stream(s) {c:.0f}%" for n, c in cpu if c is not None)
            rows.append(f"{name:<17}{r.path}; container MTU {r.mtu}"
                        + (f"; routers' CPU (% of a core): {shown}" if shown else ""))
    goals = targets(results)
    if goals:
        rows.append("")
        for t in goals:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[t.met]
            rel = "<" if t.below else ">="
            rows.append(f"target {t.name} {rel} {t.limit:g}: "
                        f"{_num(t.value, '.3f', 0).strip()} {verdict}")
    return "\n".join(rows)


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version()}


def commit_id(repo: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10.0, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10.0).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _mode_json(results: dict[str, ModeResult], r: ModeResult) -> dict[str, Any]:
    d, ping = derive(results, r.mode), r.ping
    tcp = {f"tcp_{n}": {"gbps": r.gbps(n), "router_cpu_pct": r.router_cpu(n),
                        "runs": [t.as_json() for t in r.tcp.get(n, [])]} for n in STREAMS}
    return {
        "ok": r.error is None, "error": r.error, "path": r.path, "mtu": r.mtu,
        "seconds": round(r.seconds, 1), "details": r.details, **tcp,
        "ping": ping.as_json() if ping else None,
        "ratio_1": d.ratio_1, "ratio_4": d.ratio_4,
        "added_avg_ms": d.added_avg_ms, "added_p99_ms": d.added_p99_ms,
    }


def to_json(results: dict[str, ModeResult], *, options: dict[str, Any], started_utc: str,
            finished_utc: str, repo: Path) -> dict[str, Any]:
    """The whole run as the JSON document described in the module docstring."""
    return {
        "schema": 1, "started_utc": started_utc, "finished_utc": finished_utc,
        "ok": all(r.error is None for r in results.values()),
        "machine": machine_info(), "commit": commit_id(repo), "options": options,
        "baseline": BASELINE, "latency_baseline": LATENCY_BASELINE,
        "modes": {name: _mode_json(results, r) for name, r in results.items()},
        "targets": [{"name": t.name, "mode": t.mode, "value": t.value, "limit": t.limit,
                     "below": t.below, "met": t.met} for t in targets(results)],
    }


def write_json(doc: dict[str, Any], directory: Path, stamp: str) -> Path:
    """Write ``doc`` to ``directory/<stamp>.json`` (creating the directory); return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
