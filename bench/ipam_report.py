"""Results of the IPAM benchmark: what each part measured, the table and the JSON.

Two parts (``bench/ipam.py``): ``local``, allocations through the HTTP API of one lone
router, sequential (one persistent connection) and concurrent (K connections); and
``consensus``, the time from the first ``POST /ip`` on host1 of a fresh 3-peer mesh until
its answer, for each way of launching the three peers.

JSON layout (``bench/results/ipam-<UTC timestamp>.json``, ``schema`` 1, ``kind`` "ipam")::

    {"schema": 1, "kind": "ipam", "started_utc", "finished_utc", "ok",
     "machine": {"kernel", "cpus", "cpu_model", "python"}, "commit": "<sha>[-dirty]",
     "options": {"parts", "allocs", "clients", "rounds", "consensus_rounds",
                 "interrupted", "loadavg_at_start"}, "cleanup_errors": [...],
     "local": {"ok", "error", "first_ms",
               "runs": {"sequential" | "concurrent": {
                   "clients", "allocs_per_s" (median of rounds), "frees_per_s",
                   "router_cpu_pct", "client_cpu_pct",
                   "latency_ms": {"n", "mean", "p50", "p90", "p99", "max"} (every round
                   pooled), "free_latency_ms": {...},
                   "rounds": [{"allocs", "seconds", "allocs_per_s", "frees_per_s",
                               "router_cpu_pct", "client_cpu_pct", "errors",
                               "error_samples", "reconnects", "distinct"}]}}},
     "consensus": {"<variant>": {"ok", "error", "launch",
                                 "first_ms": {"n", "median", "min", "max"},
                                 "host2_first_ms": {...},
                                 "rounds": [{"first_ms", "host2_first_ms", "address",
                                             "ipam_status_before", "setup_s"}]}},
     "targets": [{"name", "value", "limit", "below", "met"}]}
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import percentile

P99_LIMIT_MS = 5.0  # issue 5: local allocate latency p99 under 5 ms


def latency_summary(samples: list[float]) -> dict[str, float | int] | None:
    """Count, mean and nearest-rank percentiles of ``samples`` (ms); ``None`` if empty."""
    if not samples:
        return None
    return {"n": len(samples), "mean": statistics.fmean(samples),
            "p50": percentile(samples, 50.0), "p90": percentile(samples, 90.0),
            "p99": percentile(samples, 99.0), "max": max(samples)}


def spread(samples: list[float]) -> dict[str, float | int] | None:
    """Count, median, min and max of ``samples``; ``None`` if empty."""
    if not samples:
        return None
    return {"n": len(samples), "median": statistics.median(samples), "min": min(samples),
            "max": max(samples)}


@dataclass(frozen=True)
class BurstRound:
    """One burst: ``allocs`` POSTs by ``clients`` connections, then as many DELETEs."""

    clients: int
    allocs: int
    seconds: float  # allocation phase, wall clock
    free_seconds: float
    latencies_ms: list[float]
    free_latencies_ms: list[float]
    errors: int
    error_samples: list[str]
    reconnects: int
    distinct: int
    router_cpu_pct: float | None
    client_cpu_pct: float | None = None

    @property
    def allocs_per_s(self) -> float:
        """Answered allocations per second of the allocation phase."""
        return len(self.latencies_ms) / self.seconds if self.seconds > 0 else 0.0

    @property
    def frees_per_s(self) -> float:
        """Answered frees per second of the free phase."""
        return len(self.free_latencies_ms) / self.free_seconds if self.free_seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """The round without its raw samples."""
        return {"allocs": self.allocs, "seconds": self.seconds,
                "allocs_per_s": self.allocs_per_s, "frees_per_s": self.frees_per_s,
                "router_cpu_pct": self.router_cpu_pct,
                "client_cpu_pct": self.client_cpu_pct, "errors": self.errors,
                "error_samples": self.error_samples, "reconnects": self.reconnects,
                "distinct": self.distinct}


@dataclass
class LocalResult:
    """The ``local`` part: a lone router's first allocation, then bursts by kind."""

    first_ms: float | None = None
    runs: dict[str, list[BurstRound]] = field(default_factory=dict)
    error: str | None = None

    def pooled(self, kind: str) -> list[float]:
        """Every allocation latency (ms) of every round of ``kind``."""
        return [ms for r in self.runs.get(kind, []) for ms in r.latencies_ms]

    def median(self, kind: str, attr: str) -> float | None:
        """The median over the rounds of ``kind`` of a per-round figure (``None`` if none)."""
        values = [getattr(r, attr) for r in self.runs.get(kind, [])]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def p99(self) -> float | None:
        """p99 of the sequential allocation latencies, the issue's target figure."""
        summary = latency_summary(self.pooled("sequential"))
        return None if summary is None else float(summary["p99"])

    def as_json(self) -> dict[str, Any]:
        """The part as in the module docstring."""
        runs = {}
        for kind, rounds in self.runs.items():
            runs[kind] = {
                "clients": rounds[0].clients if rounds else None,
                "allocs_per_s": self.median(kind, "allocs_per_s"),
                "frees_per_s": self.median(kind, "frees_per_s"),
                "router_cpu_pct": self.median(kind, "router_cpu_pct"),
                "client_cpu_pct": self.median(kind, "client_cpu_pct"),
                "latency_ms": latency_summary(self.pooled(kind)),
                "free_latency_ms": latency_summary(
                    [ms for r in rounds for ms in r.free_latencies_ms]),
                "rounds": [r.as_json() for r in rounds]}
        return {"ok": self.error is None, "error": self.error, "first_ms": self.first_ms,
                "runs": runs}


