"""The measurements: iperf3 TCP throughput and ping latency between two namespaces.

Each runs the real tool inside a namespace of the netns harness and parses its output;
the parsers are plain functions of the text so they can be checked without root.

* :func:`iperf3` runs ``iperf3 -c SERVER -t DURATION -O OMIT -P STREAMS -J`` in the
  client namespace against an ``iperf3 -s`` started by :func:`start_iperf3_server`;
  the figure is the receiver's ``end.sum_received.bits_per_second`` (the first ``OMIT``
  seconds, TCP slow start, are not counted).
* :func:`ping` runs ``ping -n -c COUNT -i INTERVAL`` and keeps every ``time=`` RTT, so
  the average and the 99th percentile (nearest rank) come from the same samples.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from router.testing.netns import CommandError, Namespace, wait_until

IPERF3_PORT = 5201
SERVER_START_TIMEOUT = 10.0  # seconds for iperf3 -s to listen
REACH_TIMEOUT = 20.0  # seconds for the first ping reply across a fresh path
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_RTT_RE = re.compile(r"\btime=([0-9.]+) ms\b")


class BenchError(RuntimeError):
    """A measurement could not be made; the message says what and why."""


@dataclass(frozen=True)
class TcpResult:
    """One iperf3 run: receiver Gbit/s, sender retransmits, CPU use of both ends (%)."""

    streams: int
    seconds: float
    gbps: float
    retransmits: int
    cpu_client_pct: float
    cpu_server_pct: float
    router_cpu_pct: float | None = None  # weave-router processes, % of one core

    def as_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class PingResult:
    """ICMP echo RTTs: how many were sent and answered, average and 99th percentile (ms)."""

    sent: int
    received: int
    avg_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    def as_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def of(cls, rtts: list[float], sent: int) -> PingResult:
        """The summary of ``rtts`` (ms, at least one) out of ``sent`` pings."""
        return cls(sent=sent, received=len(rtts), avg_ms=sum(rtts) / len(rtts),
                   p99_ms=percentile(rtts, 99.0), min_ms=min(rtts), max_ms=max(rtts))


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100] of a non-empty list."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def parse_ping(text: str, sent: int) -> list[float]:
    """The RTTs in ms of the reply lines (``... time=0.061 ms``) of ``ping -n`` output."""
    rtts = [float(m.group(1)) for m in _RTT_RE.finditer(text)]
    if not rtts:
        raise BenchError(f"no ping replies out of {sent}; ping said:\n{text.strip()[-600:]}")
    return rtts


def parse_iperf3(text: str, streams: int) -> TcpResult:
    """The summary of ``iperf3 -c ... -J`` output (the client's JSON document)."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise BenchError(f"iperf3 printed no JSON:\n{text.strip()[-600:]}") from None
    if not isinstance(doc, dict):
        raise BenchError(f"iperf3 JSON is not an object: {text.strip()[:200]}")
    if doc.get("error"):
        raise BenchError(f"iperf3 failed: {doc['error']}")
    try:
        end = doc["end"]
        received = end["sum_received"]
        cpu = end.get("cpu_utilization_percent", {})
        return TcpResult(
            streams=streams,
            seconds=float(received["seconds"]),
            gbps=float(received["bits_per_second"]) / 1e9,
            retransmits=int(end.get("sum_sent", {}).get("retransmits", 0)),
            cpu_client_pct=float(cpu.get("host_total", 0.0)),
            cpu_server_pct=float(cpu.get("remote_total", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchError(f"iperf3 JSON lacks the summary ({exc!r})") from None


def wait_reachable(client: Namespace, address: str, timeout: float = REACH_TIMEOUT) -> None:
    """Poll with single pings until ``address`` answers from ``client``."""
    def probe() -> tuple[bool, str]:
        proc = client.run(["ping", "-n", "-c", "1", "-W", "1", address], check=False,
                          timeout=5.0)
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()

    wait_until(f"{address} to answer pings from {client.name}", probe, timeout=timeout,
               interval=0.2)


def ping(client: Namespace, address: str, count: int, interval: float) -> list[float]:
    """RTTs (ms) of ``count`` pings ``interval`` seconds apart from ``client`` to ``address``."""
    argv = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1", address]
    proc = client.run(argv, check=False, timeout=count * interval + 30.0)
    return parse_ping(proc.stdout + proc.stderr, count)


def start_iperf3_server(server: Namespace) -> subprocess.Popen[str]:
    """``iperf3 -s`` in ``server``, returned once it listens (the caller terminates it)."""
    proc = server.popen(["iperf3", "-s", "-p", str(IPERF3_PORT)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def probe() -> tuple[bool, str]:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else ""
            raise BenchError(f"iperf3 -s exited {proc.returncode} in {server.name}: {err}")
        out = server.run(["ss", "-Htln", f"sport = :{IPERF3_PORT}"], check=False,
                         timeout=5.0).stdout
        return str(IPERF3_PORT) in out, out or "(nothing listening)"

    try:
        wait_until(f"iperf3 -s to listen in {server.name}", probe,
                   timeout=SERVER_START_TIMEOUT, interval=0.05)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Terminate ``proc`` and reap it (SIGKILL after 5 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


def process_cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads; with
    ``children``, also its children it waited for: the ``nft`` runs of a router); OSError
    if it is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()  # fields from 3 (state) on
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (fields 16, 17)
    return ticks / _CLK_TCK


def rss_kib(pid: int) -> int:
    """``pid``'s VmRSS in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(namespaces: Sequence[Namespace]) -> float:
    """User + system CPU seconds used so far by every process in ``namespaces``."""
    total = 0.0
    for ns in namespaces:
        for pid in ns.pids():
            try:
                total += process_cpu_seconds(pid)
            except OSError:
                continue  # exited meanwhile
    return total


def iperf3(client: Namespace, address: str, *, streams: int, duration: int, omit: int,
           watch: Sequence[Namespace] = ()) -> TcpResult:
    """TCP from ``client`` to the iperf3 server at ``address``: ``streams`` parallel.

    With ``watch``, the CPU used by the processes in those namespaces during the run is
    reported as ``router_cpu_pct`` (percent of one core, over the whole run).
    """
    argv = ["iperf3", "-c", address, "-p", str(IPERF3_PORT), "-t", str(duration),
            "-O", str(omit), "-P", str(streams), "-J"]
    cpu0, t0 = cpu_seconds(watch), time.monotonic()
    try:
        proc = client.run(argv, check=False, timeout=duration + omit + 30.0)
    except CommandError as exc:
        raise BenchError(str(exc)) from None
    cpu1, t1 = cpu_seconds(watch), time.monotonic()
    result = parse_iperf3(proc.stdout, streams)
    if watch:
        result = replace(result, router_cpu_pct=100.0 * (cpu1 - cpu0) / (t1 - t0))
    return result
