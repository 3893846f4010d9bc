"""Throwaway hosts in network namespaces: the shape the integration tests, demo and bench share.

::

    <prefix>-c1 (container)           <prefix>-c2 (container)
         | ethwe (veth, no address)        | ethwe
    <prefix>-h1: vethwec1, eth0       <prefix>-h2: vethwec2, eth0      weave-router runs here
         | eth0 192.168.X.1/24             | eth0 192.168.X.2/24
         +----------- <prefix>-lan: bridge "lan" (the underlay LAN) ---+

Every veth is created directly inside its namespaces (``ip -n A link add ... peer ... netns
B``), so nothing ever appears in the root namespace. ``<prefix>`` is ``wr<pid>n<seq>``:
unique per process and per mesh, so parallel runs never collide and leftovers of crashed
runs are easy to find (:func:`cleanup_leftovers`, :func:`cleanup_stale`).

Synchronous on purpose (subprocess + ``ip``): the tests, ``tests/demo.py`` and ``bench/``
drive it from plain code. Usage::

    with Mesh.build(n_hosts=3) as mesh:
        h1, h2, h3 = mesh.hosts
        h1.launch()
        run_parallel(lambda: h2.launch(h1.ip), lambda: h3.launch(h1.ip))
        mesh.wait_full_mesh()  # each host: 2 established connections, nothing else
        c1, c2 = mesh.add_bare_container(h1), mesh.add_bare_container(h2)
        c1.attach("ip:10.32.1.1/12"); c2.attach("ip:10.32.1.2/12")  # weave-router attach
        c1.run(["ping", "-c", "1", "10.32.1.2"])

Containers come in two kinds: :meth:`Mesh.add_bare_container` makes an empty namespace
(only ``lo``) for ``weave-router attach`` to plumb; :meth:`Mesh.add_container` pre-makes a
veth pair (``ethwe`` in the container, ``vethwecN`` in the host) for callers that wire
the host end themselves (kernel baselines in ``bench/``). Both are named ``<prefix>-cN``.

Every wait is a poll against an absolute deadline; on timeout it raises :class:`WaitTimeout`
naming what was awaited, what was seen instead, the host's last ``status connections`` and
its router log tail. Teardown (``close()``, also on ``__exit__``) stops the routers
(``weave-router stop``), kills what is left in each namespace by PID (SIGTERM, then
SIGKILL), deletes the namespaces (which removes their links) and the per-run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

MAX_HOSTS = 250  # host i gets 192.168.X.i
ROUTER_LOG = "router.log"
ROUTER_DB = "weave.db"
STOP_TIMEOUT = 10.0  # seconds for `weave-router stop` during teardown
TERM_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
_seq = itertools.count(1)
_own_leftovers_cleaned = False
_cleanup_lock = threading.Lock()  # guards the cleanup of leftovers in Mesh.build
_NS_RE = re.compile(r"^wr(\d+)n\d+-")


class CommandError(RuntimeError):
    """A command run by the harness failed (non-zero exit with ``check``, or timed out)."""


class WaitTimeout(AssertionError):
    """A poll reached its deadline; the message says what was awaited and what was seen."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check, timeout=10.0)


def _run(argv: Sequence[str], *, check: bool, timeout: float, input: str | None = None,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
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


# --- parsing the CLI's text output -----------------------------------------------------


@dataclass(frozen=True)
class ConnectionLine:
    """One line of ``status connections``: ``-> 192.168.1.2:6783  established ...``."""

    outbound: bool
    address: str
    state: str
    text: str  # the whole line, stripped


def parse_connections(text: str) -> list[ConnectionLine]:
    """The connection lines of ``status connections`` output (other lines are ignored)."""
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) >= 3 and parts[0] in ("->", "<-"):
            lines.append(ConnectionLine(parts[0] == "->", parts[1], parts[2], raw.strip()))
    return lines