@dataclass(frozen=True)
class ConsensusRound:
    """One fresh 3-peer mesh: host1's first allocation, then host2's."""

    first_ms: float
    host2_first_ms: float | None
    address: str
    ipam_status_before: str
    setup_s: float


@dataclass
class ConsensusResult:
    """The ``consensus`` part for one way of launching the three peers."""

    variant: str
    launch: str  # how the hosts were launched, for the table and the JSON
    rounds: list[ConsensusRound] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The variant as in the module docstring."""
        second = [r.host2_first_ms for r in self.rounds if r.host2_first_ms is not None]
        return {"ok": self.error is None, "error": self.error, "launch": self.launch,
                "first_ms": spread([r.first_ms for r in self.rounds]),
                "host2_first_ms": spread(second),
                "rounds": [{"first_ms": r.first_ms, "host2_first_ms": r.host2_first_ms,
                            "address": r.address, "ipam_status_before": r.ipam_status_before,
                            "setup_s": r.setup_s} for r in self.rounds]}


def _get(summary: dict[str, float | int] | None, key: str) -> float | None:
    return None if summary is None else float(summary[key])


def _num(value: float | None, fmt: str, width: int) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def _local_rows(local: LocalResult) -> list[str]:
    rows = [f"{'local (one peer)':<24}{'allocs/s':>9}{'p50':>8}{'p99':>8}{'max':>8}"
            f"{'frees/s':>9}{'CPU router':>11}{'client':>8}",
            f"{'':<24}{'':>9}{'ms':>8}{'ms':>8}{'ms':>8}{'':>9}{'% of a core':>19}"]
    for kind, rounds in local.runs.items():
        lat = latency_summary(local.pooled(kind))
        label = f"{kind} ({rounds[0].clients} conn)" if rounds else kind
        errors = sum(r.errors for r in rounds)
        rows.append(
            f"{label:<24}{_num(local.median(kind, 'allocs_per_s'), '.0f', 9)}"
            f"{_num(_get(lat, 'p50'), '.2f', 8)}{_num(_get(lat, 'p99'), '.2f', 8)}"
            f"{_num(_get(lat, 'max'), '.2f', 8)}"
            f"{_num(local.median(kind, 'frees_per_s'), '.0f', 9)}"
            f"{_num(local.median(kind, 'router_cpu_pct'), '.0f', 11)}"
            f"{_num(local.median(kind, 'client_cpu_pct'), '.0f', 8)}"
            + (f"  ({errors} errors)" if errors else ""))
    if local.first_ms is not None:
        rows.append(f"a lone peer's first allocation (ring created): {local.first_ms:.1f} ms")
    if local.error:
        rows.append(f"local FAILED: {local.error.splitlines()[0][:90]}")
    return rows


def _consensus_rows(results: list[ConsensusResult]) -> list[str]:
    rows = [f"{'consensus (3 peers)':<24}{'rounds':>7}{'median':>9}{'min':>9}{'max':>9}"
            f"{'host2 med':>11}",
            f"{'first POST on host1':<24}{'':>7}{'ms':>9}{'ms':>9}{'ms':>9}{'ms':>11}"]
    for r in results:
        first = spread([x.first_ms for x in r.rounds])
        second = spread([x.host2_first_ms for x in r.rounds if x.host2_first_ms is not None])
        rows.append(f"{r.variant:<24}{len(r.rounds):>7}{_num(_get(first, 'median'), '.1f', 9)}"
                    f"{_num(_get(first, 'min'), '.1f', 9)}"
                    f"{_num(_get(first, 'max'), '.1f', 9)}"
                    f"{_num(_get(second, 'median'), '.1f', 11)}"
                    + ("  (incomplete, see below)" if r.error else ""))
    rows.append("")
    rows += [f"{r.variant:<24}{r.launch}" for r in results]
    return rows


def target_rows(local: LocalResult | None) -> list[str]:
    """The issue's target line (local allocate p99), if the local part ran."""
    if local is None:
        return []
    p99 = local.p99()
    verdict = "not measured" if p99 is None else ("met" if p99 < P99_LIMIT_MS else "MISSED")
    return [f"target local allocate p99 (sequential) < {P99_LIMIT_MS:g} ms: "
            f"{_num(p99, '.2f', 0).strip()} {verdict}"]


def format_table(local: LocalResult | None, consensus: list[ConsensusResult]) -> str:
    """The human table: the local part, the consensus part, then the target."""
    rows: list[str] = []
    if local is not None:
        rows += [*_local_rows(local), ""]
    if consensus:
        rows += [*_consensus_rows(consensus), ""]
    rows += target_rows(local)
    return "\n".join(rows).rstrip()


def to_json(local: LocalResult | None, consensus: list[ConsensusResult], *,
            head: dict[str, Any]) -> dict[str, Any]:
    """The whole run; ``head`` carries started/finished, machine, commit and options."""
    p99 = local.p99() if local is not None else None
    ok = (local is None or local.error is None) and all(c.error is None for c in consensus)
    return {"schema": 1, "kind": "ipam", **head, "ok": ok,
            "local": local.as_json() if local is not None else None,
            "consensus": {c.variant: c.as_json() for c in consensus},
            "targets": [] if local is None else [
                {"name": "local allocate p99 (sequential, ms)", "value": p99,
                 "limit": P99_LIMIT_MS, "below": True,
                 "met": None if p99 is None else p99 < P99_LIMIT_MS}]}


def write_json(doc: dict[str, Any], directory: Path, stamp: str) -> Path:
    """Write ``doc`` to ``directory/ipam-<stamp>.json``; return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ipam-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
