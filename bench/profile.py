"""Where the routers' time goes: a ``perf`` profile of one extra iperf3 run (``--profile``).

After the measured rounds, each router mode gets one more 1-stream iperf3 run, not
counted in the results, while ``perf record -a -g`` samples the whole machine. The
summary keeps the routers' processes only, split by thread and by DSO (libsodium, the
kernel, libc, ``router._fastpath``, libpython), with each line's share of all the CPU
samples of the machine (``--percentage absolute``: on 2 cores, 50 % is one core). The
whole machine is also split into router threads, iperf3, idle and other processes, so
a reader sees whether the cores were saturated and by whom. The ``perf.data`` file is deleted
afterwards; the summaries go to stdout and the JSON.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

PERF_FREQUENCY = 999  # samples per second per CPU (odd, so it does not beat with timers)
SUMMARY_LINES = 14


def available() -> str | None:
    """``None`` if ``perf`` can be used, else why not."""
    if shutil.which("perf") is None:
        return "perf is not installed (apt-get install linux-perf or linux-tools-generic)"
    return None


def start(path: Path, seconds: float) -> subprocess.Popen[str]:
    """``perf record -a -g`` for ``seconds`` into ``path`` (wait for it with :func:`stop`)."""
    argv = ["perf", "record", "-a", "-g", "-F", str(PERF_FREQUENCY), "-o", str(path), "--",
            "sleep", f"{seconds:g}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """Wait for ``perf record`` to finish; return its stderr if it failed, else ``""``."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return "perf record did not finish"
    return "" if proc.returncode == 0 else (err or f"perf record exited {proc.returncode}")


def thread_labels(pids_by_label: Mapping[str, Sequence[int]]) -> dict[int, str]:
    """``{thread id: label}`` for every thread of the given processes (e.g. by host)."""
    labels: dict[int, str] = {}
    for label, pids in pids_by_label.items():
        for pid in pids:
            with contextlib.suppress(OSError):
                labels.update((int(tid), label) for tid in os.listdir(f"/proc/{pid}/task"))
    return labels


def summary(path: Path, pids: Sequence[int], labels: Mapping[int, str],
            lines: int = SUMMARY_LINES) -> list[str]:
    """The top ``lines`` (thread, DSO) pairs of the processes ``pids``, each thread shown
    as ``tid:comm(label)`` when ``labels`` knows it."""
    argv = ["perf", "report", "-i", str(path), "--no-children", "--percentage", "absolute",
            "--pid", ",".join(map(str, pids)), "--sort", "pid,dso", "--stdio", "-g", "none"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120.0)
    rows = [_label(line.split(), labels) for line in proc.stdout.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and "%" in line]
    if not rows:
        return [f"(no samples for pids {list(pids)}: {proc.stderr.strip()[-300:]})"]
    return rows[:lines]


def machine_split(path: Path, labels: Mapping[int, str]) -> str:
    """One line: the share of all samples of the router threads (``labels``), iperf3,
    idle time (``swapper``) and everything else, with the biggest other threads, so a
    reader sees whether the cores were saturated and by whom."""
    argv = ["perf", "report", "-i", str(path), "--no-children", "--sort", "pid", "--stdio",
            "-g", "none"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120.0)
    shares = {"routers": 0.0, "iperf3": 0.0, "idle": 0.0, "other": 0.0}
    others: list[tuple[float, str]] = []
    for line in proc.stdout.splitlines():
        words = line.split()
        if len(words) < 2 or not words[0].endswith("%") or line.lstrip().startswith("#"):
            continue
        pct, (tid, _, comm) = float(words[0].rstrip("%")), words[1].partition(":")
        if tid.isdigit() and int(tid) in labels:
            shares["routers"] += pct
        elif comm.startswith("iperf3"):
            shares["iperf3"] += pct
        elif comm.startswith("swapper"):
            shares["idle"] += pct
        else:
            shares["other"] += pct
            others.append((pct, " ".join(words[1:])))
    top = ", ".join(f"{name} {pct:.1f}%" for pct, name in sorted(others, reverse=True)[:3])
    return (", ".join(f"{k} {v:.1f}%" for k, v in shares.items())
            + (f" (largest other: {top})" if top else ""))


def _label(words: list[str], labels: Mapping[int, str]) -> str:
    """``12.3% 4242:python libsodium.so`` with ``(host1)`` after the thread."""
    if len(words) >= 2:
        tid = words[1].partition(":")[0]
        if tid.isdigit() and int(tid) in labels:
            words[1] += f"({labels[int(tid)]})"
    return " ".join(words)
