"""The host's side of the weave network: ``expose``/``hide`` and the router's own
nftables table (rules in ``rules.py``).

1. **start**   the exposed addresses are the IPv4 addresses on the bridge (they outlive a
   router restart, as the bridge does); whether each is masqueraded is persisted (store
   meta ``expose``). The table ``inet weave-router`` is installed in one transaction.
2. **watch**   the table is read back whenever nftables changes in the namespace
   (``kernel/nft_events.py``; else every ``check_interval`` seconds) and every
   ``SAFETY_INTERVAL``; if a chain or rule of ours is missing (``nft flush ruleset``, a
   firewall reload), the whole table is put back and a warning logged.
3. **expose**  addresses from IPAM (ident ``weave:expose``, not a container's, so the
   vanished-container check never frees them) or as given; added to the bridge, then the
   table is rebuilt. **hide** does the reverse.
4. **reset**   the table is deleted (the bridge, and its addresses, go with reset's plan).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import shutil
from collections.abc import Sequence

import trio

from router.containers.addresses import parse_addrs
from router.containers.service import Attached
from router.errors import ConfigError, KernelError
from router.host.rules import TABLE, Exposure, HostRules, table_commands
from router.ipam import NotFoundError
from router.ipam.service import IpamService
from router.kernel.nft import NftPort, commands_view
from router.kernel.nft_events import SAFETY_INTERVAL, NftEvents
from router.kernel.plumbing import BRIDGE_NAME, Attachment
from router.kernel.port import AddAddress, DeleteAddress, KernelPort
from router.store import Store

log = logging.getLogger("weave-router.host")

EXPOSE_IDENT = "weave:expose"  # Weave's IPAM ident (and ps name) for the host's addresses
META_KEY = "expose"  # store meta: {"CIDR": masquerade, ...}
CHECK_INTERVAL = 1.0  # seconds between reads of our table when nftables cannot tell us
_DELETED = re.compile(r"(\d+) flow entries have been deleted")


class HostService:
    """Owns the table and the host's addresses on the bridge."""

    def __init__(self, kernel: KernelPort, nft: NftPort | None, store: Store,
                 ipam: IpamService | None, *, port: int,
                 universe: ipaddress.IPv4Network | None, bridge: str = BRIDGE_NAME,
                 check_interval: float = CHECK_INTERVAL, nft_problem: str = "",
                 events: NftEvents | None = None) -> None:
        self._kernel = kernel
        self._nft = nft
        self._store = store
        self._ipam = ipam
        self._universe = universe
        self._bridge = bridge
        self._port = port
        self._interval = check_interval
        self._events = events  # None: read the table back every check_interval seconds
        self._nft_problem = nft_problem
        self._exposures: dict[ipaddress.IPv4Interface, bool] = {}
        self._lock = trio.Lock()
        self.counters = {"restored": 0, "installed": 0, "check_failures": 0}

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "exposed": len(self._exposures)}

    def exposed(self) -> tuple[Exposure, ...]:
        return tuple(Exposure(c, m) for c, m in self._exposures.items())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        await self._load()
        if self._nft is None:
            log.warning("no firewall rules: %s", self._nft_problem)
            task_status.started()
            return
        async with self._lock:
            await self._install()
        task_status.started()
        seen = 0 if self._events is None else self._events.generation
        while True:
            if self._events is None:
                await trio.sleep(self._interval)
            else:  # nftables changed (maybe us: the read then finds nothing to do)
                seen = await self._events.wait(seen, SAFETY_INTERVAL)
            try:
                await self.check()
            except KernelError as exc:  # nft broken for a moment: try again next time
                self.counters["check_failures"] += 1
                log.warning("cannot check the firewall table %s: %s", TABLE, exc)

    async def check(self) -> bool:
        """Put the table back if part of it is gone; True if it was."""
        assert self._nft is not None
        async with self._lock:
            commands = table_commands(self._rules())
            if await self._nft.read_table(TABLE) == commands_view(commands):
                return False
            await self._nft.replace_table(TABLE, commands)
            self.counters["restored"] += 1
            log.warning("firewall table %s was changed or removed: put back", TABLE)
            return True

    async def expose(self, addrs: Sequence[str], *, masquerade: bool) -> list[str]:
        """Give the host ``addrs`` (none: one from IPAM's default subnet) on the bridge;
        the CIDRs now exposed by this request."""
        self._need_nft()
        request = parse_addrs(addrs)
        async with self._lock:
            cidrs = await self._addresses(request.cidrs, request.subnets,
                                          request.default_subnet or not addrs)
            host = await self._kernel.snapshot()
            if host.link(self._bridge) is None:
                raise ConfigError(f'bridge "{self._bridge}" not present: nothing to expose on')
            have = set(host.addresses_of(self._bridge))
            await self._kernel.apply([AddAddress(self._bridge, c) for c in cidrs
                                      if c not in have])
            for cidr in cidrs:
                self._exposures[cidr] = masquerade
            self._save()
            await self._install()
        log.info("exposed %s%s", " ".join(map(str, cidrs)),
                 "" if masquerade else " (without masquerade)")
        return [str(c) for c in cidrs]

    async def hide(self, addrs: Sequence[str]) -> list[str]:
        """Take ``addrs`` (none: all) off the bridge; the CIDRs hidden."""
        self._need_nft()
        request = parse_addrs(addrs)
        if request.needs_ipam:
            raise ConfigError("hide takes the exposed addresses (ip:CIDR) or none for all")
        async with self._lock:
            missing = [str(c) for c in request.cidrs if c not in self._exposures]
            if missing:
                have = " ".join(map(str, self._exposures)) or "none"
                raise ConfigError(f"{' '.join(missing)} not exposed (exposed: {have}): "
                                  "nothing hidden")
            cidrs = list(request.cidrs or self._exposures)
            present = set((await self._kernel.snapshot()).addresses_of(self._bridge))
            await self._kernel.apply([DeleteAddress(self._bridge, c) for c in cidrs
                                      if c in present])
            for cidr in cidrs:
                del self._exposures[cidr]
                self._release(cidr)
            self._save()
            await self._install()
        log.info("hid %s", " ".join(map(str, cidrs)) or "nothing (none exposed)")
        return [str(c) for c in cidrs]

    async def ps_entry(self) -> Attached | None:
        """``ps``'s ``weave:expose`` line: the bridge's MAC and the exposed addresses."""
        link = (await self._kernel.snapshot()).link(self._bridge)
        if not self._exposures or link is None:
            return None
        return Attached(EXPOSE_IDENT, Attachment(link.mac, tuple(self._exposures)))

    async def remove_table(self) -> bool:
        """``reset``: delete our table; False if there was none (or no nft)."""
        if self._nft is None:
            return False
        async with self._lock:
            return await self._nft.delete_table(TABLE)

    def _need_nft(self) -> None:
        if self._nft is None:
            raise ConfigError(f"expose/hide need nftables: {self._nft_problem}")

    def _rules(self) -> HostRules:
        return HostRules(self._bridge, self._port, self.exposed())

    async def _install(self) -> None:
        assert self._nft is not None
        await self._nft.replace_table(TABLE, table_commands(self._rules()))
        self.counters["installed"] += 1

    async def _load(self) -> None:
        """Exposed = the bridge's IPv4 addresses; masquerade as persisted (default on)."""
        try:
            saved = {ipaddress.IPv4Interface(k): bool(v)
                     for k, v in json.loads(self._store.get_meta(META_KEY) or "{}").items()}
        except (ValueError, AttributeError):
            log.warning("ignoring a malformed %r record in the database", META_KEY)
            saved = {}
        host = await self._kernel.snapshot()
        # 169.254.0.0/16 is not exposure's: weaveDNS listens there (docs/dns.md)
        self._exposures = {
            c: saved.get(c, True) for c in host.addresses_of(self._bridge)
            if isinstance(c, ipaddress.IPv4Interface) and not c.ip.is_link_local}

    def _save(self) -> None:
        self._store.set_meta(META_KEY, json.dumps({str(c): m for c, m in
                                                   self._exposures.items()}))

    async def _addresses(self, cidrs: Sequence[ipaddress.IPv4Interface],
                         subnets: Sequence[ipaddress.IPv4Network],
                         default: bool) -> list[ipaddress.IPv4Interface]:
        if self._ipam is None or self._universe is None:
            if subnets or default:
                raise ConfigError("IPAM is disabled (launched with --ipalloc-range ''): give "
                                  "the address, like ip:10.32.1.1/12")
            return list(cidrs)
        got: list[ipaddress.IPv4Interface] = []
        for cidr in cidrs:
            in_range = cidr.ip in self._universe
            got.append(await self._ipam.claim(EXPOSE_IDENT, cidr, is_container=False)
                       if in_range else cidr)
        for subnet in subnets:
            got.append(await self._ipam.allocate(EXPOSE_IDENT, subnet, is_container=False))
        if default:
            got.append(await self._ipam.allocate(EXPOSE_IDENT, is_container=False))
        return list(dict.fromkeys(got))

    def _release(self, cidr: ipaddress.IPv4Interface) -> None:
        if self._ipam is not None and self._universe is not None and cidr.ip in self._universe:
            with contextlib.suppress(NotFoundError):
                self._ipam.free(EXPOSE_IDENT, cidr.ip)




async def clear_conntrack(port: int) -> int:
    """Delete the conntrack entries of the sleeve's UDP ports (``port``, ``port + 1``) in
    this namespace, as ``stop`` does (weave#1042, #1171: a stale entry, e.g. one made
    while nothing listened or before a NAT rule changed, keeps a peer's datagrams going
    the wrong way after a restart). The count deleted; 0 without ``conntrack`` (logged)."""
    binary = shutil.which("conntrack")
    if binary is None:
        log.info("conntrack not found: stale entries of UDP %d-%d are not cleared",
                 port, port + 1)
        return 0
    deleted = 0
    for udp in (port, port + 1):
        with trio.move_on_after(5.0):
            proc = await trio.run_process([binary, "-D", "-p", "udp", "--dport", str(udp)],
                                          capture_stdout=True, capture_stderr=True,
                                          check=False)
            found = _DELETED.search(proc.stderr.decode(errors="replace"))
            deleted += int(found.group(1)) if found else 0
    log.info("cleared %d conntrack entries of UDP %d-%d", deleted, port, port + 1)
    return deleted
