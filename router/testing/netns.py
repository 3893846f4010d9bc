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
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from router.dns.hooks import NETNS_ETC_DIR, remove_resolv_conf
from router.testing.namespace import (
    TERM_GRACE,
    CommandError,
    Namespace,
    WaitTimeout,
    cleanup_leftovers,
    cleanup_stale,
    namespaces_with_prefix,
    run_command,
    run_parallel,
    wait_until,
)
from router.testing.namespace import run_ip as _ip
from router.testing.netns_parse import (
    ConnectionLine,
    parse_connections,
    parse_peers,
    parse_status,
)

__all__ = [
    "MAX_HOSTS", "ROUTER_DB", "ROUTER_LOG", "STOP_TIMEOUT", "TERM_GRACE",
    "BareContainer", "CommandError", "ConnectionLine", "Container", "Host", "Mesh",
    "Namespace", "WaitTimeout", "cleanup_leftovers", "cleanup_stale", "parse_connections",
    "parse_peers", "parse_status", "run_command", "run_parallel", "wait_until",
]

MAX_HOSTS = 250  # host i gets 192.168.X.i
ROUTER_LOG = "router.log"
ROUTER_DB = "weave.db"
STOP_TIMEOUT = 10.0  # seconds for `weave-router stop` during teardown
_seq = itertools.count(1)
_own_leftovers_cleaned = False
_cleanup_lock = threading.Lock()  # guards the cleanup of leftovers in Mesh.build


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
        for etc in NETNS_ETC_DIR.glob(f"{self.prefix}-*"):  # what attach wrote for weaveDNS
            remove_resolv_conf(etc.name)  # (ours only), for namespaces tests made themselves
        shutil.rmtree(self.run_dir, ignore_errors=True)
        left = namespaces_with_prefix(self.prefix)
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
