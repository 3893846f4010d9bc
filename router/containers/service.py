"""``attach``, ``detach`` and ``ps``: containers (network namespaces) on the bridge.

A container is a network namespace given as a name from ``ip netns``, a path such as
``/proc/PID/ns/net`` or ``/run/netns/NAME``, or a PID. Attaching creates the veth pair
(``ethwe`` inside, ``vethwepl<inode>`` on the bridge), adds the addresses and the
multicast route; detaching removes addresses and, with none left, the veth. Which
containers are attached is kept in the store, so ``ps`` survives a router restart.

One container, one entry: a namespace is identified by its inode (all network namespaces
of a host live on one nsfs device), so a name, a path and a PID of one namespace are one
container, whichever form ``attach``, ``detach`` and ``ps`` are given. The registry lists
it under the form of its latest ``attach`` (keeping a path that outlives a PID, such as
``/run/netns/NAME``, if it had one), and messages name it in the form the user gave.

Containers that vanish: IPAM files a container's addresses under ``netns-<inode hex>``
(:func:`ipam_ident`). :meth:`ContainersService.release_vanished` gives back the
addresses of every such ident whose namespace no longer exists anywhere on this host
(:func:`live_netns_inodes`); it runs once when the router starts (before the API
answers), every ``check_interval`` seconds (:meth:`ContainersService.run`) and whenever
``ps`` finds a container gone. Idents without that prefix (HTTP API users') are never
touched, and a namespace that still exists keeps its addresses: when in doubt (``/proc``
not fully readable) nothing is released.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import trio

from router.containers.addresses import AddressRequest, parse_addrs
from router.errors import ClosedError, ConfigError, KernelError
from router.ipam import IpamError, NotFoundError
from router.ipam.service import IpamService
from router.kernel.plumbing import (
    Attachment,
    attach_plan,
    attachment,
    detach_plan,
    host_veth_name,
)
from router.kernel.port import KernelPort, Plan, execute, netns_inode, resolve_netns
from router.store import Store

log = logging.getLogger("weave-router.containers")

# Store meta: JSON {container spec: {"path": netns path, "ident": IPAM ident}}; entries
# written before the ident was recorded are a bare path string (still read).
REGISTRY_KEY = "attached_containers"
IDENT_PREFIX = "netns-"  # IPAM idents of attached containers; only these are released
CHECK_INTERVAL = 30.0  # seconds between checks for vanished containers
_NET_LINK = re.compile(r"net:\[(\d+)\]")  # readlink of a netns file, mountinfo root
_IDENT = re.compile(rf"{IDENT_PREFIX}[0-9a-f]+\b")


@dataclass(frozen=True)
class _Entry:
    """A registered container: its namespace path and (if recorded) its IPAM ident."""

    path: str
    ident: str | None = None

    def to_json(self) -> object:
        return self.path if self.ident is None else {"path": self.path, "ident": self.ident}


@dataclass(frozen=True)
class Attached:
    """One line of ``ps``: the container as given to attach, its MAC and addresses."""

    container: str
    attachment: Attachment

    def line(self) -> str:
        return " ".join([self.container, self.attachment.mac,
                         *(str(c) for c in self.attachment.cidrs)])


Liveness = Callable[[Collection[int], Sequence[str]], set[int]]


class ContainersService:
    """Attach and detach containers through the kernel port; release the addresses of
    containers that vanished."""

    def __init__(self, kernel: KernelPort, store: Store, ipam: IpamService | None, *,
                 universe: ipaddress.IPv4Network | None,
                 check_interval: float = CHECK_INTERVAL,
                 liveness: Liveness | None = None,
                 on_released: Callable[[list[str], dict[str, str]], None] | None = None
                 ) -> None:
        """``universe``: the allocation range (``--ipalloc-range``); ``check_interval``:
        seconds between checks for vanished containers (inf: only at start and on ``ps``);
        ``liveness``: which namespace inodes still exist (default :func:`live_netns_inodes`);
        ``on_released``: told the idents of vanished containers (and ident -> container
        name) after their addresses were released (weaveDNS removes their names).
        ``ipam`` and ``universe`` None: IPAM is disabled (``--ipalloc-range ''``), so
        attach takes explicit addresses only.
        """
        self._kernel = kernel
        self._store = store
        self._ipam = ipam
        self._universe = universe
        self._check_interval = check_interval
        self._liveness = liveness if liveness is not None else live_netns_inodes
        self._on_released = on_released
        self._touched: set[str] = set()  # idents attach used since the last check began
        self._released = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Release vanished containers' addresses now (ready after that: a relaunched
        router answers only once they are free), then every ``check_interval`` s."""
        await self.release_vanished()
        task_status.started()
        if math.isinf(self._check_interval):
            return
        while True:
            await trio.sleep(self._check_interval)
            await self.release_vanished()

    async def release_vanished(self) -> list[str]:
        """Free the IPAM addresses of ``netns-*`` idents whose namespace no longer exists
        (without IPAM: the registered containers'), and forget those containers.

        Returns the idents released. An attach of the same ident while the (threaded)
        check runs wins: its ident is left alone until the next check.
        """
        idents = (self._ipam.idents() if self._ipam is not None else
                  [e.ident for e in self._registry().values() if e.ident is not None])
        wanted = {i: ino for i in idents if (ino := ident_inode(i)) is not None}
        if not wanted:
            return []
        self._touched.clear()
        try:
            host = await self._kernel.snapshot()
        except KernelError as exc:
            log.warning("cannot tell which containers are gone (%s); keeping every address",
                        exc)
            return []
        veths = {link.name for link in host.links}
        wanted = {i: ino for i, ino in wanted.items() if host_veth_name(ino) not in veths}
        if not wanted:
            return []  # every container still has its veth, so its namespace lives
        paths = [entry.path for entry in self._registry().values()]
        try:
            live = await trio.to_thread.run_sync(self._liveness, set(wanted.values()), paths)
        except OSError as exc:
            log.warning("cannot tell which containers are gone (%s); keeping every address",
                        exc)
            return []
        gone = [i for i, ino in wanted.items() if ino not in live and i not in self._touched]
        names = {e.ident: c for c, e in self._registry().items() if e.ident is not None}
        released = []
        for ident in gone:
            try:
                cidrs = [] if self._ipam is None else self._ipam.free(ident)
            except NotFoundError:
                continue  # detached meanwhile
            except ClosedError as exc:  # IPAM is suspended (or handed over): next check
                log.warning("cannot release the addresses of vanished containers: %s", exc)
                break
            released.append(ident)
            self._released += len(cidrs)
            log.info("container %s is gone: released %s", names.get(ident, ident),
                     " ".join(str(c) for c in cidrs) or "its registration")
        self._forget_idents(set(released))
        if released and self._on_released is not None:
            self._on_released(released, names)
        return released

    def attached_ident(self, container: str) -> str:
        """The IPAM ident of an attached container; ConfigError if it is not attached."""
        ident = ipam_ident(resolve_netns(container))
        if not any(e.ident == ident for e in self._registry().values()):
            raise ConfigError(f"{container} is not attached")
        return ident

    def statistics(self) -> dict[str, int]:
        """Counters: addresses released because their container vanished."""
        return {"vanished_addresses_released": self._released}

    async def attach(self, container: str, addrs: Sequence[str], *,
                     multicast_route: bool = True) -> Attached:
        """Addresses: none or ``net:default`` -> IPAM's default subnet; ``net:CIDR`` ->
        allocated there; ``ip:CIDR`` -> claimed from IPAM when inside its range."""
        request = parse_addrs(addrs)
        path = resolve_netns(container)  # a bad container fails before anything is allocated
        ident = ipam_ident(path)
        self._touched.add(ident)  # alive now: a check already running must not free it
        held = set(self._ipam.lookup(ident)) if self._ipam is not None else set()
        try:
            try:
                cidrs = await self._addresses(ident, request)
            except IpamError as exc:  # "owned by netns-f00004fd": say which container that is
                raise type(exc)(self._named(str(exc))) from exc
            # The addresses are ours now: finish the plumbing even if the client goes away.
            with trio.CancelScope(shield=True):
                host, target = await self._kernel.snapshot(), await self._kernel.snapshot(path)
                plan = attach_plan(host, target, host_veth=host_veth_name(netns_inode(path)),
                                   cidrs=cidrs, multicast_route=multicast_route)
                await _run(self._kernel, plan, f"attach {container}")
        except BaseException:  # refused, failed or cancelled (its client went away)
            self._release_new(ident, held)
            raise
        self._remember(container, _Entry(path, ident))
        result = await self._describe(container, path)
        log.info("attached %s: %s", container, result.line())
        return result

    async def detach(self, container: str, addrs: Sequence[str]) -> Attached | None:
        """Remove ``addrs`` (all if empty); None once nothing is left attached."""
        request = parse_addrs(addrs)
        if request.needs_ipam:
            raise ConfigError("detach takes explicit addresses (ip:CIDR) or none for all")
        path = resolve_netns(container)
        ident = ipam_ident(path)
        target = await self._kernel.snapshot(path)
        before = attachment(target)
        if before is None:
            raise ConfigError(f"{container} is not attached: nothing to detach")
        missing = [str(cidr) for cidr in request.cidrs if cidr not in before.cidrs]
        if missing:  # all or nothing: a typo must not detach the other addresses
            raise ConfigError(f"{container} does not have {' '.join(missing)} "
                              f"(it has {' '.join(str(c) for c in before.cidrs) or 'none'}): "
                              "nothing detached")
        plan = detach_plan(target, cidrs=request.cidrs or None)
        await _run(self._kernel, plan, f"detach {container}")
        self._release(ident, request.cidrs)
        now = attachment(await self._kernel.snapshot(path))
        if now is None:
            self._forget_idents({ident})  # however it was attached (name, path or PID)
            log.info("detached %s", container)
            return None
        return Attached(container, now)

    async def ps(self, containers: Sequence[str] = ()) -> list[Attached]:
        """Every attached container that still exists, as ``ps`` lists them (only
        ``containers``, in the form given, if any: ConfigError for one that is not a
        namespace); the addresses of those that vanished are released."""
        wanted = {ipam_ident(resolve_netns(spec)): spec for spec in containers}
        found: list[Attached] = []
        forgotten = False
        for registered, entry in sorted(self._registry().items()):
            shown = wanted.get(entry.ident or "", registered if not wanted else "")
            if not shown:
                continue
            try:
                if entry.ident is not None and ipam_ident(entry.path) != entry.ident:
                    raise ConfigError(f"{registered}: another namespace now")  # name reused
                found.append(await self._describe(shown, entry.path))
            except (ConfigError, KernelError):
                self._forget(registered)  # the namespace is gone, and its veth with it
                forgotten = True
        if forgotten:
            await self.release_vanished()
        return found

    async def _addresses(self, ident: str,
                         request: AddressRequest) -> list[ipaddress.IPv4Interface]:
        cidrs: list[ipaddress.IPv4Interface] = []
        if self._ipam is None or self._universe is None:
            if request.needs_ipam or not request.cidrs:
                raise ConfigError("IPAM is disabled (launched with --ipalloc-range ''): give "
                                  "the address, like ip:10.32.1.1/12")
            return list(request.cidrs)
        for cidr in request.cidrs:
            if cidr.ip in self._universe:
                cidrs.append(await self._ipam.claim(ident, cidr))
            else:
                cidrs.append(cidr)  # outside the allocation range: not IPAM's business
        for subnet in request.subnets:
            cidrs.append(await self._ipam.allocate(ident, subnet))
        if request.default_subnet or not (request.cidrs or request.subnets):
            cidrs.append(await self._ipam.allocate(ident))
        return cidrs

    def _release_new(self, ident: str, held: set[ipaddress.IPv4Interface]) -> None:
        """Give back what an attach that did not finish got from IPAM (not ``held``)."""
        if self._ipam is None:
            return
        for cidr in self._ipam.lookup(ident):
            if cidr not in held:
                with contextlib.suppress(NotFoundError):
                    self._ipam.free(ident, cidr.ip)

    def _release(self, ident: str, cidrs: Sequence[ipaddress.IPv4Interface]) -> None:
        """Give detached addresses back to IPAM (all of the container's when none given)."""
        if self._ipam is None or self._universe is None:
            return
        try:
            if not cidrs:
                self._ipam.free(ident)
            for cidr in cidrs:
                if cidr.ip in self._universe:
                    self._ipam.free(ident, cidr.ip)
        except NotFoundError:
            pass  # not from IPAM (outside its range, or attached before it ran)

    async def _describe(self, container: str, path: str) -> Attached:
        now = attachment(await self._kernel.snapshot(path))
        if now is None:
            raise ConfigError(f"{container} is not attached")
        return Attached(container, now)

    def _registry(self) -> dict[str, _Entry]:
        raw = self._store.get_meta(REGISTRY_KEY)
        return _parse_registry(raw) if raw else {}

    def _save(self, registry: dict[str, _Entry]) -> None:
        self._store.set_meta(REGISTRY_KEY,
                             json.dumps({c: e.to_json() for c, e in registry.items()}))

    def _remember(self, container: str, entry: _Entry) -> None:
        """Register ``container``, replacing any other form of the same namespace."""
        registry = self._registry()
        kept = {c: e for c, e in registry.items() if c != container and e.ident != entry.ident}
        old = [e for e in registry.values() if e.ident == entry.ident]
        if old and entry.path.startswith("/proc/") and not old[-1].path.startswith("/proc/"):
            entry = _Entry(old[-1].path, entry.ident)  # a name outlives the PID's process
        self._save({**kept, container: entry})

    def _named(self, message: str) -> str:
        """``message`` with each ``netns-*`` ident replaced by its container's name."""
        names = {e.ident: c for c, e in self._registry().items() if e.ident is not None}
        return _IDENT.sub(lambda m: names.get(m.group(), "a container no longer attached"),
                          message)

    def _forget(self, container: str) -> None:
        registry = self._registry()
        if registry.pop(container, None) is not None:
            self._save(registry)

    def _forget_idents(self, idents: set[str]) -> None:
        registry = self._registry()
        kept = {c: e for c, e in registry.items() if e.ident is None or e.ident not in idents}
        if len(kept) != len(registry):
            self._save(kept)


