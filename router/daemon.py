"""The composition root: builds every service from a RouterConfig and runs them.

Start order (each service reports readiness through ``nursery.start``, so a later one
starts only once the earlier ones are serving):

0. host        ``--ipalloc-range`` must not overlap a route of this host (Weave's
               ``CheckNetworkFree``; before anything, the database included, is created)
1. store       open sqlite, settle the peer name (``--name``, persisted, or new random)
2. kernel      the netlink port (its own worker thread)
3. sleeve      bind UDP ``--port``; the data plane plumbs the bridge and TAP and starts its
               native threads on that socket (heartbeats come back as upcalls)
4. mesh        bind TCP ``--port``, start the connection maker and gossip; then IPAM's
               timer, and the containers' check that releases the addresses of
               containers that vanished (once now, then every 30 s)
5. control     bind the HTTP API on ``--socket`` (root only) and ``--http-addr``, then
               /metrics and /status on ``--metrics-addr`` (``router/metrics/``)
6. ready       ``/status`` answers 200, systemd gets ``READY=1``

Shutdown runs the other way round: the API stops answering, the mesh closes every
connection (peers see EOF at once, not a timeout), the data plane's threads stop, the
UDP socket closes, the sleeve port's conntrack entries are cleared, the netlink port and
then the store close last. The bridge stays, so
containers on this host keep talking. ``docs/concurrency.md`` draws the nursery tree.

A failed start is one log line naming what failed and the OS error (``cannot listen on
10.99.99.99:6783 (UDP): [Errno 99] Cannot assign requested address``), never trio's
``Exceptions from Trio nursery``. The process title is ``weave-router: router NICKNAME``.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import math
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import setproctitle
import trio

from router import __version__, resume
from router.cni.service import CniService
from router.config import PROTOCOL_MAX_VERSION, PROTOCOL_MIN_VERSION, RouterConfig
from router.containers.addresses import parse_addrs
from router.containers.service import CHECK_INTERVAL, Attached, ContainersService, ipam_ident
from router.control.api import serve_api
from router.dataplane.service import DataplaneService
from router.dns.hooks import ContainerDns, prepare_bridge
from router.dns.service import DnsService
from router.errors import ConfigError, KernelError
from router.host.notify import STATUS_INTERVAL, notify_message
from router.host.rules import TABLE
from router.host.service import HostService, clear_conntrack
from router.ipam.service import IpamService, allocator_config
from router.kernel.netlink import open_netlink_port
from router.kernel.netns import resolve_netns
from router.kernel.nft_cli import nft_binary, open_nft
from router.kernel.nft_events import NftEvents, open_nft_events
from router.kernel.plumbing import BRIDGE_NAME, reset_plan
from router.kernel.port import DeleteLink, KernelPort, NetnsState, OverlayPort, execute
from router.kernel.route_overlap import check_range_free
from router.kernel.vxlan_guard import TABLE as GUARD_TABLE
from router.kernel.vxlan_guard import guard_commands, install_guard, remove_guard
from router.mesh.names import PeerName, random_short_id, random_uid
from router.mesh.service import MeshService
from router.metrics.collector import RouterCollector
from router.metrics.service import serve_metrics
from router.network.service import ListenError, Network, TrioNetwork
from router.overlay.fastdp.plan import LocalConfig
from router.overlay.fastdp.service import FastdpService, install_filter, remove_filter
from router.overlay.service import OverlayService
from router.overlay.sleeve.service import SleeveService
from router.overlay.switch import OverlaySwitch, SwitchConfig
from router.status import RouterStatus, Status
from router.store import Store, StoreError

log = logging.getLogger("weave-router")

EXIT_OK = 0
EXIT_FAILURE = 1  # crashed or could not start: the supervisor restarts it
EXIT_CONFIG = 2  # a bad configuration: restarting will not help
ENV_CONTAINER_CHECK_INTERVAL = "WEAVE_CONTAINER_CHECK_INTERVAL"  # seconds (docs/ipam.md)


def settle_name(store: Store, wanted: PeerName | None, *,
                rng: random.Random | None = None) -> PeerName:
    """The peer name: ``--name`` if given, else the persisted one, else a new random one.

    A random name is persisted at once, so a restart keeps it and two machines cloned
    from one image (no database yet) never share a name.
    """
    stored = store.get_meta("peer_name")
    if wanted is not None:
        if stored is not None and stored != str(wanted):
            log.warning("peer name changed from %s to %s (--name)", stored, wanted)
        name = wanted
    elif stored is not None:
        name = PeerName.parse(stored)
    else:
        name = PeerName.random(rng)
    if stored != str(name):
        store.set_meta("peer_name", str(name))
    return name


class Router:
    """One weave-router: the services and the order they start and stop in."""

    def __init__(self, config: RouterConfig, store: Store, *, network: Network,
                 name: PeerName, kernel: KernelPort | None = None, uid: int | None = None,
                 rng: random.Random | None = None, overlay: OverlayPort | None = None,
                 pods: KernelPort | None = None) -> None:
        """``kernel`` None: no bridge, no data plane, no containers (simulations);
        ``overlay`` None: no fastdp (the netlink port is both); ``pods``: the port CNI
        plumbs pods through (default ``kernel``; the daemon's runs several jobs at once)."""
        self.config = config
        self.store = store
        self.name = name
        self.nickname = config.mesh.nickname or socket.gethostname()
        self.uid = uid if uid is not None else random_uid(rng)
        self.ready = False
        self.reset_requested = False
        self._stop = trio.Event()
        targets = self._initial_targets()
        self.dataplane = (None if kernel is None else
                          DataplaneService(kernel, name=name, mtu=config.mtu,
                                           backend=config.dataplane))

        self._kernel = kernel
        self._overlay = overlay
        self.sleeve = SleeveService(network, config.mesh, name=name, dataplane=self.dataplane)
        # fastdp (docs/fastdp.md): offered unless --no-fastdp, a password without
        # --trusted-subnets or no nft (with a password, only connections trusted at both
        # ends leave the encrypted sleeve); the device's local address is read from the
        # kernel when the router starts.
        self.fastdp: OverlayService | None = None
        offer: LocalConfig | None = None
        if self.dataplane is not None:
            off = fastdp_off_reason(config) or ("" if overlay is not None else "no overlay port")
            if not off:
                offer = LocalConfig(local=ipaddress.IPv4Address(0), mtu=config.mtu,
                                    port=config.mesh.port + 1, peer_name=str(name))
            t = config.mesh.timings
            switch = OverlaySwitch(fastdp_enabled=not config.no_fastdp, config=SwitchConfig(
                timeout=t.fastdp_heartbeat_timeout, hold=t.fastdp_hold,
                retry_max=t.fastdp_retry_max))
            self.fastdp = OverlayService(switch,
                                       ourself=name, config=offer, service=None,
                                       dataplane=self.dataplane, reason_off=off)
            self.sleeve.watch_connections(self.fastdp)
        self.mesh = MeshService(
            config.mesh, network=network, sleeve=self.sleeve, name=name,
            nickname=self.nickname, uid=self.uid, short_id=random_short_id(rng),
            targets=targets, save_targets=store.save_targets, rng=rng, fastdp=offer,
        )
        # ``--ipalloc-range ''``: no IPAM at all, as in Weave (no /ip, no ipam status).
        self.ipam: IpamService | None = None
        if config.ipalloc_range is not None:
            self.ipam = IpamService(
                allocator_config(config, name, self.nickname), store,
                register=self.mesh.register_gossiper, peers=self._ipam_peers,
                target_count=self.mesh.target_count,
                on_output=self.mesh.flush_gossip, rng=rng,
            )
            self.mesh.on_routes_changed(self.ipam.notify_peers_changed)
        self.dns: DnsService | None = None  # --no-dns: None
        if config.dns is not None:
            self.dns = DnsService(
                config.dns, ourself=name, register=self.mesh.register_gossiper,
                visible=self._reachable, store=store, on_output=self.mesh.flush_gossip,
                bind_device=BRIDGE_NAME if config.dns.on_bridge else None, rng=rng)
        self._dns_hooks = None if self.dns is None else ContainerDns(self.dns, kernel)
        self.containers = (None if kernel is None else
                           ContainersService(kernel, store, self.ipam,
                                             universe=config.ipalloc_range,
                                             check_interval=container_check_interval(),
                                             on_released=self._containers_vanished))
        self.cni = None if kernel is None else CniService(pods or kernel, store, self.ipam)
        self.host_access: HostService | None = None  # expose/hide, the router's nft table
        self.nft_events: NftEvents | None = None  # tells the tables' owners of nft changes
        if kernel is not None:
            nft, problem = open_nft()
            if nft is not None:
                self.nft_events = open_nft_events()
            self.host_access = HostService(kernel, nft, store, self.ipam,
                                           port=config.mesh.port,
                                           universe=config.ipalloc_range, nft_problem=problem,
                                           events=self.nft_events)
        # /metrics; DNS and fastdp add their gauges with ``self.metrics.add_source``.
        self.metrics = RouterCollector(self.snapshot)

    def _initial_targets(self) -> list[str]:
        """``--resume`` takes the persisted targets; otherwise the command line's replace them."""
        if self.config.mesh.resume:
            return self.store.load_targets()
        return list(self.config.mesh.peers)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            services = trio.CancelScope()
            stopped = trio.Event()
            await nursery.start(self._run_services, services, stopped)
            if self.config.http_addr is not None:
                host, port = self.config.http_addr
                try:
                    await nursery.start(functools.partial(
                        serve_api, self, host, port, socket_path=self.config.api_socket))
                except OSError as exc:
                    raise ListenError(host, port, "HTTP API", exc) from exc
            if self.config.metrics_addr is not None:
                host, port = self.config.metrics_addr
                try:
                    await nursery.start(serve_metrics, self.metrics, self.snapshot, host, port)
                except OSError as exc:
                    raise ListenError(host, port, "metrics", exc) from exc
            self.ready = True
            log.info("ready: %s(%s) listening on %s:%d", self.name, self.nickname,
                     self.config.mesh.host, self.config.mesh.port)
            task_status.started()
            await self._stop.wait()
            log.info("stopping")
            self.ready = False
            if self.reset_requested and self.ipam is not None:
                await self.ipam.reset_handover()  # while the mesh can still carry it
            services.cancel()
            await stopped.wait()
            if self._kernel is not None:  # nothing of ours sends on the sleeve port now
                with trio.CancelScope(shield=True):
                    await clear_conntrack(self.config.mesh.port)
            if self.reset_requested and self._kernel is not None:
                # Before the API goes: `reset` returns once the router stops answering.
                if self.host_access is not None:
                    await self.host_access.remove_table()
                await reset_host(self._kernel)
            nursery.cancel_scope.cancel()

    async def _run_services(self, scope: trio.CancelScope, stopped: trio.Event, *,
                            task_status: trio.TaskStatus[None]) -> None:
        """The sleeve (with the data plane) and the mesh, until ``scope`` is cancelled."""
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.sleeve.run)
                    if self.nft_events is not None:
                        await nursery.start(self.nft_events.run)
                    if self.host_access is not None:  # the bridge exists: protect it
                        await nursery.start(self.host_access.run)
                    if self.fastdp is not None:  # after the bridge, before any peer
                        await self._start_fastdp(self.fastdp)
                        await nursery.start(self.fastdp.run)
                    await nursery.start(self.mesh.run)
                    if self.ipam is not None:
                        await nursery.start(self.ipam.run)
                    if self.containers is not None:  # vanished containers' addresses freed
                        await nursery.start(self.containers.run)
                    if self.cni is not None:  # and those of vanished CNI attachments
                        await nursery.start(functools.partial(
                            self.cni.run, check_interval=container_check_interval()))
                    if self.dns is not None and self._kernel is not None:  # sims: gossip only
                        if self.dns.config.on_bridge:  # the bridge exists: the sleeve made it
                            await prepare_bridge(self._kernel)
                        await nursery.start(self.dns.run)
                    task_status.started()
        finally:
            stopped.set()

    async def _start_fastdp(self, runner: OverlayService) -> None:
        """The device's local address, the bridge filter, then the service (no nft, or a
        filter refused: fastdp off, said in the log and the report)."""
        offer = runner.config
        if offer is None or self._kernel is None or self._overlay is None:
            return
        local = underlay_address(await self._kernel.snapshot(), self.config.mesh.host)
        if local is None:
            runner.disable("no IPv4 address on this host for the VXLAN device")
            return
        config = LocalConfig(local=local, mtu=offer.mtu, port=offer.port,
                             peer_name=offer.peer_name)
        try:
            nft = await install_filter(config.name, config.tap)
        except KernelError as exc:
            runner.disable(f"bridge filter: {exc}")
            log.error("fastdp off: %s", exc)
            return
        problem = await self._vxlan_guard(config.port)
        if problem:
            runner.disable(f"VXLAN guard: {problem}")
            log.error("fastdp off: VXLAN guard: %s", problem)
            return
        keep = [] if self.config.mesh.password is None else [
            (GUARD_TABLE, guard_commands(config.port, self.config.mesh.trusted_subnets))]
        runner.enable(config, FastdpService(self._overlay, config, nft=nft, keep=keep,
                                                   events=self.nft_events))
        log.info("fastdp: %s on %s (local %s, VNI %#x, UDP %d, mtu %d)", config.name,
                 config.bridge, local, config.vni, config.port, config.mtu)

    async def _vxlan_guard(self, port: int) -> str:
        """With a password: only the trusted subnets may send to the VXLAN port
        (``kernel/vxlan_guard.py``); without one, a guard left by an earlier run goes.
        What went wrong ("" if nothing): a password without its guard runs no fastdp."""
        nft, problem = open_nft()
        try:
            if self.config.mesh.password is None:
                if nft is not None and await remove_guard(nft):
                    log.info("fastdp: removed the VXLAN guard of an earlier run")
                return ""
            if nft is None:
                return problem
            await install_guard(nft, port, self.config.mesh.trusted_subnets)
        except KernelError as exc:
            return str(exc)
        log.info("fastdp: VXLAN guard on UDP %d: only %s may send", port,
                 ", ".join(str(n) for n in self.config.mesh.trusted_subnets))
        return ""

    # The RouterControl protocol of router/control/api.py.

    def snapshot(self) -> Status:
        mesh = self.mesh.statistics()
        router = RouterStatus(
            version=__version__,
            protocol="weave-router",
            protocol_min_version=PROTOCOL_MIN_VERSION,
            protocol_max_version=PROTOCOL_MAX_VERSION,
            name=str(self.name),
            nickname=self.nickname,
            port=self.config.mesh.port,
            encryption=self.config.mesh.password is not None,
            peer_discovery=self.config.mesh.discovery,
            trusted_subnets=tuple(str(n) for n in self.config.mesh.trusted_subnets),
            targets=mesh.targets,
            connections=mesh.connections,
            peers=mesh.peers,
            unicast_routes=mesh.unicast_routes,
            broadcast_routes=mesh.broadcast_routes,
            conn_limit=self.config.mesh.conn_limit,
            counters=mesh.counters,
        )
        dataplane = None if self.dataplane is None else dict(self.dataplane.statistics())
        return Status(ready=self.ready, router=router, dataplane=dataplane,
                      ipam=None if self.ipam is None else self.ipam.statistics(),
                      dns=None if self.dns is None else self.dns.statistics(),
                      fastdp=None if self.fastdp is None else self.fastdp.statistics())

    def _ipam_peers(self) -> dict[PeerName, str]:
        """The peers IPAM can reach now, with their nicknames."""
        known = self.mesh.topology.peers()
        return {n: known[n].nickname if n in known else ""
                for n in self.mesh.gossip.routes.unicast_all}

    async def connect(self, peers: list[str], replace: bool) -> None:
        await self.mesh.connect(peers, replace=replace)

    async def forget(self, peers: list[str]) -> None:
        await self.mesh.forget(peers)

    def request_stop(self) -> None:
        self._stop.set()

    def request_reset(self) -> None:
        """Stop, then remove the bridge, our devices and our data (``weave-router reset``)."""
        self.reset_requested = True
        self._stop.set()

    def _reachable(self, peer: PeerName) -> bool:
        """Whether ``peer`` is in the mesh now (weaveDNS hides the entries of others)."""
        return peer in self.mesh.gossip.routes.unicast_all

    async def attach(self, container: str, addrs: list[str], *, multicast_route: bool,
                     hostname: str | None = None, with_dns: bool = True) -> Attached:
        """Attach; then register ``hostname`` (default: the netns name) in weaveDNS."""
        hooks = self._dns_hooks
        fqdn = None if hooks is None else hooks.name_for(container, hostname, with_dns)
        attached = await self._containers().attach(container, addrs,
                                                   multicast_route=multicast_route)
        if hooks is not None:
            path = resolve_netns(container)
            await hooks.attached(container, path, ipam_ident(path), fqdn,
                                 [c.ip for c in attached.attachment.cidrs
                                  if isinstance(c.ip, ipaddress.IPv4Address)])
        return attached

    async def detach(self, container: str, addrs: list[str]) -> Attached | None:
        ident = ipam_ident(resolve_netns(container))
        left = await self._containers().detach(container, addrs)
        if self._dns_hooks is not None:
            gone = None if left is None else [a.ip for a in parse_addrs(addrs).cidrs]
            self._dns_hooks.detached(container, ident, gone)
        return left

    def _containers_vanished(self, idents: list[str], names: dict[str, str]) -> None:
        if self._dns_hooks is not None:
            self._dns_hooks.vanished(idents, names)

    def dns_container_id(self, container: str) -> str:
        """The id weaveDNS files an attached container's names under (ConfigError if it
        is not attached)."""
        return self._containers().attached_ident(container)

    async def ps(self, containers: Sequence[str] = ()) -> list[Attached]:
        found = await self._containers().ps(containers)
        exposed = None if containers or self.host_access is None else \
            await self.host_access.ps_entry()
        return found if exposed is None else [*found, exposed]  # weave:expose, as Weave

    def _containers(self) -> ContainersService:
        if self.containers is None:
            raise ConfigError("this router runs without a data plane: no containers")
        return self.containers


