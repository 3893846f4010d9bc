"""``make bench``: container-to-container TCP throughput and ping latency, per overlay mode.

1. **Set up** every mode asked for (``bench/modes.py``: underlay, vxlan, sleeve,
   sleeve-encrypted, fastdp), each on its own two hosts in network namespaces
   (``router/testing/netns.py``): connect a container on each host the mode's way, wait
   until the server container answers pings, send 10 warm-up pings, start ``iperf3 -s``.
2. **Measure in rounds** (``--rounds``, default 3): each round visits every mode in turn
   and runs ``--pings``/rounds pings 10 ms apart on the idle path, then iperf3 TCP with 1
   stream and with 4 streams for ``--duration`` seconds (after 1 s omitted). Interleaving
   the modes spreads the machine's background load over all of them alike, so the ratios
   stay fair on a busy machine; a mode's figure is the median of its rounds.
3. ``--profile``: one more 1-stream iperf3 run per router mode under ``perf record -a``
   (``bench/profile.py``), not counted: the routers' CPU by thread and DSO.
4. **Tear down** everything: iperf3, routers, every process in the namespaces, the
   namespaces (on success, on failure, on Ctrl-C and SIGTERM; a second signal during the
   cleanup only prints a notice).
5. **Report**: the table (Gbit/s, ping avg and p99, ratios to kernel VXLAN, latency added
   over the underlay, the issue's targets) on stdout, the JSON in
   ``bench/results/<UTC timestamp>.json``. A mode that fails is reported with its reason
   (for the router modes with their status and log tail) and drops out; the others go on.

Exit status: 0 every mode measured, 1 a mode failed, 2 bad usage or a missing tool, 130
interrupted. Missed targets do not change it: this is a benchmark, not a test.

Usage (root; from the repository root)::

    .venv/bin/python -m bench.run [--modes underlay,vxlan,sleeve,sleeve-encrypted,fastdp]
                                  [--rounds 3] [--duration 5] [--pings 200] [--quick]
                                  [--profile] [--output DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from bench import measure, profile
from bench.measure import BenchError
from bench.modes import MODES, Mode, ModeUnavailable, Pair
from bench.report import STREAMS, ModeResult, format_table, to_json, write_json
from router.testing.netns import CommandError, Mesh, WaitTimeout

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TOOLS = ("ip", "iperf3", "ping", "ss", "sysctl")
PING_INTERVAL = 0.01  # seconds between pings
WARMUP_PINGS = 10
OMIT = 1  # seconds at the start of each iperf3 run not counted (slow start)
BUSY_LOAD = 0.5  # load average per CPU at the start above which the run warns


@dataclass(frozen=True)
class Options:
    """What to run: modes in order, rounds, iperf3 seconds per run, pings per mode."""

    modes: tuple[str, ...]
    rounds: int
    duration: int
    pings: int
    output: Path
    profile: bool = False


class Interrupts:
    """SIGINT/SIGTERM become one KeyboardInterrupt, never in the middle of a cleanup.

    Inside :meth:`shielded` a signal is remembered and raised when the block ends; once
    the interrupt has been raised, further signals only print a notice.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self._raised = False
        self._depth = 0

    def install(self) -> None:
        """Route SIGINT and SIGTERM to this object."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name
        if self._depth or self._raised:
            print(f"\n{self.signal}: cleaning up first, please wait", file=sys.stderr,
                  flush=True)
            return
        self._raised = True
        raise KeyboardInterrupt(self.signal)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Defer signals until the block is done."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.signal is not None and not self._raised:
            self._raised = True
            raise KeyboardInterrupt(self.signal)


@dataclass
class Prepared:
    """A mode that is set up and ready to measure, and what tears it down."""

    mode: Mode
    mesh: Mesh
    pair: Pair
    stack: contextlib.ExitStack
    result: ModeResult
    started: float


def _say(text: str) -> None:
    print(text, flush=True)


def _failure(exc: BaseException, mesh: Mesh | None, mode: Mode) -> str:
    """One message for a failed mode: the error and, for router modes, their diagnostics."""
    text = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, (BenchError, CommandError, WaitTimeout, ModeUnavailable)):
        text = f"unexpected {text}"
    if (mesh is not None and mode.name.startswith("sleeve")
            and not isinstance(exc, (WaitTimeout, ModeUnavailable))):
        with contextlib.suppress(Exception):
            text += "\n" + mesh.diagnostics()
    return text


def _close(stack: contextlib.ExitStack, result: ModeResult, interrupts: Interrupts) -> None:
    """Unwind ``stack`` with signals deferred; a failure to clean up fails the mode."""
    with interrupts.shielded():
        try:
            stack.close()
        except Exception as exc:
            note = f"cleanup failed: {type(exc).__name__}: {exc}"
            result.error = f"{result.error}\n{note}" if result.error else note
            _say(f"  {result.mode}: {note}")


def prepare(mode: Mode, result: ModeResult, interrupts: Interrupts) -> Prepared | None:
    """Build the mode's hosts and containers and start iperf3 -s; ``None`` if it failed
    (the reason is in ``result.error`` and what was built is already removed)."""
    started = time.monotonic()
    stack = contextlib.ExitStack()
    mesh: Mesh | None = None
    try:
        mesh = stack.enter_context(Mesh.build(n_hosts=2))
        pair = mode.setup(mesh, stack)
        result.path, result.mtu, result.details = pair.path, pair.mtu, dict(pair.details)
        measure.wait_reachable(pair.client, pair.server_ip)
        measure.ping(pair.client, pair.server_ip, WARMUP_PINGS, PING_INTERVAL)
        server = measure.start_iperf3_server(pair.server)
        stack.callback(measure.stop_process, server)
    except Exception as exc:  # a mode that cannot be set up is reported, the others run
        result.error = _failure(exc, mesh, mode)
        _say(f"  FAILED: {result.error.splitlines()[0]}")
        _close(stack, result, interrupts)
        result.seconds = time.monotonic() - started
        return None
    except BaseException:
        _close(stack, result, interrupts)
        raise
    _say(f"  ready: {pair.path}, container MTU {pair.mtu}")
    return Prepared(mode, mesh, pair, stack, result, started)


def measure_round(p: Prepared, opts: Options) -> None:
    """One round of pings and iperf3 runs; a failure is recorded and ends the mode."""
    pair, result = p.pair, p.result
    count = math.ceil(opts.pings / opts.rounds)
    try:
        rtts = measure.ping(pair.client, pair.server_ip, count, PING_INTERVAL)
        result.rtts += rtts
        result.pings_sent += count
        line = [f"ping avg {sum(rtts) / len(rtts):.3f} ms ({len(rtts)}/{count})"]
        for streams in STREAMS:
            tcp = measure.iperf3(pair.client, pair.server_ip, streams=streams,
                                 duration=opts.duration, omit=OMIT, watch=pair.watch)
            result.tcp.setdefault(streams, []).append(tcp)
            cpu = "" if tcp.router_cpu_pct is None else f", routers {tcp.router_cpu_pct:.0f}%"
            line.append(f"{streams}x TCP {tcp.gbps:.2f} Gbit/s "
                        f"({tcp.retransmits} retr{cpu})")
        _say("  " + p.mode.name + ": " + "; ".join(line))
    except Exception as exc:
        result.error = _failure(exc, p.mesh, p.mode)
        _say(f"  {p.mode.name} FAILED: {result.error.splitlines()[0]}")


def finish_mode(p: Prepared, interrupts: Interrupts) -> None:
    """Record the routers' last connection lines, then tear the mode down."""
    if p.mode.name.startswith("sleeve"):
        for host in p.mesh.hosts:
            p.result.details[f"after_{host.nickname}"] = host.status("connections").strip()
    _close(p.stack, p.result, interrupts)
    p.result.seconds = time.monotonic() - p.started