def _parse_registry(raw: str) -> dict[str, _Entry]:
    """The registry as stored: ``{spec: path}`` (old) or ``{spec: {"path", "ident"}}``.
    Entries of neither shape are skipped (the store is ours, but be lenient). An entry
    without an ident gets its namespace's, if it still exists. Several forms of one
    namespace (written before one container had one entry) keep the last written."""
    out: dict[str, _Entry] = {}
    for container, value in dict(json.loads(raw)).items():
        if isinstance(value, str):
            entry = _Entry(value, _ident_if_alive(value))
        elif isinstance(value, dict) and isinstance(value.get("path"), str):
            ident = value.get("ident")
            entry = _Entry(value["path"], ident if isinstance(ident, str) else
                           _ident_if_alive(value["path"]))
        else:
            continue
        if entry.ident is not None:
            out = {c: e for c, e in out.items() if e.ident != entry.ident}
        out[container] = entry
    return out


def _ident_if_alive(path: str) -> str | None:
    try:
        return ipam_ident(path)
    except ConfigError:
        return None  # gone: ps forgets it


def ipam_ident(path: str) -> str:
    """The container's id for IPAM: its namespace, whichever way it was named (a name, a
    path or a PID of one namespace are one container)."""
    return f"{IDENT_PREFIX}{netns_inode(path):x}"