def parse_status(text: str) -> dict[str, dict[str, str]]:
    """``status`` output as ``{service: {key: value}}``; sections are split by blank lines."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in [*text.splitlines(), ""]:
        key, sep, value = raw.partition(":")
        if sep and key.strip():
            current[key.strip()] = value.strip()
        elif not raw.strip() and current:
            sections[current.get("Service", f"section{len(sections)}")] = current
            current = {}
    return sections


def parse_peers(text: str) -> dict[str, list[str]]:
    """``status peers`` output as ``{peer line: [its indented connection lines]}``."""
    peers: dict[str, list[str]] = {}
    last: list[str] | None = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if raw[0].isspace():
            if last is not None:
                last.append(raw.strip())
        else:
            last = peers.setdefault(raw.strip(), [])
    return peers


# --- namespaces ---------------------------------------------------------------------------


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
        return _run(self.argv(argv), check=check, timeout=timeout, input=input,
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
        out = _ip("-n", self.name, "-o", "link", "show", check=False).stdout
        return re.findall(r"^\d+: ([^:@\s]+)", out, re.MULTILINE)

    def addresses(self, dev: str) -> list[str]:
        """The IPv4 CIDRs on ``dev`` (empty if there is no such link)."""
        out = _ip("-n", self.name, "-o", "-4", "addr", "show", "dev", dev, check=False).stdout
        return re.findall(r"\binet (\S+)", out)

    def pids(self) -> list[int]:
        """PIDs of every process whose network namespace is this one."""
        out = _ip("netns", "pids", self.name, check=False).stdout
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


class Container(Namespace):
    """A container namespace: ``ethwe`` (no address yet) paired with ``host_veth`` in a host."""

    def __init__(self, name: str, env: Mapping[str, str], host: Host, host_veth: str) -> None:
        super().__init__(name, env)
        self.host = host
        self.host_veth = host_veth


class BareContainer(Namespace):
    """A container namespace with only ``lo`` (up): ``weave-router attach`` creates its
    ``ethwe`` (and the host end of the veth) in ``host``."""

    def __init__(self, name: str, env: Mapping[str, str], host: Host) -> None:
        super().__init__(name, env)
        self.host = host

    def attach(self, *addrs: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``weave-router attach ADDRS NAME`` on this container's host."""
        return self.host.router("attach", *addrs, self.name, check=check)

    def detach(self, *addrs: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``weave-router detach ADDRS NAME`` on this container's host."""
        return self.host.router("detach", *addrs, self.name, check=check)


class Host(Namespace):
    """A host: ``eth0`` on the underlay LAN at ``ip``, and its own router files under ``dir``."""

    def __init__(self, mesh: Mesh, index: int, name: str, ip: str, env: Mapping[str, str]) -> None:
        super().__init__(name, env)
        self.mesh = mesh
        self.index = index
        self.ip = ip
        self.nickname = f"host{index}"
        self.dir = mesh.run_dir / f"h{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / ROUTER_DB
        self.log_file = self.dir / ROUTER_LOG

    def router_argv(self, *args: str) -> list[str]:
        """``weave-router ARGS``; ``launch`` gets this host's --db-path/--log-file/--nickname."""
        argv = [str(self.mesh.router_bin), *args]
        if args and args[0] == "launch":
            own = {"--db-path": str(self.db_path), "--log-file": str(self.log_file),
                   "--nickname": self.nickname}
            extra = [x for flag, value in own.items() if not _has_flag(args, flag)
                     for x in (flag, value)]
            argv[2:2] = extra
        return argv

    def router(self, *args: str, check: bool = True, timeout: float = 30.0,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``weave-router ARGS`` in this host, as a user would type it."""
        return self.run(self.router_argv(*args), check=check, timeout=timeout, env=env)

    def launch(self, *args: str, check: bool = True, timeout: float = 30.0,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``weave-router launch ARGS``, detached; it returns once the router answers.

        For ``--foreground`` use ``popen(router_argv("launch", "--foreground", ...))``.
        """
        return self.router("launch", *args, check=check, timeout=timeout, env=env)

    def status(self, *what: str) -> str:
        """stdout of ``weave-router status WHAT``, or a line saying how it failed."""
        try:
            proc = self.router("status", *what, check=False, timeout=10.0)
        except CommandError as exc:
            return str(exc)
        if proc.returncode != 0:
            return f"(status {' '.join(what)} exited {proc.returncode}: {proc.stderr.strip()})"
        return proc.stdout

    def connections(self) -> list[ConnectionLine]:
        """The parsed lines of ``status connections`` (empty if the router does not answer)."""
        return parse_connections(self.status("connections"))

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of this host's router log."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"(no router log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> str:
        """Last ``status connections`` output and router log tail, for failure messages."""
        return (f"--- {self.nickname} ({self.name}, {self.ip}) status connections ---\n"
                f"{self.status('connections').rstrip()}\n"
                f"--- {self.nickname} router log tail ({self.log_file}) ---\n{self.log_tail()}")

    def wait(self, what: str, probe: Callable[[], tuple[bool, str]], timeout: float = 20.0) -> str:
        """:func:`wait_until` with this host's diagnostics in the failure message."""
        return wait_until(f"{what} on {self.nickname}", probe, timeout=timeout,
                          context=self.diagnostics)

    def wait_connections(
        self, accept: Callable[[list[ConnectionLine]], bool], what: str, timeout: float = 20.0
    ) -> list[ConnectionLine]:
        """Poll ``status connections`` until ``accept(lines)``; return those lines."""
        seen: list[list[ConnectionLine]] = [[]]

        def probe() -> tuple[bool, str]:
            text = self.status("connections")
            seen[0] = parse_connections(text)
            return accept(seen[0]), text

        self.wait(what, probe, timeout)
        return seen[0]

    def wait_established(self, n: int, *, only: bool = True,
                         timeout: float = 20.0) -> list[ConnectionLine]:
        """Wait for ``n`` established connections (and, if ``only``, no other lines)."""
        def accept(lines: list[ConnectionLine]) -> bool:
            est = [c for c in lines if c.state == "established"]
            return len(est) == n and (not only or len(lines) == n)

        what = f"{n} established connection(s)" + (" and nothing else" if only else "")
        return self.wait_connections(accept, what, timeout)

    def wait_routes(self, n: int, timeout: float = 20.0) -> str:
        """Wait until this router reports a unicast route to ``n`` other peers (its
        ``report``'s ``Router.UnicastRoutes``): the mesh has converged for frames from here."""
        def probe() -> tuple[bool, str]:
            proc = self.router("report", "-f", "{{json .Router.UnicastRoutes}}", check=False,
                               timeout=10.0)
            try:
                routes = json.loads(proc.stdout)
            except ValueError:
                return False, proc.stdout + proc.stderr
            return isinstance(routes, list) and len(routes) == n, proc.stdout

        return self.wait(f"unicast routes to {n} peer(s)", probe, timeout)

    def wait_ready(self, timeout: float = 20.0) -> str:
        """Wait until ``weave-router status`` answers; return its output."""
        def probe() -> tuple[bool, str]:
            proc = self.router("status", check=False, timeout=10.0)
            return proc.returncode == 0, proc.stdout + proc.stderr

        return self.wait("`weave-router status` to answer", probe, timeout)

    def wait_stopped(self, timeout: float = 15.0) -> None:
        """Wait until no process is left in this host's namespace."""
        def probe() -> tuple[bool, str]:
            self._reap()
            pids = self.pids()
            return not pids, f"processes still running: {_describe(pids)}"

        self.wait("every process in the namespace to exit", probe, timeout)

    def listener_pid(self, port: int = 6783) -> int | None:
        """PID of the process listening on TCP ``port`` in this host, if any."""
        out = self.run(["ss", "-Htlnp", f"sport = :{port}"], check=False, timeout=10.0).stdout
        match = re.search(r"pid=(\d+)", out)
        return int(match.group(1)) if match else None

    def stop_router(self) -> None:
        """Best-effort ``weave-router stop`` (teardown); never raises."""
        if not self.pids():
            return
        with contextlib.suppress(CommandError):
            self.router("stop", check=False, timeout=STOP_TIMEOUT)


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _describe(pids: Iterable[int]) -> str:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        out.append(f"{pid} {cmd.strip()}")
    return "; ".join(out) or "none"


class Mesh:
    """N hosts on one underlay LAN, plus containers on demand. Build with :meth:`build`."""

    def __init__(self, prefix: str, subnet: int, router_bin: Path, run_dir: Path) -> None:
        self.prefix = prefix
        self.subnet = subnet  # hosts are 192.168.<subnet>.<i>/24
        self.router_bin = router_bin
        self.run_dir = run_dir
        self.lan = f"{prefix}-lan"
        self.hosts: list[Host] = []
        self.containers: list[Container] = []
        self.bare_containers: list[BareContainer] = []
        self.env = _clean_env(router_bin.parent)
        self._closed = False

    @classmethod
    def build(cls, n_hosts: int = 3, mtu: int | None = None, *, router_bin: Path | None = None,
              subnet: int | None = None) -> Mesh:
        """Create the LAN and ``n_hosts`` hosts; on any failure remove what was made."""
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}, got {n_hosts}")
        global _own_leftovers_cleaned
        with _cleanup_lock:  # meshes may be built in parallel threads: clean up once, first
            cleanup_stale()
            if not _own_leftovers_cleaned:  # an earlier, crashed process had our pid
                cleanup_leftovers(f"wr{os.getpid()}")
                _own_leftovers_cleaned = True
        seq = next(_seq)
        prefix = f"wr{os.getpid()}n{seq}"
        binary = router_bin or Path(sys.prefix) / "bin" / "weave-router"
        run_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        octet = subnet if subnet is not None else 100 + (os.getpid() + seq) % 150
        mesh = cls(prefix, octet, binary, run_dir)
        try:
            mesh._make_lan(mtu)
            for i in range(1, n_hosts + 1):
                mesh._make_host(i, mtu)
        except BaseException:
            mesh.close()
            raise
        return mesh

    def _make_lan(self, mtu: int | None) -> None:
        _ip("netns", "add", self.lan)
        _ip("-n", self.lan, "link", "add", "lan", "type", "bridge")
        if mtu is not None:
            _ip("-n", self.lan, "link", "set", "lan", "mtu", str(mtu))
        _ip("-n", self.lan, "link", "set", "lan", "up")

    def _make_host(self, i: int, mtu: int | None) -> None:
        host = Host(self, i, f"{self.prefix}-h{i}", f"192.168.{self.subnet}.{i}", self.env)
        _ip("netns", "add", host.name)
        self.hosts.append(host)
        port = f"h{i}"
        _ip("-n", host.name, "link", "add", "eth0", "type", "veth", "peer", "name", port,
            "netns", self.lan)
        if mtu is not None:
            _ip("-n", host.name, "link", "set", "eth0", "mtu", str(mtu))
            _ip("-n", self.lan, "link", "set", port, "mtu", str(mtu))
        _ip("-n", self.lan, "link", "set", port, "master", "lan", "up")
        _ip("-n", host.name, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", host.name, "link", "set", "eth0", "up")
        _ip("-n", host.name, "link", "set", "lo", "up")

    def add_container(self, host: Host) -> Container:
        """A new container namespace ``<prefix>-cN``: ``ethwe`` paired with ``vethwecN`` in
        ``host`` (both down, no address: the router attaches them)."""
        n = self._next_container_number()
        name = f"{self.prefix}-c{n}"
        _ip("netns", "add", name)
        container = Container(name, self.env, host, f"vethwec{n}")
        self.containers.append(container)
        _ip("-n", name, "link", "add", "ethwe", "type", "veth", "peer", "name",
            container.host_veth, "netns", host.name)
        _ip("-n", name, "link", "set", "lo", "up")
        return container

    def add_bare_container(self, host: Host) -> BareContainer:
        """A new, bare container namespace ``<prefix>-cN`` (only ``lo``, up) for ``host``'s
        router to attach; it is deleted on teardown like every other namespace."""
        name = f"{self.prefix}-c{self._next_container_number()}"
        _ip("netns", "add", name)
        container = BareContainer(name, self.env, host)
        self.bare_containers.append(container)
        _ip("-n", name, "link", "set", "lo", "up")
        return container

    def _next_container_number(self) -> int:
        return len(self.containers) + len(self.bare_containers) + 1

    def launch_star(self, *args: str, n: int | None = None) -> None:
        """Launch host1 with ``args``, then host2..host<n> in parallel with ``args`` and
        host1's IP (``n`` defaults to every host)."""
        hub, *rest = self.hosts[:n]
        hub.launch(*args)
        run_parallel(*(lambda h=h: h.launch(*args, hub.ip) for h in rest))

    def wait_full_mesh(self, n: int | None = None, timeout: float = 20.0) -> None:
        """Wait until each of the first ``n`` hosts has exactly ``n - 1`` established
        connections and nothing else (``n`` defaults to every host)."""
        hosts = self.hosts[:n]
        run_parallel(*(lambda h=h: h.wait_established(len(hosts) - 1, timeout=timeout)
                       for h in hosts))

    def wait_routes(self, n: int | None = None, timeout: float = 20.0) -> None:
        """Wait until each of the first ``n`` hosts reports a unicast route to each of the
        other ``n - 1`` (``n`` defaults to every host)."""
        hosts = self.hosts[:n]
        run_parallel(*(lambda h=h: h.wait_routes(len(hosts) - 1, timeout=timeout)
                       for h in hosts))

    def diagnostics(self) -> str:
        """Every host's diagnostics (status connections and log tail)."""
        return "\n".join(h.diagnostics() for h in self.hosts)

    def close(self) -> None:
        """Stop routers, kill what is left, delete namespaces and the run directory."""
        if self._closed:
            return
        self._closed = True
        spaces: list[Namespace] = [*self.containers, *self.bare_containers, *self.hosts]
        with contextlib.suppress(Exception):
            run_parallel(*(h.stop_router for h in self.hosts))
        with contextlib.suppress(Exception):
            run_parallel(*(ns.kill_all for ns in spaces))
        for name in [ns.name for ns in spaces] + [self.lan]:
            _ip("netns", "del", name, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        left = _namespaces(self.prefix)
        if left:
            raise CommandError(f"teardown left namespaces behind: {left}")

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _clean_env(bin_dir: Path) -> dict[str, str]:
    """The caller's environment without WEAVE_* settings, with the router's bin dir first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEAVE_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return env


def _namespaces(prefix: str) -> list[str]:
    """Namespaces named ``prefix`` followed by a non-digit (so wr12 never matches wr123-...)."""
    out = _ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix) and not n[len(prefix):][:1].isdigit()]


def cleanup_leftovers(prefix: str) -> list[str]:
    """Kill processes in and delete every namespace of ``prefix`` (e.g. ``wr<pid>``) and
    every root-namespace link starting with it; return the namespaces removed."""
    names = _namespaces(prefix)
    for name in names:
        Namespace(name, {}).kill_all(grace=1.0)
        _ip("netns", "del", name, check=False)
    out = _ip("-o", "link", "show", check=False).stdout
    for match in re.finditer(r"^\d+: ([^:@\s]+)", out, re.MULTILINE):
        link = match.group(1)
        if link.startswith(prefix) and not link[len(prefix):][:1].isdigit():
            _ip("link", "del", link, check=False)
    return names


def cleanup_stale() -> list[str]:
    """Remove the namespaces of harness runs whose process no longer exists."""
    removed: list[str] = []
    out = _ip("netns", "list", check=False).stdout
    pids = {int(m.group(1)) for line in out.splitlines() if (m := _NS_RE.match(line))}
    for pid in pids:
        if not Path(f"/proc/{pid}").exists():
            removed += cleanup_leftovers(f"wr{pid}")
    return removed