def fastdp_off_reason(config: RouterConfig) -> str:
    """Why this router offers no fastdp ("" when it does)."""
    if config.no_fastdp:
        return "--no-fastdp"
    if config.mesh.password is not None and not config.mesh.trusted_subnets:
        return ("--password: this kernel has no ESP or WireGuard, so encrypted traffic "
                "stays on the sleeve (fastdp needs --trusted-subnets with a password)")
    if nft_binary() is None:
        return "no nft binary for the bridge filter (install nftables)"
    return ""


def underlay_address(host: NetnsState, listen: str) -> ipaddress.IPv4Address | None:
    """The address fastdp's VXLAN device sends from: ``--host`` if it names one, else the
    first IPv4 address of a link outside the bridge (not loopback)."""
    with contextlib.suppress(ValueError):
        wanted = ipaddress.IPv4Address(listen)
        if not wanted.is_unspecified:
            return wanted
    enslaved = {link.name for link in host.links if link.master is not None}
    for address in host.addresses:
        ip = address.cidr.ip
        if (isinstance(ip, ipaddress.IPv4Address) and not ip.is_loopback
                and address.ifname not in enslaved and address.ifname != "weave"):
            return ip
    return None


def container_check_interval(env: Mapping[str, str] | None = None) -> float:
    """Seconds between checks for vanished containers: ``WEAVE_CONTAINER_CHECK_INTERVAL``
    if set (tests shorten it), else 30. ConfigError naming the variable if malformed."""
    raw = (os.environ if env is None else env).get(ENV_CONTAINER_CHECK_INTERVAL)
    if raw is None:
        return CHECK_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= 86_400:
        raise ConfigError(f"{ENV_CONTAINER_CHECK_INTERVAL}: {raw!r} is not a number of "
                          "seconds between 0.1 and 86400")
    return value