def ident_inode(ident: str) -> int | None:
    """The namespace inode of an :func:`ipam_ident` ident; None for any other ident."""
    hex_part = ident.removeprefix(IDENT_PREFIX)
    if hex_part == ident or not hex_part or not all(c in "0123456789abcdef" for c in hex_part):
        return None
    return int(hex_part, 16)


def live_netns_inodes(wanted: Collection[int], paths: Sequence[str] = (),
                      proc: str = "/proc") -> set[int]:
    """Which of the network namespaces ``wanted`` (inode numbers) still exist.

    A namespace lives while something holds it; this looks, in turn, at ``paths`` (the
    registered containers), every nsfs bind mount of every mount namespace (``ip netns``,
    container runtimes), every thread's namespace and every open file descriptor, and
    stops once all of ``wanted`` are found. Blocking (run it in a thread). Raises
    OSError if ``proc`` cannot be listed; a process that cannot be inspected (an LSM
    may hide one even from root) is skipped, which is why the caller first keeps every
    container whose veth still exists (a veth dies with either of its namespaces).
    """
    todo = set(wanted)
    found: set[int] = set()

    def note(ino: int | None) -> bool:
        """Record ``ino``; True once nothing is left to find."""
        if ino is not None and ino in todo:
            todo.discard(ino)
            found.add(ino)
        return not todo

    for path in paths:
        try:
            if note(netns_inode(path)):
                return found
        except ConfigError:
            pass  # gone (or never a namespace): look elsewhere
    mount_namespaces: set[str] = set()
    for pid in (e for e in os.listdir(proc) if e.isdigit()):
        try:
            if _scan_process(f"{proc}/{pid}", mount_namespaces, note):
                return found
        except PermissionError:
            continue  # a process even root may not inspect (an LSM): see the doc
    return found