def profile_mode(p: Prepared, opts: Options) -> None:
    """One extra 1-stream iperf3 run under ``perf record``; the routers' share by thread
    and DSO goes to stdout and ``details["profile"]`` (not counted in the results)."""
    by_host = {ns.name.rpartition("-")[2]: ns.pids() for ns in p.pair.watch}
    labels = profile.thread_labels(by_host)
    pids = [pid for host_pids in by_host.values() for pid in host_pids]
    info: dict[str, object] = {"router_pids": by_host}
    p.result.details["profile"] = info
    with tempfile.TemporaryDirectory(prefix="wr-bench-perf-") as tmp:
        path = Path(tmp) / "perf.data"
        recorder = profile.start(path, opts.duration)
        try:
            tcp = measure.iperf3(p.pair.client, p.pair.server_ip, streams=1,
                                 duration=opts.duration, omit=OMIT, watch=p.pair.watch)
        except BenchError as exc:
            info["error"] = str(exc)
            tcp = None
        except BaseException:
            recorder.kill()
            recorder.wait()
            raise
        problem = profile.stop(recorder)
        rows = [problem] if problem else profile.summary(path, pids, labels)
        machine = "" if problem else profile.machine_split(path, labels)
    info.update(gbps=tcp.gbps if tcp else None, threads_by_dso=rows, machine=machine)
    shown = f"{tcp.gbps:.2f} Gbit/s" if tcp else f"iperf3 failed: {info['error']}"
    _say(f"  {p.mode.name} (1 stream, {shown}); share of all CPU samples, "
         f"router threads by DSO:")
    for row in rows:
        _say(f"    {row}")
    if machine:
        _say(f"  whole machine: {machine}")


