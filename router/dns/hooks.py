"""What attach and detach do for weaveDNS on this host: the address on the bridge, the
route to it in each container, and the container's resolv.conf.

Default listening (``--dns-listen-address`` not given, docs/dns.md): weaveDNS binds
:data:`~router.dns.config.DEFAULT_ADDRESS` (link-local, ``/32``) on the weave bridge, its
sockets tied to the bridge (``SO_BINDTODEVICE``) so answers leave by the bridge whatever
the host's routes say. ``attach`` adds ``DEFAULT_ADDRESS dev ethwe scope link`` in the
container, so the container reaches it with no address or route from the user; the
address is the same on every host, so a container's resolv.conf is the same everywhere.

For a container named as an ``ip netns`` name (``c1`` or ``/run/netns/c1``), attach
writes ``/etc/netns/c1/resolv.conf`` (what ``ip netns exec c1`` shows the container as
``/etc/resolv.conf``): ``nameserver`` and ``search`` the domain. A file there that we did
not write (no :data:`MARK` line) is left alone; detach removes ours.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from router.dns.config import DEFAULT_ADDRESS, DnsConfig
from router.dns.service import DnsService
from router.errors import KernelError
from router.kernel.plumbing import BRIDGE_NAME, CONTAINER_IFNAME
from router.kernel.port import (
    AddAddress,
    AddRoute,
    KernelPort,
    Plan,
    Route,
    Scope,
    execute,
)

log = logging.getLogger("weave-router.dns")

NETNS_RUN_DIR = "/run/netns"
NETNS_ETC_DIR = Path("/etc/netns")
MARK = "# written by weave-router for weaveDNS; removed on detach"
_ADDRESS = ipaddress.IPv4Interface(f"{DEFAULT_ADDRESS}/32")
_ROUTE = Route(dst=ipaddress.IPv4Network(f"{DEFAULT_ADDRESS}/32"), ifname=CONTAINER_IFNAME,
               scope=Scope.LINK)


def netns_name(spec: str) -> str | None:
    """The ``ip netns`` name of a container spec (``c1``, ``/run/netns/c1``); else None."""
    spec = spec.strip()
    if spec.startswith(NETNS_RUN_DIR + "/"):
        spec = spec[len(NETNS_RUN_DIR) + 1:]
    if not spec or "/" in spec or spec.isdigit() or spec in (".", ".."):
        return None
    return spec


def default_hostname(spec: str, domain: str) -> str | None:
    """``NAME.<domain>`` for an ``ip netns`` container whose name is a DNS label."""
    name = netns_name(spec)
    if name is None or len(name) > 63 or not all(c.isalnum() or c in "-_" for c in name):
        return None
    return f"{name}.{domain}"


async def prepare_bridge(kernel: KernelPort) -> None:
    """Put :data:`DEFAULT_ADDRESS` on the bridge (once; it goes with the bridge)."""
    host = await kernel.snapshot()
    if _ADDRESS not in host.addresses_of(BRIDGE_NAME):
        await execute(kernel, Plan(ops=(AddAddress(BRIDGE_NAME, _ADDRESS),)))


async def route_container(kernel: KernelPort, path: str) -> None:
    """The route to :data:`DEFAULT_ADDRESS` through ``ethwe`` in the container at ``path``."""
    target = await kernel.snapshot(path)
    if not any(r.dst == _ROUTE.dst and r.ifname == _ROUTE.ifname for r in target.routes):
        await execute(kernel, Plan(ops=(AddRoute(_ROUTE, path),)))


def nameserver(config: DnsConfig) -> str | None:
    """The address a container's resolv.conf names; None if it cannot name ours (a port
    other than 53, or a wildcard address)."""
    host, port = config.address
    if port != 53 or host in ("0.0.0.0", ""):
        return None
    return host


def write_resolv_conf(spec: str, config: DnsConfig, etc: Path = NETNS_ETC_DIR) -> Path | None:
    """Write the container's ``/etc/netns/NAME/resolv.conf``; the path, or None when the
    container has no ``ip netns`` name, we cannot be named, or the file is someone else's."""
    name, server = netns_name(spec), nameserver(config)
    if name is None or server is None:
        return None
    path = etc / name / "resolv.conf"
    try:
        if path.exists() and MARK not in path.read_text(encoding="utf-8", errors="replace"):
            log.info("%s exists and is not ours: left as it is", path)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".resolv.conf.tmp")
        tmp.write_text(f"{MARK}\nnameserver {server}\nsearch {config.domain.rstrip('.')}\n",
                       encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
        return None
    return path


def remove_resolv_conf(spec: str, etc: Path = NETNS_ETC_DIR) -> None:
    """Remove the resolv.conf :func:`write_resolv_conf` wrote (and the directory if empty)."""
    name = netns_name(spec)
    if name is None:
        return
    path = etc / name / "resolv.conf"
    try:
        if MARK in path.read_text(encoding="utf-8", errors="replace"):
            path.unlink()
            path.parent.rmdir()
    except OSError:
        pass  # not there, not ours, or the directory holds other files


class ContainerDns:
    """The DNS side of attach, detach and vanished containers on one host."""

    def __init__(self, service: DnsService, kernel: KernelPort | None) -> None:
        self.service = service
        self._kernel = kernel

    def name_for(self, container: str, hostname: str | None, with_dns: bool) -> str | None:
        """The FQDN attach registers (ConfigError if ``hostname`` is not in the domain),
        checked before anything is attached; None: nothing to register."""
        if not with_dns:
            return None
        if hostname is not None:
            return self.service.check_fqdn(hostname)
        return default_hostname(container, self.service.config.domain)

    async def attached(self, container: str, path: str, ident: str, fqdn: str | None,
                       addresses: list[ipaddress.IPv4Address]) -> None:
        """Route the container to us, write its resolv.conf, register ``fqdn``."""
        config = self.service.config
        if self._kernel is not None and config.on_bridge:
            try:
                await route_container(self._kernel, path)
            except KernelError as exc:
                log.warning("attach %s: no route to weaveDNS: %s", container, exc)
        write_resolv_conf(container, config)
        if fqdn is not None:
            self.service.add(fqdn, ident, addresses)

    def detached(self, container: str, ident: str,
                 addresses: list[ipaddress.IPv4Address] | None) -> None:
        """Tombstone the entries of the addresses taken off (None: all, the container left)."""
        if addresses is None:
            self.service.remove(container_id=ident)
            remove_resolv_conf(container)
            return
        for address in addresses:
            self.service.remove(container_id=ident, address=address)

    def vanished(self, idents: list[str], names: dict[str, str]) -> None:
        """Containers whose namespace is gone: their entries go (``names``: ident ->
        the container as registered, for its resolv.conf)."""
        for ident in idents:
            if self.service.remove(container_id=ident):
                log.info("container %s is gone: its DNS entries removed",
                         names.get(ident, ident))
            if ident in names:
                remove_resolv_conf(names[ident])
