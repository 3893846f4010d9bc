"""The fastdp service: keeps the kernel's VXLAN device and FDB equal to the plan.

A thin trio driver around :mod:`router.overlay.fastdp.plan`; the kernel is reached only
through an :class:`~router.kernel.port.OverlayPort`. Its loop, one pass at a time:

1. read the device (``port.vxlan``) and the heartbeat pins (``port.pinned_macs``);
2. diff it against the plan's desired state for the current peers and MACs;
3. apply the operations in order (``port.apply``);
   (the diff also deletes the device's learned entries that send to a peer no longer
   on fastdp: unicast to those MACs must not go on into a path given up);
4. if the fastdp peers changed, make the bridge forget the MACs it learned on the VXLAN
   device and the TAP (``port.forget_learned``): a MAC learned behind the old path would
   keep its frames there (the kernel ages it only after 300 s);
5. with an nftables port (``nft``), check the bridge filter table is there and whole, and
   put it back if not (``nft flush ruleset``, a deleted chain): fastdp without it would
   carry frames twice. With ``events`` (``kernel/nft_events.py``) only after nftables
   changed (which also starts a pass at once) or ``SAFETY_INTERVAL`` seconds; without, on
   every pass;
6. wait until :meth:`FastdpService.set_peers`, :meth:`FastdpService.set_macs` or
   :meth:`FastdpService.set_heartbeats` change the inputs, or ``resync`` seconds pass: the
   periodic pass re-creates what someone else deleted or changed (``ip link del
   vxlan-6784``, ``bridge fdb del ...``).

A kernel failure never ends the service: it is counted, kept as ``last_error`` in
:meth:`FastdpService.statistics`, and the next pass (after ``retry`` seconds at most)
tries again from a fresh read. :meth:`FastdpService.remove` takes fastdp's objects away
(``reset``); leaving the loop leaves them in place (``stop`` keeps the data path up).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import trio

from router.errors import KernelError
from router.kernel.bridge_filter import TABLE, filter_commands
from router.kernel.nft import Command, NftPort, TableRef, commands_view
from router.kernel.nft_cli import NftCli
from router.kernel.nft_events import SAFETY_INTERVAL, NftEvents
from router.kernel.port import OverlayOp, OverlayPort
from router.overlay.fastdp.plan import (
    LocalConfig,
    desired,
    diff,
    needs_recreate,
    pin_ports,
    stale_learned,
    teardown,
)

log = logging.getLogger("weave-router.fastdp")

RESYNC_INTERVAL = 10.0  # seconds between passes when nothing changes
RETRY_INTERVAL = 1.0  # seconds before the next pass after a kernel failure


@dataclass(frozen=True)
class FastdpStatistics:
    """A snapshot of the service: passes, what they changed, the kernel's refusals."""

    passes: int = 0
    repairs: int = 0  # passes that had to change something
    ops_applied: int = 0  # operations run by the passes that succeeded
    errors: int = 0
    last_error: str | None = None
    device: bool = False  # the device was there and as planned after the last pass
    flood_entries: int = 0  # planned: one per fastdp peer
    mac_entries: int = 0  # planned: heartbeat MACs and MACs placed by hand
    learned_entries: int = 0  # the kernel's learned entries kept by the last pass
    learned_removed: int = 0  # learned entries deleted (sending to a peer not on fastdp)
    filter_checks: int = 0  # passes that read the bridge filter (and the VXLAN guard)
    filter_repairs: int = 0  # times one was missing or changed and was put back


