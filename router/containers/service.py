"""``attach``, ``detach`` and ``ps``: containers (network namespaces) on the bridge.

A container is a network namespace given as a name from ``ip netns``, a path such as
``/proc/PID/ns/net`` or ``/run/netns/NAME``, or a PID. Attaching creates the veth pair
(``ethwe`` inside, ``vethwepl<inode>`` on the bridge), adds the addresses and the
multicast route; detaching removes addresses and, with none left, the veth. Which
containers are attached is kept in the store, so ``ps`` survives a router restart.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from router.containers.addresses import AddressRequest, parse_addrs
from router.errors import ConfigError, KernelError
from router.ipam import NotFoundError
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

REGISTRY_KEY = "attached_containers"  # store meta: JSON {container spec: netns path}


@dataclass(frozen=True)
class Attached:
    """One line of ``ps``: the container as given to attach, its MAC and addresses."""

    container: str
    attachment: Attachment

    def line(self) -> str:
        return " ".join([self.container, self.attachment.mac,
                         *(str(c) for c in self.attachment.cidrs)])


class ContainersService:
    """Attach and detach containers through the kernel port."""

    def __init__(self, kernel: KernelPort, store: Store, ipam: IpamService, *,
                 universe: ipaddress.IPv4Network) -> None:
        """``universe``: the allocation range (``--ipalloc-range``)."""
        self._kernel = kernel
        self._store = store
        self._ipam = ipam
        self._universe = universe

    async def attach(self, container: str, addrs: Sequence[str], *,
                     multicast_route: bool = True) -> Attached:
        """Addresses: none or ``net:default`` -> IPAM's default subnet; ``net:CIDR`` ->
        allocated there; ``ip:CIDR`` -> claimed from IPAM when inside its range."""
        request = parse_addrs(addrs)
        path = resolve_netns(container)  # a bad container fails before anything is allocated
        cidrs = await self._addresses(ipam_ident(path), request)
        host, target = await self._kernel.snapshot(), await self._kernel.snapshot(path)
        plan = attach_plan(host, target, host_veth=host_veth_name(netns_inode(path)),
                           cidrs=cidrs, multicast_route=multicast_route)
        await _run(self._kernel, plan, f"attach {container}")
        self._remember(container, path)
        result = await self._describe(container, path)
        log.info("attached %s: %s", container, result.line())
        return result

    async def detach(self, container: str, addrs: Sequence[str]) -> Attached | None:
        """Remove ``addrs`` (all if empty); None once nothing is left attached."""
        request = parse_addrs(addrs)
        if request.needs_ipam:
            raise ConfigError("detach takes explicit addresses (ip:CIDR) or none for all")
        path = resolve_netns(container)
        target = await self._kernel.snapshot(path)
        plan = detach_plan(target, cidrs=request.cidrs or None)
        await _run(self._kernel, plan, f"detach {container}")
        self._release(ipam_ident(path), request.cidrs)
        now = attachment(await self._kernel.snapshot(path))
        if now is None:
            self._forget(container)
            log.info("detached %s", container)
            return None
        return Attached(container, now)

    async def ps(self) -> list[Attached]:
        """Every attached container that still exists, as ``ps`` lists them."""
        found: list[Attached] = []
        for container, path in sorted(self._registry().items()):
            try:
                found.append(await self._describe(container, path))
            except (ConfigError, KernelError):
                self._forget(container)  # the namespace is gone, and its veth with it
        return found

    async def _addresses(self, ident: str,
                         request: AddressRequest) -> list[ipaddress.IPv4Interface]:
        cidrs: list[ipaddress.IPv4Interface] = []
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

    def _release(self, ident: str, cidrs: Sequence[ipaddress.IPv4Interface]) -> None:
        """Give detached addresses back to IPAM (all of the container's when none given)."""
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

    def _registry(self) -> dict[str, str]:
        raw = self._store.get_meta(REGISTRY_KEY)
        return dict(json.loads(raw)) if raw else {}

    def _remember(self, container: str, path: str) -> None:
        self._store.set_meta(REGISTRY_KEY, json.dumps({**self._registry(), container: path}))

    def _forget(self, container: str) -> None:
        registry = self._registry()
        if registry.pop(container, None) is not None:
            self._store.set_meta(REGISTRY_KEY, json.dumps(registry))


def ipam_ident(path: str) -> str:
    """The container's id for IPAM: its namespace, whichever way it was named (a name, a
    path or a PID of one namespace are one container)."""
    return f"netns-{netns_inode(path):x}"


async def _run(kernel: KernelPort, plan: Plan, what: str) -> None:
    """Execute ``plan``; a kernel refusal (no such namespace, ...) is the caller's to fix."""
    try:
        await execute(kernel, plan)
    except KernelError as exc:
        raise ConfigError(f"{what}: {exc}") from exc