def _scan_process(base: str, mount_namespaces: set[str],
                  note: Callable[[int | None], bool]) -> bool:
    """Note the namespaces one process holds (True once all are found)."""
    mnt = _readlink(f"{base}/ns/mnt")
    if mnt is not None and mnt not in mount_namespaces:
        mount_namespaces.add(mnt)
        for ino in _nsfs_mounts(f"{base}/mountinfo"):
            if note(ino):
                return True
    for sub, kind in (("task", "ns/net"), ("fd", "")):
        for entry in _listdir(f"{base}/{sub}"):
            link = _readlink(f"{base}/{sub}/{entry}/{kind}".rstrip("/"))
            if link is not None and note(_netns_link(link)):
                return True
    return False


def _nsfs_mounts(mountinfo: str) -> Iterable[int]:
    """Inodes of the network namespaces bind-mounted in one mount namespace."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return []
    found = []
    for line in lines:
        fields = line.split()
        if " - nsfs " in line and len(fields) > 3:  # field 4 is the root: net:[INODE]
            ino = _netns_link(fields[3])
            if ino is not None:
                found.append(ino)
    return found


def _netns_link(text: str) -> int | None:
    match = _NET_LINK.fullmatch(text)
    return int(match.group(1)) if match else None


def _readlink(path: str) -> str | None:
    """The link's target; None if it (or its process) is gone. PermissionError raises."""
    try:
        return os.readlink(path)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return []


async def _run(kernel: KernelPort, plan: Plan, what: str) -> None:
    """Execute ``plan``; a kernel refusal (no such namespace, ...) is the caller's to fix."""
    try:
        await execute(kernel, plan)
    except KernelError as exc:
        raise ConfigError(f"{what}: {exc}") from exc
