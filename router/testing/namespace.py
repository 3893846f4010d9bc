"""Network namespaces and the commands run in them, for the netns harness (``netns.py``).

:class:`Namespace` runs commands inside one namespace (``ip netns exec``) and kills what
is left in it; :func:`wait_until` polls against an absolute deadline and fails with a
:class:`WaitTimeout` that says what was awaited and what was seen; :func:`cleanup_leftovers`
and :func:`cleanup_stale` remove the namespaces of crashed runs (named ``wr<pid>n<seq>-...``).
Synchronous on purpose (subprocess + ``ip``). Re-exported by :mod:`router.testing.netns`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

TERM_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
_NS_RE = re.compile(r"^wr(\d+)n\d+-")


class CommandError(RuntimeError):
    """A command run by the harness failed (non-zero exit with ``check``, or timed out)."""


class WaitTimeout(AssertionError):
    """A poll reached its deadline; the message says what was awaited and what was seen."""


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` in the caller's namespace (10 s limit)."""
    return run_command(["ip", *args], check=check, timeout=10.0)


def run_command(argv: Sequence[str], *, check: bool, timeout: float, input: str | None = None,
                env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; :class:`CommandError` if it times out, or exits non-zero with ``check``."""
    shown = " ".join(argv)
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input,
            env=None if env is None else dict(env),
        )
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + _text(exc.stderr)
        msg = f"`{shown}` did not finish within {timeout:g}s; output so far:\n{out}"
        raise CommandError(msg) from None
    if check and proc.returncode != 0:
        raise CommandError(
            f"`{shown}` exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def wait_until(what: str, probe: Callable[[], tuple[bool, str]], *, timeout: float,
               interval: float = 0.1, context: Callable[[], str] | None = None) -> str:
    """Poll ``probe`` until it returns ``(True, seen)``; return ``seen``.

    On timeout raise :class:`WaitTimeout` with ``what``, the last ``seen`` and ``context()``.
    """
    deadline = time.monotonic() + timeout
    while True:
        ok, seen = probe()
        if ok:
            return seen
        if time.monotonic() >= deadline:
            extra = context() if context is not None else ""
            raise WaitTimeout(
                f"timed out after {timeout:g}s waiting for {what}\n"
                f"--- seen instead ---\n{seen.rstrip()}\n{extra}"
            )
        time.sleep(interval)


def run_parallel(*calls: Callable[[], T]) -> list[T]:
    """Run the calls in threads; return their results in order, re-raising the first error."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


class Namespace:
    """A network namespace that commands can run in (``ip netns exec``)."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self._env = env
        self._children: list[subprocess.Popen[str]] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
            input: str | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this namespace; raise :class:`CommandError` if ``check`` and rc != 0."""
        return run_command(self.argv(argv), check=check, timeout=timeout, input=input,
                    env={**self._env, **(env or {})})

    def popen(self, argv: Sequence[str], *, stdin: int | None = subprocess.DEVNULL,
              stdout: int | None = subprocess.PIPE, stderr: int | None = subprocess.PIPE,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``argv`` in this namespace without waiting; it is killed on teardown."""
        proc = subprocess.Popen(
            self.argv(argv), stdin=stdin, stdout=stdout, stderr=stderr, text=True,
            env={**self._env, **(env or {})},
        )
        self._children.append(proc)
        return proc

    def links(self) -> list[str]:
        """Names of the links in this namespace (``ip -o link show``, without ``@peer``)."""
        out = run_ip("-n", self.name, "-o", "link", "show", check=False).stdout
        return re.findall(r"^\d+: ([^:@\s]+)", out, re.MULTILINE)

    def addresses(self, dev: str) -> list[str]:
        """The IPv4 CIDRs on ``dev`` (empty if there is no such link)."""
        out = run_ip("-n", self.name, "-o", "-4", "addr", "show", "dev", dev, check=False).stdout
        return re.findall(r"\binet (\S+)", out)

    def pids(self) -> list[int]:
        """PIDs of every process whose network namespace is this one."""
        out = run_ip("netns", "pids", self.name, check=False).stdout
        return [int(tok) for tok in out.split() if tok.isdigit()]

    def kill_all(self, grace: float = TERM_GRACE) -> None:
        """SIGTERM every process in the namespace, then SIGKILL what is left after ``grace``."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            self._reap()
            with contextlib.suppress(WaitTimeout):
                wait_until(f"processes in {self.name} to exit", self._no_pids, timeout=wait,
                           interval=0.05)
        self._reap()

    def _no_pids(self) -> tuple[bool, str]:
        self._reap()
        pids = self.pids()
        return not pids, f"pids still in {self.name}: {pids}"

    def _reap(self) -> None:
        for proc in self._children:
            proc.poll()


def namespaces_with_prefix(prefix: str) -> list[str]:
    """Namespaces named ``prefix`` followed by a non-digit (so wr12 never matches wr123-...)."""
    out = run_ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix) and not n[len(prefix):][:1].isdigit()]


def cleanup_leftovers(prefix: str) -> list[str]:
    """Kill processes in and delete every namespace of ``prefix`` (e.g. ``wr<pid>``) and
    every root-namespace link starting with it; return the namespaces removed."""
    names = namespaces_with_prefix(prefix)
    for name in names:
        Namespace(name, {}).kill_all(grace=1.0)
        run_ip("netns", "del", name, check=False)
    out = run_ip("-o", "link", "show", check=False).stdout
    for match in re.finditer(r"^\d+: ([^:@\s]+)", out, re.MULTILINE):
        link = match.group(1)
        if link.startswith(prefix) and not link[len(prefix):][:1].isdigit():
            run_ip("link", "del", link, check=False)
    return names


def cleanup_stale() -> list[str]:
    """Remove the namespaces of harness runs whose process no longer exists."""
    removed: list[str] = []
    out = run_ip("netns", "list", check=False).stdout
    pids = {int(m.group(1)) for line in out.splitlines() if (m := _NS_RE.match(line))}
    for pid in pids:
        if not Path(f"/proc/{pid}").exists():
            removed += cleanup_leftovers(f"wr{pid}")
    return removed
