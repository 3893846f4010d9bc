"""The CNI endpoints' driver: IPAM, kernel plumbing and the attachment registry.

ADD allocates (ident = the CNI container id, so DEL and GC find it) or takes the
delegated IPAM plugin's addresses, plumbs a veth into the namespace under the runtime's
``CNI_IFNAME``, adds the routes and the multicast route, sets hairpin mode on the bridge
port, and records the attachment in the store. DEL undoes what is there and never fails
for what is not (a namespace already gone, an empty ``CNI_NETNS``, a container never
added). CHECK compares the namespace with the record. GC frees every recorded
attachment the runtime no longer lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import logging
import math
import os
from collections.abc import Callable, Collection, Sequence

import trio

from router.cni.delegate import (
    DEL_TIMEOUT,
    DelegateError,
    del_environment,
    del_failure,
    find_plugin,
)
from router.cni.model import (
    CHECK_FAILED,
    INVALID_CONFIG,
    IO_FAILURE,
    NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    AddRequest,
    CniError,
    Delegate,
    IpSpec,
    Record,
    add_result,
    attachment_key,
    bridge_gateway,
    dump_registry,
    host_veth,
    ipam_result,
    parse_registry,
    route_ops,
    routes_for,
)
from router.containers.service import live_netns_inodes
from router.errors import ClosedError, ConfigError, KernelError
from router.ipam import NotFoundError
from router.ipam.service import IpamService
from router.kernel.plumbing import (
    BRIDGE_NAME,
    MULTICAST_NET,
    attach_plan,
    multicast_route_via,
)
from router.kernel.port import (
    DeleteLink,
    KernelPort,
    NetnsState,
    Op,
    Plan,
    execute,
    netns_inode,
    resolve_netns,
)
from router.store import Store

log = logging.getLogger("weave-router.cni")

REGISTRY_KEY = "cni_attachments"
SYSFS_NET = "/sys/class/net"


class CniService:
    """What the ``/cni/*`` endpoints do; one per router with a kernel."""

    def __init__(self, kernel: KernelPort, store: Store, ipam: IpamService | None, *,
                 bridge: str = BRIDGE_NAME, sysfs: str = SYSFS_NET,
                 liveness: Callable[[Collection[int], Sequence[str]], set[int]] | None = None,
                 ) -> None:
        """``liveness``: which namespace inodes still exist (default
        :func:`~router.containers.service.live_netns_inodes`)."""
        self._kernel = kernel
        self._liveness = liveness if liveness is not None else live_netns_inodes
        self._touched: set[str] = set()  # keys ADDed or DELeted since a check began
        self._store = store
        self._ipam = ipam
        self._bridge = bridge
        self._sysfs = sysfs

    async def run(self, *, check_interval: float = math.inf,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Release the attachments whose namespace vanished (while the router was down,
        too) now, then every ``check_interval`` seconds."""
        await self.release_vanished()
        task_status.started()
        while not math.isinf(check_interval):
            await trio.sleep(check_interval)
            await self.release_vanished()

    async def release_vanished(self) -> list[str]:
        """Forget attachments whose namespace no longer exists anywhere on this host, and
        give their addresses back (weave IPAM's, or the delegated plugin's DEL). Their keys.

        As :meth:`ContainersService.release_vanished
        <router.containers.service.ContainersService.release_vanished>`: an attachment
        whose host veth still exists is alive (a veth dies with either namespace); the
        others are looked for by namespace inode (:func:`live_netns_inodes`: bind mounts
        of every mount namespace, every process's namespace and open files), so a pod
        whose recorded path went away (``/proc/PID/ns/net`` of an exited PID) but whose
        namespace another process holds keeps its address. When in doubt (the kernel or
        ``/proc`` unreadable) nothing is released. An ADD or DEL of the same attachment
        while the (threaded) look runs wins.
        """
        registry = self._registry()
        if not registry:
            return []
        self._touched.clear()
        try:  # only our veths: a dump of every link on a host with many pods takes long
            host = await self._kernel.snapshot(links=sorted(
                {host_veth(r.container_id, r.ifname) for r in registry.values()}))
        except KernelError as exc:
            log.warning("cannot tell which CNI containers are gone (%s); keeping them", exc)
            return []
        veths = {link.name for link in host.links}
        suspects = {k: r for k, r in registry.items()
                    if host_veth(r.container_id, r.ifname) not in veths}
        if not suspects:
            return []
        inodes = {r.inode for r in suspects.values() if r.inode is not None}
        paths = [r.netns for r in registry.values()]
        try:
            live = await trio.to_thread.run_sync(self._liveness, inodes, paths)
        except OSError as exc:
            log.warning("cannot tell which CNI containers are gone (%s); keeping them", exc)
            return []
        gone = {k: r for k, r in suspects.items() if k not in self._touched
                and (r.inode not in live if r.inode is not None else _inode(r.netns) is None)}
        released = []
        for key, record in gone.items():
            if key in self._touched:  # added again while a delegated DEL ran
                continue
            if not await self._release(record):
                continue  # the delegated plugin's DEL failed: try again at the next check
            released.append(key)
        self._forget(set(released))
        return sorted(released)

    async def _release(self, record: Record) -> bool:
        """Give back the addresses of a vanished attachment; False to keep its record."""
        if record.weave_ipam:
            self._free(record.container_id)
        elif record.delegate is not None:
            try:
                await run_del(record.delegate, record.container_id, record.ifname)
            except DelegateError as exc:
                log.warning("CNI container %s (%s) is gone, but its addresses %s stay "
                            "allocated: %s", record.container_id, record.ifname,
                            " ".join(record.cidrs), exc)
                return False
        log.info("CNI container %s (%s) is gone: released %s", record.container_id,
                 record.ifname, " ".join(record.cidrs) or "nothing")
        return True

    # -- verbs ------------------------------------------------------------------------------

    async def add(self, request: AddRequest) -> dict[str, object]:
        self._touched.add(request.key)
        path = _netns_path(request.netns)
        ips = await self._addresses(request)
        try:
            result = await self._plumb(request, path, ips)
        except BaseException:  # leave nothing behind: no interface, no address
            with trio.CancelScope(shield=True), contextlib.suppress(CniError):
                await self._unplumb(path, request.ifname)
            if request.weave_ipam:
                self._free(request.container_id)
            raise
        self._remember(Record(request.container_id, request.ifname, path, request.weave_ipam,
                              [str(ip.address) for ip in ips], _inode(path),
                              dict(request.args), request.delegate))
        log.info("CNI ADD %s %s: %s", request.container_id, request.ifname,
                 " ".join(str(ip.address) for ip in ips))
        return result

    async def ipam_add(self, request: AddRequest) -> dict[str, object]:
        """The ``weave-ipam`` plugin mode: allocate only."""
        ips = await self._addresses(request)
        return ipam_result(ips, list(request.routes))

    def ipam_del(self, container_id: str) -> None:
        self._free(container_id)

    def ipam_check(self, container_id: str) -> None:
        if not self._weave_ipam().lookup(container_id):
            raise CniError(UNKNOWN_CONTAINER, f"weave IPAM holds no address for container "
                           f"{container_id}")

    async def delete(self, container_id: str, ifname: str, netns: str) -> None:
        """Remove the interface (if the namespace is still there) and free the addresses."""
        self._touched.add(attachment_key(container_id, ifname))
        record = self._registry().get(attachment_key(container_id, ifname))
        path = netns or (record.netns if record is not None else "")
        if not (path and await self._unplumb(path, ifname)):
            await self._unplumb_host_end(host_veth(container_id, ifname))
        if record is None or record.weave_ipam:
            self._free(container_id)
        self._forget({attachment_key(container_id, ifname)})
        log.info("CNI DEL %s %s", container_id, ifname)

    async def check(self, container_id: str, ifname: str, netns: str,
                    prev_ips: list[str] | None = None) -> None:
        """The interface and addresses are as ADD left them; with ``prev_ips`` (the
        addresses of the runtime's prevResult for ``ifname``) they are those, too."""
        record = self._registry().get(attachment_key(container_id, ifname))
        if record is None:
            raise CniError(UNKNOWN_CONTAINER, f"container {container_id} ({ifname}) was "
                           "never added to weave-net on this host")
        state = await self._snapshot(_netns_path(netns or record.netns))
        link = state.link(ifname)
        if link is None:
            raise CniError(CHECK_FAILED, f"{ifname} is missing from the container's namespace")
        have = {str(c) for c in state.addresses_of(ifname)}
        missing = [c for c in record.cidrs if c not in have]
        if missing:
            raise CniError(CHECK_FAILED, f"{ifname} lacks its address {' '.join(missing)}")
        if prev_ips is not None:
            if not prev_ips:
                raise CniError(CHECK_FAILED, f"prevResult gives {ifname} no address")
            try:
                prev = {str(ipaddress.IPv4Interface(c)) for c in prev_ips}
            except ValueError as exc:
                raise CniError(INVALID_CONFIG, f"prevResult: {exc}") from None
            if prev != set(record.cidrs):
                raise CniError(CHECK_FAILED, f"prevResult's addresses {' '.join(sorted(prev))} "
                               f"are not those ADD gave {ifname}: {' '.join(record.cidrs)}")
        if record.weave_ipam:
            held = {str(c) for c in self._weave_ipam().lookup(container_id)}
            lost = [c for c in record.cidrs if c not in held]
            if lost:
                raise CniError(CHECK_FAILED, f"IPAM no longer holds {' '.join(lost)} for "
                               f"container {container_id}")

    async def status(self, *, ipam: bool, ready: bool) -> None:
        """CniError 50 unless the router (and, if asked, IPAM) can add containers now."""
        if not ready:
            raise CniError(NOT_AVAILABLE, "weave-router is starting up")
        host = await self._kernel.snapshot(links=[self._bridge])
        if host.link(self._bridge) is None:
            raise CniError(NOT_AVAILABLE, f'bridge "{self._bridge}" is missing')
        if ipam:
            with trio.move_on_after(0.5) as scope:
                await self._weave_ipam().prime()
            if scope.cancelled_caught:
                raise CniError(NOT_AVAILABLE, "weave IPAM is awaiting consensus with its "
                               "peers (see `weave-router status ipam`)")

    async def gc(self, valid: set[str]) -> list[str]:
        """Delete every recorded attachment whose key is not in ``valid``; their keys."""
        gone = [r for k, r in self._registry().items() if k not in valid]
        for record in gone:
            await self.delete(record.container_id, record.ifname, "")
        return [attachment_key(r.container_id, r.ifname) for r in gone]

    # -- parts ------------------------------------------------------------------------------

    async def _addresses(self, request: AddRequest) -> list[IpSpec]:
        if not request.weave_ipam:
            return list(request.ips)
        with trio.move_on_after(request.timeout):
            try:
                cidr = await self._weave_ipam().allocate(request.container_id, request.subnet)
            except ClosedError as exc:
                raise CniError(TRY_AGAIN_LATER, f"weave IPAM is not running: {exc}") from None
            except ConfigError as exc:  # IpamError: refused (e.g. a subnet outside the range)
                raise CniError(IO_FAILURE, f"weave IPAM refused: {exc}") from None
            return [IpSpec(cidr, request.gateway)]
        raise CniError(TRY_AGAIN_LATER, "weave IPAM is awaiting consensus with its peers; "
                       f"no address within {request.timeout:g}s",
                       "see `weave-router status ipam`")

    async def _plumb(self, request: AddRequest, path: str,
                     ips: list[IpSpec]) -> dict[str, object]:
        """A snapshot of the host's bridge and our veth (not of every link: on a host with
        many pods that costs more than the plumbing), one of the container's namespace,
        one plan (veth, addresses, multicast route, routes), then hairpin mode and the
        host end's MAC through sysfs. The daemon's CNI port runs a few such jobs at once
        (pods of a burst wait less on the kernel), each snapshot or plan whole on one
        worker."""
        veth = host_veth(request.container_id, request.ifname)
        host = await self._snapshot(None, links=(self._bridge, veth))
        target = await self._snapshot(path)
        # one multicast route per namespace: a second interface leaves the first's
        multicast = request.multicast_route and not any(
            r.dst == MULTICAST_NET and r.ifname != request.ifname for r in target.routes)
        existing = target.link(request.ifname)
        mac = existing.mac if existing is not None else random_mac()
        plan = attach_plan(host, target, host_veth=veth, cidrs=[ip.address for ip in ips],
                           bridge=self._bridge, ifname=request.ifname,
                           multicast_route=multicast,
                           mac=None if existing is not None else mac)
        bridge_ip = bridge_gateway(host, self._bridge, ips[0].address)
        routes = routes_for(request, ips, bridge_ip)
        # the routes there once the plan ran: the snapshot's (connected routes are the
        # kernel's, never listed) and the multicast route
        after = target.routes + ((multicast_route_via(request.ifname),) if multicast else ())
        ops = route_ops(routes, ips, request.ifname, path, after)
        await self._execute((*plan.ops, *ops), plan.rollback)
        host_mac = await trio.to_thread.run_sync(self._set_hairpin, veth, request.hairpin)
        return add_result(dataclasses.replace(request, multicast_route=multicast),
                          host_mac=host_mac, container_mac=mac, ips=ips, routes=routes)

    async def _unplumb(self, path: str, ifname: str) -> bool:
        """Delete ``ifname`` in the namespace at ``path``; False if no namespace is there
        (gone, and the veth with it, or living on under another path)."""
        try:
            netns_inode(path)
        except ConfigError:
            return False
        try:  # the veth (and its host end) goes with its addresses: no snapshot needed
            await self._kernel.apply([DeleteLink(ifname, path)])
        except KernelError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                raise CniError(IO_FAILURE, f"cannot remove {ifname}: {exc}") from None
        return True

    async def _unplumb_host_end(self, veth: str) -> None:
        """Delete our host end of the veth if it is still there: the namespace lives on
        under another path than the one recorded (``/proc/PID/ns/net`` of an exited
        PID), and deleting one end of a veth deletes both."""
        host = await self._snapshot(None, links=[veth])
        if host.link(veth) is None:
            return
        try:
            await execute(self._kernel, Plan(ops=(DeleteLink(veth, None),)))
        except KernelError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise CniError(IO_FAILURE, f"cannot remove {veth}: {exc}") from None

    async def _snapshot(self, path: str | None,
                        links: Sequence[str] | None = None) -> NetnsState:
        try:
            return await self._kernel.snapshot(path, links=links)
        except KernelError as exc:
            raise CniError(UNKNOWN_CONTAINER, f"cannot read namespace {path}: {exc}") from None

    async def _execute(self, ops: Sequence[Op], rollback: Sequence[Op]) -> None:
        try:
            await execute(self._kernel, Plan(ops=tuple(ops), rollback=tuple(rollback)))
        except KernelError as exc:
            raise CniError(IO_FAILURE, f"plumbing the container failed: {exc}") from None

    def _set_hairpin(self, veth: str, on: bool) -> str:
        """Hairpin mode on the bridge port (a container reaches itself via a service IP);
        the port's MAC address (empty if unreadable)."""
        path = f"{self._sysfs}/{veth}/brport/hairpin_mode"
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write("1" if on else "0")
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot set hairpin mode on {veth}: {exc}") from None
        try:
            with open(f"{self._sysfs}/{veth}/address", encoding="ascii") as f:
                return f.read().strip()
        except OSError:
            return ""

    def _weave_ipam(self) -> IpamService:
        if self._ipam is None:
            raise CniError(INVALID_CONFIG, "weave IPAM is disabled (the router was launched "
                           "with --ipalloc-range ''): give the network another IPAM plugin, "
                           "such as host-local")
        return self._ipam

    def _free(self, container_id: str) -> None:
        if self._ipam is None:  # nothing of weave IPAM's to free
            return
        with contextlib.suppress(NotFoundError):  # never allocated, or freed already
            self._ipam.free(container_id)

    def _registry(self) -> dict[str, Record]:
        return parse_registry(self._store.get_meta(REGISTRY_KEY))

    def _remember(self, record: Record) -> None:
        registry = self._registry()
        registry[attachment_key(record.container_id, record.ifname)] = record
        self._store.set_meta(REGISTRY_KEY, dump_registry(registry))

    def _forget(self, keys: set[str]) -> None:
        registry = self._registry()
        kept = {k: r for k, r in registry.items() if k not in keys}
        if len(kept) != len(registry):
            self._store.set_meta(REGISTRY_KEY, dump_registry(kept))

    def attachments(self) -> list[Record]:
        return list(self._registry().values())


async def run_del(delegate: Delegate, container_id: str, ifname: str) -> None:
    """Run the delegated IPAM plugin's DEL (:mod:`router.cni.delegate`); DelegateError
    when it cannot be run, fails, or takes longer than DEL_TIMEOUT."""
    path = find_plugin(delegate)
    with trio.move_on_after(DEL_TIMEOUT) as scope:
        try:
            proc = await trio.run_process(
                [path], stdin=delegate.conf.encode(), capture_stdout=True,
                capture_stderr=True, check=False,
                env=del_environment(delegate, container_id, ifname))
        except OSError as exc:
            raise DelegateError(f"cannot run {path}: {exc}") from None
    if scope.cancelled_caught:
        raise DelegateError(f"{path} DEL did not finish within {DEL_TIMEOUT:g}s")
    if proc.returncode != 0:
        raise del_failure(path, proc.returncode, proc.stdout, proc.stderr)


def _inode(path: str) -> int | None:
    """The inode of the namespace at ``path``; None when there is none now."""
    try:
        return netns_inode(path)
    except ConfigError:
        return None


def random_mac() -> str:
    """A random, locally administered unicast MAC for a container's interface."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _netns_path(netns: str) -> str:
    """The namespace path of an ADD/CHECK; CniError 3 when it is gone."""
    try:
        return resolve_netns(netns)
    except ConfigError as exc:
        raise CniError(UNKNOWN_CONTAINER, f"the container's namespace is gone: {exc}") from None
