"""The supervisor of a detached router: keeps ``launch --foreground`` running.

Started by a detached ``weave-router launch`` as
``python -m cli.supervise [--no-restart] -- LAUNCH-FLAGS...`` in its own session, with
stdout and stderr appended to the router's log file. It runs
``python -m cli.main launch --foreground LAUNCH-FLAGS...`` as its child and:

* child exits 0 (a ``stop``) or 2 (a bad configuration: restarting will not help) -> the
  supervisor exits with that code;
* the first child exits with an error within :data:`STARTUP_GRACE` -> exits too: that is
  a failed launch, and the waiting ``launch`` command reports it;
* otherwise (a crash, ``kill -9``) -> restart after a backoff (1 s, doubling up to
  30 s; back to 1 s after a child that ran :data:`STABLE_AFTER`), unless
  ``--no-restart``; every exit and restart is logged;
* SIGTERM or SIGINT to the supervisor is passed on to the child; once the child has
  exited the supervisor exits, never restarting.

Process titles (``ps``, ``pgrep weave-router``): ``weave-router: supervisor NICKNAME``
here, ``weave-router: router NICKNAME`` for the child (``router/daemon.py``).

A restarted router runs with ``--resume`` in place of the PEERs it was launched with:
it reconnects to the persisted targets, which include what ``connect`` added and leave
out what ``forget`` dropped since the launch.

:class:`RestartPolicy` holds the decision, free of processes and clocks, so it is tested
on its own.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import setproctitle

log = logging.getLogger("weave-router.supervisor")

EXIT_CONFIG = 2  # the daemon's "bad configuration" exit code (router/daemon.py)
STARTUP_GRACE = 10.0  # seconds: an error exit of the first child this early is a failed launch
STABLE_AFTER = 60.0  # seconds: a child that ran this long resets the backoff
BACKOFF_INITIAL = 1.0  # seconds
BACKOFF_MAX = 30.0  # seconds
SLEEP_SLICE = 0.1  # seconds: how often a backoff sleep checks for a stop request


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``signal SIGKILL`` (Popen gives -N for a signal)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class RestartPolicy:
    """Decides, after each child exit, whether and when to start the next one."""

    restart: bool = True  # False for --no-restart
    failures: int = 0  # consecutive short-lived runs, for the backoff
    runs: int = 0

    def after_exit(self, code: int, uptime: float, *, stopping: bool) -> float | None:
        """Seconds to wait before restarting, or None to exit. ``uptime`` in seconds."""
        self.runs += 1
        first = self.runs == 1
        if stopping or code in (0, EXIT_CONFIG) or not self.restart:
            return None
        if first and code > 0 and uptime < STARTUP_GRACE:
            return None
        if uptime >= STABLE_AFTER:
            self.failures = 0
        delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0 ** min(self.failures, 16))
        self.failures += 1
        return delay


def exit_status(code: int) -> int:
    """The supervisor's own exit status for a child's: 128+N for a signal, like a shell."""
    return 128 - code if code < 0 else code


class Supervisor:
    """Runs the child, forwards stop signals, applies the restart policy."""

    def __init__(self, launch_flags: Sequence[str], *, restart: bool) -> None:
        """``launch_flags``: what follows ``launch --foreground`` on the child's command line."""
        self.command = [sys.executable, "-m", "cli.main", "launch", "--foreground",
                        *launch_flags]
        self.restart_command = [*self.command[:5], *resume_flags(launch_flags)]
        self.policy = RestartPolicy(restart=restart)
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: stop for good, passing the signal on to the child."""
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self) -> int:
        """Supervise until the policy says stop; the last child's exit status."""
        code = 0
        while not self.stopping:
            started = time.monotonic()
            self.child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
            log.info("started router, pid %d", self.child.pid)
            if self.stopping:  # a signal came while the child was being started
                self.child.terminate()
            code = self.child.wait()
            uptime = time.monotonic() - started
            delay = self.policy.after_exit(code, uptime, stopping=self.stopping)
            if delay is None:
                log.info("router exited with %s after %.1f s; not restarting",
                         describe_exit(code), uptime)
                return exit_status(code)
            log.warning("router exited with %s after %.1f s; restarting in %g s",
                        describe_exit(code), uptime, delay)
            self.command = self.restart_command
            until = time.monotonic() + delay
            while time.monotonic() < until and not self.stopping:
                time.sleep(SLEEP_SLICE)
        return exit_status(code)


def resume_flags(launch_flags: Sequence[str]) -> list[str]:
    """The flags of a restart: the same options with ``--resume``, no PEERs.

    ``launch_flags`` is ``OPTIONS... -- PEERS...`` as ``cli.launch.config_to_argv``
    writes it (options never contain a bare ``--``).
    """
    flags = list(launch_flags)
    options = flags[: flags.index("--")] if "--" in flags else flags
    return [*options, "--resume"] if "--resume" not in options else options


def parse_argv(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """``[--no-restart] -- FLAGS...`` -> (restart, FLAGS)."""
    args = list(argv)
    restart = True
    while args and args[0] != "--":
        option = args.pop(0)
        if option != "--no-restart":
            raise SystemExit(f"weave-router supervisor: unknown option {option}")
        restart = False
    return restart, args[1:]


def _nickname(flags: Sequence[str]) -> str:
    """The ``--nickname`` among the launch flags ('' if none), for the process title."""
    flags = list(flags)
    return flags[flags.index("--nickname") + 1] if "--nickname" in flags[:-1] else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cli.supervise``."""
    restart, flags = parse_argv(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s - %(name)s: %(message)s")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    supervisor = Supervisor(flags, restart=restart)
    setproctitle.setproctitle(f"weave-router: supervisor {_nickname(flags)}".rstrip())
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return supervisor.run()


if __name__ == "__main__":
    raise SystemExit(main())