def run_all(opts: Options, interrupts: Interrupts, results: dict[str, ModeResult],
            prepared: list[Prepared]) -> None:
    """Set every mode up, then measure them in interleaved rounds."""
    for i, name in enumerate(opts.modes, start=1):
        _say(f"[setup {i}/{len(opts.modes)}] {name}")
        results[name] = ModeResult(name)
        ready = prepare(MODES[name], results[name], interrupts)
        if ready is not None:
            prepared.append(ready)
    for n in range(1, opts.rounds + 1):
        _say(f"[round {n}/{opts.rounds}]")
        for p in prepared:
            if p.result.error is None:
                measure_round(p, opts)
    profiled = [p for p in prepared if p.result.error is None and p.pair.watch]
    if opts.profile and profiled:
        _say("[profile: one more 1-stream run per router mode under perf record -a -g]")
        for p in profiled:
            try:
                profile_mode(p, opts)
            except Exception as exc:  # a profile is extra: its failure fails nothing
                p.result.details["profile_error"] = f"{type(exc).__name__}: {exc}"
                _say(f"  {p.mode.name}: profile failed: {exc}")


def parse_args(argv: Sequence[str]) -> Options:
    """The command line as :class:`Options`; bad values exit 2 with argparse's message."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from: {', '.join(MODES)} (default: all)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurement rounds, modes interleaved (default 3)")
    parser.add_argument("--duration", type=int, default=5,
                        help="seconds per iperf3 run, after 1 s omitted (default 5)")
    parser.add_argument("--pings", type=int, default=200,
                        help="pings per mode, 10 ms apart, over all rounds (default 200)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast look: --rounds 1 --duration 2 --pings 50")
    parser.add_argument("--profile", action="store_true",
                        help="then profile each router mode with perf (one extra run)")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="directory for the JSON results (default bench/results)")
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown mode {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        parser.error("--modes: a mode is named twice")
    rounds, duration, pings = ((1, 2, 50) if args.quick
                               else (args.rounds, args.duration, args.pings))
    if min(rounds, duration, pings) < 1:
        parser.error("--rounds, --duration and --pings must be at least 1")
    return Options(modes, rounds, duration, pings, args.output, args.profile)


def _preflight(opts: Options) -> str | None:
    if os.geteuid() != 0:
        return "make bench needs root (it creates network namespaces)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (run `make setup`)"
    return profile.available() if opts.profile else None


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the modes, print the table, write the JSON; return the exit status."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    problem = _preflight(opts)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    interrupts = Interrupts()
    interrupts.install()
    started = _utc()
    load = os.getloadavg()[0]
    if load > BUSY_LOAD * (os.cpu_count() or 1):
        _say(f"note: the machine is busy (load average {load:.1f} on {os.cpu_count()} CPUs): "
             "absolute figures will be low and noisy, ratios less so")
    results: dict[str, ModeResult] = {}
    prepared: list[Prepared] = []
    try:
        try:
            run_all(opts, interrupts, results, prepared)
        except KeyboardInterrupt:
            for r in results.values():
                if r.error is None:
                    r.error = "interrupted"
            print(f"\ninterrupted ({interrupts.signal or 'SIGINT'}); cleaning up",
                  file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(KeyboardInterrupt), interrupts.shielded():
            if prepared:
                _say(f"tearing down {len(prepared)} mode(s)")
            for p in reversed(prepared):
                finish_mode(p, interrupts)
    with contextlib.suppress(KeyboardInterrupt), interrupts.shielded():
        return _finish(results, opts, started, load, interrupted=interrupts.signal is not None)
    return 130


def _finish(results: dict[str, ModeResult], opts: Options, started: dt.datetime,
            load: float, *, interrupted: bool) -> int:
    print()
    if results:
        print(format_table(results))
    failed = {name: r.error for name, r in results.items() if r.error}
    sys.stdout.flush()
    for name, error in failed.items():
        print(f"\n--- {name} failed ---\n{error}", file=sys.stderr)
    options = {"modes": list(opts.modes), "rounds": opts.rounds, "duration_s": opts.duration,
               "omit_s": OMIT, "pings": opts.pings, "ping_interval_s": PING_INTERVAL,
               "profile": opts.profile, "interrupted": interrupted,
               "loadavg_at_start": round(load, 2)}
    doc = to_json(results, options=options, started_utc=started.isoformat(timespec="seconds"),
                  finished_utc=_utc().isoformat(timespec="seconds"), repo=REPO)
    path = write_json(doc, opts.output, started.strftime("%Y%m%dT%H%M%SZ"))
    print(f"\nresults: {path}")
    if interrupted:
        print("bench: interrupted; the table shows what was measured", file=sys.stderr)
        return 130
    if failed:
        print(f"bench: {len(failed)} mode(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