class FastdpService:
    """Applies the fastdp plan through ``port``; see the module docstring."""

    def __init__(self, port: OverlayPort, config: LocalConfig, *,
                 resync: float = RESYNC_INTERVAL, retry: float = RETRY_INTERVAL,
                 nft: NftPort | None = None,
                 keep: Sequence[tuple[TableRef, Sequence[Command]]] = (),
                 events: NftEvents | None = None) -> None:
        self._port = port
        self._config = config
        self._nft = nft  # None: the filter is not ours to keep (tests without nftables)
        self._keep = tuple(keep)  # more nftables tables kept whole beside the bridge filter
        self._events = events  # None: the filter is read on every pass
        self._filter_read: tuple[int, float] | None = None  # (generation, time) of the
        # last read that found every table whole or put it back; None: none yet
        self._resync = resync
        self._retry = retry
        self._peers: dict[str, ipaddress.IPv4Address] = {}
        self._macs: dict[str, str] = {}
        self._heartbeats: dict[str, ipaddress.IPv4Address] = {}
        self._changed = trio.Event()
        self._stats = FastdpStatistics()
        self._forget = False  # the fastdp peers changed: forget learned MACs after a pass

    def set_peers(self, peers: Mapping[str, ipaddress.IPv4Address]) -> None:
        """The peers now on fastdp (name -> underlay IP); applied on the next pass, soon.
        When the set changes, the bridge forgets the MACs it learned behind the VXLAN
        device and the TAP, so their frames take the new path at once."""
        if dict(peers) != self._peers:
            self._forget = True
        self._peers = dict(peers)
        self._changed.set()

    def set_macs(self, macs: Mapping[str, str]) -> None:
        """The learned container MACs (MAC -> peer name); only fastdp peers' get entries."""
        self._macs = dict(macs)
        self._changed.set()

    def set_heartbeats(self, peers: Mapping[str, ipaddress.IPv4Address]) -> None:
        """The peers to probe with heartbeats (name -> underlay IP), on fastdp or not."""
        self._heartbeats = dict(peers)
        self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Converge once, report started, then converge on every change and resync."""
        ok = await self.converge()
        task_status.started()
        async with trio.open_nursery() as nursery:
            if self._events is not None:
                nursery.start_soon(self._hear_nft, self._events)
            while True:
                with trio.move_on_after(self._resync if ok else self._retry):
                    await self._changed.wait()
                ok = await self.converge()

    async def _hear_nft(self, events: NftEvents) -> None:
        seen = events.generation
        while True:
            seen = await events.wait(seen, float("inf"))
            self._changed.set()  # the pass reads the filter: the generation moved

    async def converge(self) -> bool:
        """One pass: read, diff, apply. False if the kernel refused (counted, not raised)."""
        self._changed = trio.Event()
        want = desired(self._config, self._peers, self._macs, self._heartbeats)
        floods = sum(1 for e in want.fdb if e.flood)
        self._stats = replace(self._stats, flood_entries=floods,
                              mac_entries=len(want.fdb) - floods)
        try:
            have = await self._port.vxlan(self._config.name, netns=self._config.netns)
            pinned = {port: await self._pins(port) for port in pin_ports(self._config)}
            ops = diff(want, have, pinned)
            applied, refused = await self._apply_each(ops)
            s = self._stats
            self._stats = replace(s, ops_applied=s.ops_applied + applied)
            if have is None or needs_recreate(self._config, have):
                removed, kept = 0, 0  # a new device has learned nothing yet
            else:
                removed = len(stale_learned(want, have))
                kept = len(have.learned) - removed
            s = self._stats
            self._stats = replace(s, learned_removed=s.learned_removed + removed,
                                  learned_entries=kept)
            if self._forget:
                for port in pin_ports(self._config):
                    await self._forget_learned(port)
                self._forget = False
            await self._check_filter()
            if refused is not None:
                raise refused
        except KernelError as exc:
            s = self._stats
            self._stats = replace(s, passes=s.passes + 1, errors=s.errors + 1,
                                  last_error=str(exc), device=False)
            return False
        s = self._stats
        self._stats = replace(s, passes=s.passes + 1, repairs=s.repairs + bool(ops),
                              device=True, last_error=None)
        return True

    async def _apply_each(self, ops: Sequence[OverlayOp]) -> tuple[int, KernelError | None]:
        """Each operation on its own, in order: one the kernel refuses does not keep the
        others out (a pin refused on every pass once kept a peer's flood entry out, so
        that peer never reached fastdp). How many were applied, and the first refusal."""
        applied, refused = 0, None
        for op in ops:
            try:
                await self._port.apply([op])
            except KernelError as exc:
                refused = refused or exc
                continue
            applied += 1
        return applied, refused

    async def _check_filter(self) -> None:
        """The bridge filter, and each table of ``keep`` (the VXLAN guard), put back
        whole if missing or changed."""
        if self._nft is None:
            return
        now = trio.current_time()
        generation = 0 if self._events is None else self._events.generation
        if (self._events is not None and self._filter_read is not None
                and self._filter_read[0] == generation
                and now - self._filter_read[1] < SAFETY_INTERVAL):
            return
        tables = ((TABLE, filter_commands(self._config.name, self._config.tap)), *self._keep)
        self._stats = replace(self._stats, filter_checks=self._stats.filter_checks + 1)
        for table, commands in tables:  # a KernelError leaves _filter_read: read again
            view = await self._nft.read_table(table)
            if view == commands_view(commands):
                continue
            await self._nft.replace_table(table, commands)
            self._stats = replace(self._stats, filter_repairs=self._stats.filter_repairs + 1)
            log.warning("fastdp nftables table %s was %s: put back", table,
                        "removed" if view is None else "changed")
        self._filter_read = (generation, now)  # changes heard from here on ask for more

    async def _pins(self, port: str) -> frozenset[str]:
        try:
            return await self._port.pinned_macs(port, netns=self._config.netns)
        except KernelError as exc:
            if exc.errno != errno.ENODEV:
                raise
            return frozenset()  # no device yet: nothing pinned

    async def _forget_learned(self, port: str) -> None:
        try:
            await self._port.forget_learned(port, netns=self._config.netns)
        except KernelError as exc:
            if exc.errno != errno.ENODEV:  # no TAP (yet): nothing learned on it
                raise

    async def remove(self) -> None:
        """Delete fastdp's FDB entries and device (``reset``); KernelError if refused."""
        have = await self._port.vxlan(self._config.name, netns=self._config.netns)
        await self._port.apply(teardown(have, netns=self._config.netns))
        self._stats = replace(self._stats, device=False)

    def statistics(self) -> FastdpStatistics:
        """A frozen snapshot of the counters."""
        return self._stats


async def install_filter(vxlan: str, tap: str) -> NftPort:
    """Create (or replace) the table in this process's namespace; KernelError if refused.
    Returns the nftables port it used (for :class:`FastdpService`, to keep it there)."""
    nft = NftCli()  # KernelError(ENOENT) if there is no nft
    await nft.replace_table(TABLE, filter_commands(vxlan, tap))
    return nft


async def remove_filter() -> bool:
    """Delete the table (``reset``); False if there was none or nft is missing."""
    try:
        return await NftCli().delete_table(TABLE)
    except KernelError:
        return False
