"""The IPAM service: trio driver of :class:`~router.ipam.allocator.Allocator`.

It owns the allocator, its gossip channel (``"ipam"``), the sqlite store and one timer
task; the control API (``router/control/ipam_api.py``) and the container plumbing call
its methods. Everything runs on the trio thread; no method blocks.

After **every** call into the allocator (an API request, a timer, a change of the
reachable peers, and each gossip payload the gossip router hands to us as the channel's
:class:`~router.mesh.gossip.Gossiper`), :meth:`IpamService._after` runs these stages:

1. **persist**   ``take_persistence()`` -> :meth:`Store.apply_ipam`: one sqlite
   transaction. A failure here (disk full) propagates: the router crashes rather than
   answer anything that is not durable.
2. **answer**    the call's own result, then every ``completions()`` entry wakes the
   request waiting on that ticket.
3. **send**      ``messages_to_send()``: Unicast -> ``channel.send_unicast``, Broadcast
   -> ``channel.broadcast``, GossipNow -> ``channel.gossip_update(allocator.gossip())``,
   then ``on_output()`` so the mesh wakes the writers of neighbours with gossip waiting.
4. **sleep**     the timer task sleeps until ``deadline()`` (or the next poll of the
   reachable peers) and calls ``handle_timer(now)``.

The reachable peers (with their nicknames) and the number of connection targets (which
sets the consensus quorum without ``consensus=N``) come from two callables, polled every
``poll_interval`` seconds and at once after :meth:`IpamService.notify_peers_changed`.

Bounds: pending requests are limited by the allocator (``max_pending``; more are refused
with a one-line error); a unicast with no route is a counted drop.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TypeVar

import trio

from router.config import RouterConfig
from router.errors import BrokenError
from router.ipam import (
    AllocatorConfig,
    Broadcast,
    Completion,
    IpamStatistics,
    Pending,
    Unicast,
    parse_init_mode,
)
from router.ipam.allocator import CHANNEL, Allocator
from router.mesh.gossip import GossipChannel, GossipData, Gossiper
from router.mesh.names import PeerName
from router.store import Store

log = logging.getLogger("weave-router.ipam")

T = TypeVar("T")

PEER_POLL_INTERVAL = 1.0  # seconds between polls of the reachable peers and targets
HANDOVER_GRACE = 0.5  # seconds a reset gives the mesh to send the hand-over broadcast

SERVICE_COUNTERS = ("batches_written", "unicasts_unroutable")


def allocator_config(config: RouterConfig, name: PeerName, nickname: str) -> AllocatorConfig:
    """The allocator's configuration from ``launch``'s flags (ConfigError if malformed)."""
    return AllocatorConfig(
        ourself=name,
        universe=config.ipalloc_range,
        nickname=nickname,
        default_subnet=config.ipalloc_default_subnet,
        mode=parse_init_mode(config.ipalloc_init),
        target_count=len(config.mesh.peers),
    )


@dataclass(eq=False)
class _Waiter:
    """One request answered Pending: woken by its Completion."""

    event: trio.Event = field(default_factory=trio.Event)
    completion: Completion | None = None


class IpamService:
    """IP address management of one router: the allocator wired to trio, gossip and sqlite.

    ``register`` is ``MeshService.register_gossiper`` (or a bare ``GossipRouter.register``
    in tests); ``peers`` gives the reachable peers with their nicknames, ``target_count``
    the number of connection targets; ``on_output`` is called whenever gossip was queued.
    Build it inside ``trio.run`` (the allocator runs on trio's clock).
    """

    def __init__(
        self,
        config: AllocatorConfig,
        store: Store,
        *,
        register: Callable[[str, Gossiper], GossipChannel],
        peers: Callable[[], Mapping[PeerName, str]] | None = None,
        target_count: Callable[[], int] | None = None,
        on_output: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        poll_interval: float = PEER_POLL_INTERVAL,
        handover_grace: float = HANDOVER_GRACE,
    ) -> None:
        self._store = store
        self._peers = peers
        self._target_count = target_count
        self._on_output = on_output
        self._poll_interval = poll_interval
        self._handover_grace = handover_grace
        self._last_peers: dict[PeerName, str] | None = None
        self._last_count: int | None = None
        self._next_poll = -math.inf
        self._waiters: dict[int, _Waiter] = {}
        self._wake = trio.Event()
        self._counts: dict[str, int] = dict.fromkeys(SERVICE_COUNTERS, 0)
        self._alloc = Allocator(
            config, now=trio.current_time(), persisted=store.load_ipam(), rng=rng
        )
        for note in self._alloc.startup_notes:
            log.info("%s", note)
        self._channel = register(CHANNEL, self)
        self._after()  # the start-up batch: a reset of stale data, or a freshly seeded ring

    @property
    def name(self) -> PeerName:
        """Our peer name."""
        return self._alloc.ourself

    @property
    def default_subnet(self) -> IPv4Network:
        """Where allocations without a subnet go."""
        return self._alloc.default_subnet

    # -- the timer task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Retry pending requests on the allocator's deadline and follow the mesh, until
        cancelled. Ready (``started``) at once: requests are accepted from construction."""
        self._poll(trio.current_time())
        task_status.started()
        while True:
            deadline = self._alloc.deadline()
            if self._peers is not None or self._target_count is not None:
                deadline = min(deadline, self._next_poll)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            if now >= self._next_poll:
                self._poll(now)
            if now >= self._alloc.deadline():
                try:
                    self._alloc.handle_timer(now)
                finally:
                    self._after()

    def notify_peers_changed(self) -> None:
        """The mesh's reachable peers (or targets) changed: read them now."""
        self._poll(trio.current_time())

    def set_peers(self, peers: Mapping[PeerName, str]) -> None:
        """Tell the allocator who is reachable now (with nicknames); used by the poll."""
        snapshot = dict(peers)
        if snapshot == self._last_peers:
            return
        self._last_peers = snapshot
        self._call(lambda now: self._alloc.set_peers(snapshot, now))

    def _poll(self, now: float) -> None:
        self._next_poll = now + self._poll_interval
        if self._peers is not None:
            self.set_peers(self._peers())
        if self._target_count is not None:
            count = self._target_count()
            if count != self._last_count:
                self._last_count = count
                self._call(lambda _now: self._alloc.set_target_count(count))

    # -- requests (the control API) --------------------------------------------------------

    async def allocate(
        self, ident: str, subnet: IPv4Network | None = None, *, is_container: bool = True
    ) -> IPv4Interface:
        """An address for ``ident`` in ``subnet`` (default subnet if None); waits for the
        ring or for space if needed. IpamError (one line) if refused."""
        result, waiter = self._call(
            lambda now: self._alloc.allocate(ident, subnet, now, is_container=is_container)
        )
        if waiter is None:
            assert isinstance(result, IPv4Interface)
            return result
        return _address(await self._wait(waiter, result))

    async def claim(
        self,
        ident: str,
        cidr: IPv4Interface,
        *,
        is_container: bool = True,
        no_error_on_unknown: bool = False,
    ) -> IPv4Interface:
        """Give ``ident`` exactly ``cidr`` (asking its owner if another peer owns it).

        ``no_error_on_unknown``: before the ring is known, answer at once and finish in
        the background (re-claiming the addresses of running containers at start-up).
        """
        result, waiter = self._call(
            lambda now: self._alloc.claim(
                ident, cidr, now, is_container=is_container,
                no_error_on_unknown=no_error_on_unknown,
            )
        )
        if waiter is None:
            assert isinstance(result, IPv4Interface)
            return result
        return _address(await self._wait(waiter, result))

    async def prime(self) -> None:
        """Return once this peer can allocate (the ring is known); starts the election."""
        result, waiter = self._call(self._alloc.prime)
        if waiter is not None:
            await self._wait(waiter, result)

    def free(self, ident: str, address: IPv4Address | None = None) -> list[IPv4Interface]:
        """Release ``address`` of ``ident``, or all its addresses and pending requests.

        Returns what was released once that is durable; NotFoundError if nothing matched.
        """
        released, _ = self._call(lambda _now: self._alloc.free(ident, address))
        return released

    def lookup(self, ident: str, subnet: IPv4Network | None = None) -> list[IPv4Interface]:
        """The addresses ``ident`` holds (in ``subnet`` if given)."""
        return self._alloc.lookup(ident, subnet)

    def idents(self, *, containers_only: bool = True) -> list[str]:
        """Every ident holding an address (containers' only, unless told), sorted."""
        return self._alloc.idents(containers_only=containers_only)

    def prune_owned(self, live: Iterable[str]) -> list[str]:
        """Release the addresses of every container not in ``live`` (after a restart)."""
        idents = list(live)
        gone, _ = self._call(lambda _now: self._alloc.prune_owned(idents))
        return gone

    def rmpeer(self, peer: str, *, force: bool = False) -> str:
        """Take over the space of the dead peer ``peer`` (name or nickname).

        Returns Weave's line ``N IPs taken over from PEER``; NotFoundError for an unknown
        peer, IpamError for ourself and (unless ``force``) for a peer reachable now.
        """
        count, _ = self._call(lambda now: self._alloc.rmpeer(peer, now, force=force))
        return f"{count} IPs taken over from {peer}"

    async def reset_handover(self) -> PeerName | None:
        """Hand all our space to another peer and stop allocating (``reset``).

        Pending requests fail (cancelled); later requests raise ClosedError. Waits
        ``handover_grace`` seconds so the mesh can send the hand-over before the router
        stops. Returns the heir (None: nobody to hand over to).
        """
        heir, _ = self._call(self._alloc.reset)
        if heir is not None:
            log.info("handed our IPAM space over to %s", heir)
            await trio.sleep(self._handover_grace)
        return heir

    def statistics(self) -> IpamStatistics:
        """The allocator's snapshot, with this driver's counters added."""
        stats = self._alloc.statistics()
        return replace(stats, counters={**stats.counters, **self._counts})

    # -- the Gossiper of channel "ipam" (called by the gossip router) ----------------------

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        """A unicast for us: a ring, a space request or a denial."""
        via = self._channel.sender
        self._call(lambda _now: self._alloc.on_gossip_unicast(src, payload, via=via))

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        """A broadcast: a proposal, a new ring, a ring request; our state is relayed on."""
        via = self._channel.sender
        relay, _ = self._call(lambda _now: self._alloc.on_gossip_broadcast(src, payload, via=via))
        return relay

    def gossip(self) -> GossipData | None:
        """Our complete state (periodic gossip, new neighbours)."""
        return self._alloc.gossip()

    def on_gossip(self, payload: bytes) -> GossipData | None:
        """Merge gossip; the delta to relay if ownership moved."""
        via = self._channel.sender
        delta, _ = self._call(lambda _now: self._alloc.on_gossip(payload, via=via))
        return delta

    # -- the persistence boundary ----------------------------------------------------------

    def _call(self, fn: Callable[[float], T]) -> tuple[T, _Waiter | None]:
        """Call the allocator, then persist, answer and send (module doc, stages 1-3).

        A Pending result gets its waiter before stage 2, so a completion that stage 2
        delivers is never lost. Exceptions from the allocator propagate after the
        stages ran (whatever it changed before failing is still made durable).
        """
        waiter = None
        try:
            result = fn(trio.current_time())
            if isinstance(result, Pending):
                waiter = self._waiters[result.ticket] = _Waiter()
        finally:
            self._after()
        return result, waiter

    def _after(self) -> None:
        batch = self._alloc.take_persistence()
        if batch is not None:
            self._store.apply_ipam(batch)
            self._counts["batches_written"] += 1
        for done in self._alloc.completions():
            waiter = self._waiters.pop(done.ticket, None)
            if waiter is not None:
                waiter.completion = done
                waiter.event.set()
        sent = False
        for message in self._alloc.messages_to_send():
            sent = True
            if isinstance(message, Unicast):
                if not self._channel.send_unicast(message.dst, message.payload):
                    self._counts["unicasts_unroutable"] += 1
            elif isinstance(message, Broadcast):
                self._channel.broadcast(message.payload)
            else:
                data = self._alloc.gossip()
                if data is not None:
                    self._channel.gossip_update(data)
        self._wake.set()  # the deadline may have moved
        if sent and self._on_output is not None:
            self._on_output()

    async def _wait(self, waiter: _Waiter, pending: object) -> Completion:
        """Wait for a Pending request; if our caller is cancelled, cancel the request."""
        assert isinstance(pending, Pending)
        try:
            await waiter.event.wait()
        finally:
            if waiter.completion is None:
                self._waiters.pop(pending.ticket, None)
                self._call(lambda _now: self._alloc.cancel(pending.ticket))
        assert waiter.completion is not None
        if waiter.completion.error is not None:
            raise waiter.completion.error
        return waiter.completion


def _address(done: Completion) -> IPv4Interface:
    if done.cidr is None:  # pragma: no cover - the allocator always sets one
        raise BrokenError(f"IPAM request {done.ticket} completed without an address")
    return done.cidr