def notify_systemd(state: str) -> None:
    """Tell systemd (``Type=notify``) about our state; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(path)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("could not notify systemd at %s: %s", path, exc)


class _PeerFilter(logging.Filter):
    """Stamps every log record with the peer, so logs of several routers can be merged."""

    def __init__(self) -> None:
        super().__init__()
        self.peer = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.peer = self.peer
        return True


def setup_logging(config: RouterConfig) -> _PeerFilter:
    handler: logging.Handler
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(config.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    peer_filter = _PeerFilter()
    handler.addFilter(peer_filter)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(peer)s %(name)s: %(message)s")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    return peer_filter


# CNI ADDs and DELs at once: a runtime starting or stopping many pods runs as many plugin
# processes, and a veth's deletion waits ~16 ms on the kernel, not on us.
CNI_WORKERS = 8


async def _main(config: RouterConfig, store: Store, name: PeerName,
                peer_filter: _PeerFilter) -> bool:
    """Run the router; True when it was asked to reset (its data is then removed)."""
    async with open_netlink_port() as kernel, open_netlink_port(CNI_WORKERS) as pods:
        router = Router(config, store, network=TrioNetwork(), name=name, kernel=kernel,
                        overlay=kernel, pods=pods)
        problem = resume.record_or_warn(store, config)  # IPAM took up its data first
        if problem is not None:
            log.warning("%s", problem)
        peer_filter.peer = f"{name}({router.nickname})"
        log.info("weave-router %s starting as %s(%s), db %s", __version__, name,
                 router.nickname, Path(config.db_path))
        await _serve_until_stopped(router)
        return router.reset_requested


async def check_host_routes(ipalloc_range: ipaddress.IPv4Network) -> None:
    """Weave's ``CheckNetworkFree``: ConfigError if the range overlaps a route of this host
    (the weave bridge's aside), e.g. the underlay's own subnet."""
    async with open_netlink_port() as kernel:
        check_range_free(ipalloc_range, await kernel.snapshot())


async def reset_host(kernel: KernelPort) -> list[str]:
    """Delete the bridge and every device of ours (containers lose ``ethwe``), fastdp's
    VXLAN device (its FDB entries go with it) and its bridge filter; the names of the
    links deleted."""
    snapshot = await kernel.snapshot()
    vxlans = [link.name for link in snapshot.links
              if link.kind == "vxlan" and link.master == "weave"]
    plan = reset_plan(snapshot, names=vxlans)
    await execute(kernel, plan)
    if await remove_filter():
        log.info("reset: removed the fastdp bridge filter")
    nft, _ = open_nft()
    with contextlib.suppress(KernelError):
        if nft is not None and await remove_guard(nft):
            log.info("reset: removed the fastdp VXLAN guard")
    removed = [op.name for op in plan.ops if isinstance(op, DeleteLink)]
    log.info("reset: removed %s", ", ".join(removed) or "nothing (no bridge or devices)")
    return removed


def remove_data(db_path: Path) -> bool:
    """Delete the database (and its WAL files): the peer name, targets, everything.
    True if there was a database."""
    existed = db_path.exists()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return existed


def reset_offline(db_path: Path) -> tuple[list[str], bool]:
    """``reset`` with no router running: remove the plumbing and the data ourselves.
    The links deleted, and whether a database was removed."""

    async def plumbing() -> list[str]:
        nft, _ = open_nft()
        if nft is not None and await nft.delete_table(TABLE):
            log.info("reset: removed nftables table %s", TABLE)
        async with open_netlink_port() as kernel:
            return await reset_host(kernel)

    removed = trio.run(plumbing)
    return removed, remove_data(db_path)


async def _serve_until_stopped(router: Router) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, router)
            await nursery.start(_serve, router, nursery.cancel_scope)
            notify_systemd(notify_message(router.snapshot(), ready=True))
            if os.environ.get("NOTIFY_SOCKET"):
                nursery.start_soon(_status_to_systemd, router)


async def _status_to_systemd(router: Router) -> None:
    """``STATUS=3 peers, 2 established, IPAM ready`` for ``systemctl status``, as it changes."""
    sent = ""
    while True:
        await trio.sleep(STATUS_INTERVAL)
        message = notify_message(router.snapshot())
        if message != sent and router.ready:
            notify_systemd(message)
            sent = message


async def _serve(router: Router, scope: trio.CancelScope, *,
                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    await router.run(task_status=task_status)
    scope.cancel()  # the router has stopped: end the signal watcher too


async def _stop_on_signal(signals: AsyncIterator[int], router: Router) -> None:
    async for signum in signals:
        log.info("received %s", signal.Signals(signum).name)
        notify_systemd("STOPPING=1")
        router.request_stop()


def leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside ``group`` and the groups nested in it (trio nests a group per
    nursery: its own text, ``Exceptions from Trio nursery (1 sub-exception)``, says nothing)."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(leaf_errors(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def start_failure(group: BaseExceptionGroup[BaseException]) -> str:
    """One line for a failed start: each distinct reason, ``cannot start: `` unless it says
    ``cannot ...`` itself (``cannot listen on 10.99.99.99:6783 (UDP): [Errno 99] ...``)."""
    reasons = list(dict.fromkeys(str(exc) or type(exc).__name__ for exc in leaf_errors(group)))
    return "; ".join(r if r.startswith("cannot ") else f"cannot start: {r}" for r in reasons)


def set_process_title(role: str) -> None:
    """``weave-router: ROLE`` in ps, top and ``pgrep weave-router`` (its comm too)."""
    setproctitle.setproctitle(f"weave-router: {role}")


# How long a Python thread may hold the GIL while another waits (Python's default is
# 5 ms). The router's threads (trio's loop, weaveDNS's UDP reader, the netlink and store
# workers) each need it briefly; with 5 ms a DNS answer waits up to 5 ms behind the loop
# (bench.dns: p99 at 10,000 qps 5.6 ms, 1.1-1.9 ms with 0.5 ms). The data plane's
# threads run without the GIL and are not affected.
GIL_SWITCH_INTERVAL = 0.0005  # seconds


def run(config: RouterConfig) -> int:
    """Run a router in this process until it is stopped; the exit code says how it ended."""
    set_process_title(f"router {config.mesh.nickname or socket.gethostname()}")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    peer_filter = setup_logging(config)
    try:
        if config.ipalloc_range is not None:  # before anything is created (no database)
            trio.run(check_host_routes, config.ipalloc_range)
        store = Store.open(config.db_path)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except StoreError as exc:  # a full disk: the supervisor tries again later
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    exit_code = EXIT_OK
    reset = False
    try:
        name = settle_name(store, config.mesh.name)
        reset = trio.run(_main, config, store, name, peer_filter)
    except* ConfigError as group:
        log.error("%s", start_failure(group))
        exit_code = EXIT_CONFIG
    except* (OSError, KernelError, StoreError) as group:
        # A port in use, a socket or device that cannot be opened: one line, and the
        # supervisor decides whether to try again.
        log.error("%s", start_failure(group))
        exit_code = EXIT_FAILURE
    finally:
        store.close()
    if reset:
        remove_data(config.db_path)
        log.info("reset: removed %s", config.db_path)
    log.info("stopped")
    return exit_code
