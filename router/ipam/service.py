"""The IPAM service: trio driver of :class:`~router.ipam.allocator.Allocator`.

It owns the allocator, its gossip channel (``"ipam"``), the sqlite store and one timer
task; the control API (``router/control/ipam_api.py``) and the container plumbing call
its methods. Everything runs on the trio thread; no method blocks.

After **every** call into the allocator (an API request, a timer, a change of the
reachable peers, and each gossip payload the gossip router hands to us as the channel's
:class:`~router.mesh.gossip.Gossiper`), :meth:`IpamService._after` runs these stages:

1. **persist**   ``take_persistence()`` -> :meth:`Store.apply_ipam`: one sqlite
   transaction. If the store refuses it (disk full, I/O error: :class:`StoreError`),
   stages 2 and 3 do not run: see "A store that refuses writes" below.
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

A store that refuses writes: the refused batch is marked unsaved again in the
allocator, so nothing it holds is answered or sent (completions and messages stay
queued behind it), and the service is *suspended*:

* every request (allocate, claim, free, lookup, rmpeer, ...) first retries the write; while it
  fails, the request is refused with the store's one-line error (the API answers 503),
  without touching the allocator, so no answer is ever given that is not durable;
* gossip from peers is dropped (counted; peers gossip again), and our own gossip
  carries nothing while suspended (a peer must never learn a ring we could forget);
* a request that was waiting (Pending) when its write failed is cancelled once writes
  work again, since its caller was already told it failed;
* the timer task retries every :data:`STORE_RETRY_INTERVAL` seconds; the first write
  that works resumes everything (completions, messages) in order.

``status`` shows ``Status: suspended: cannot write PATH: ...`` meanwhile; the log gets
one error when it starts and one line when it ends (``docs/persistence.md``).

Bounds: pending requests are limited by the allocator (``max_pending``; more are refused
with a one-line error); a unicast with no route is a counted drop.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TypeVar

import trio

from router.config import RouterConfig
from router.errors import BrokenError, ConfigError
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
from router.ipam.persistence import unreadable_problem
from router.mesh.gossip import GossipChannel, GossipData, Gossiper
from router.mesh.names import PeerName
from router.store import Store, StoreError, corrupt

log = logging.getLogger("weave-router.ipam")

T = TypeVar("T")

PEER_POLL_INTERVAL = 1.0  # seconds between polls of the reachable peers and targets
HANDOVER_GRACE = 0.5  # seconds a reset gives the mesh to send the hand-over broadcast
STORE_RETRY_INTERVAL = 1.0  # seconds between retries of a write the store refused

SERVICE_COUNTERS = ("batches_written", "unicasts_unroutable", "store_failures",
                    "gossip_dropped_suspended")


def allocator_config(config: RouterConfig, name: PeerName, nickname: str) -> AllocatorConfig:
    """The allocator's configuration from ``launch``'s flags (ConfigError if malformed)."""
    if config.ipalloc_range is None:
        raise ConfigError("IPAM is disabled (--ipalloc-range '')")
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
        self._store_error: StoreError | None = None  # set while suspended
        self._cancel_when_durable: list[int] = []  # tickets of requests refused by the store
        persisted = store.load_ipam()
        problem = None if persisted is None else unreadable_problem(persisted)
        if problem is not None:  # refuse to start; never delete what we cannot read
            raise corrupt(store.path, problem)
        self._alloc = Allocator(config, now=trio.current_time(), persisted=persisted, rng=rng)
        for note in self._alloc.startup_notes:
            log.info("%s", note)
        self._channel = register(CHANNEL, self)
        with suppress(StoreError):  # suspended from the start: retried by the timer
            self._after()  # the start-up batch: a reset of stale data, or a seeded ring

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
            with trio.move_on_at(self._deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            with suppress(StoreError):  # still suspended: try again later
                self._tick(trio.current_time())

    def _deadline(self) -> float:
        if self._store_error is not None:
            return trio.current_time() + STORE_RETRY_INTERVAL
        deadline = self._alloc.deadline()
        if self._peers is not None or self._target_count is not None:
            deadline = min(deadline, self._next_poll)
        return deadline

    def _tick(self, now: float) -> None:
        self._resume()
        if now >= self._next_poll:
            self._poll(now)
        if now >= self._alloc.deadline():
            self._call(self._alloc.handle_timer)

    def notify_peers_changed(self) -> None:
        """The mesh's reachable peers (or targets) changed: read them now."""
        self._poll(trio.current_time())

    def set_peers(self, peers: Mapping[PeerName, str]) -> None:
        """Tell the allocator who is reachable now (with nicknames); used by the poll."""
        snapshot = dict(peers)
        if snapshot == self._last_peers:
            return
        self._call(lambda now: self._alloc.set_peers(snapshot, now))
        self._last_peers = snapshot  # only once the allocator took it

    def _poll(self, now: float) -> None:
        """Read the peers and targets (skipped while suspended: retried on resume)."""
        self._next_poll = now + self._poll_interval
        with suppress(StoreError):
            if self._peers is not None:
                self.set_peers(self._peers())
            if self._target_count is not None:
                count = self._target_count()
                if count != self._last_count:
                    self._call(lambda _now: self._alloc.set_target_count(count))
                    self._last_count = count

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
        """The addresses ``ident`` holds (in ``subnet`` if given); StoreError while
        suspended (what memory holds may not be durable)."""
        self._resume()
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
        try:
            heir, _ = self._call(self._alloc.reset)
        except StoreError as exc:
            log.warning("IPAM: could not hand our space over (%s); `weave-router rmpeer` "
                        "it from another peer", exc)
            return None
        if heir is not None:
            log.info("handed our IPAM space over to %s", heir)
            await trio.sleep(self._handover_grace)
        return heir

    def statistics(self) -> IpamStatistics:
        """The allocator's snapshot, with this driver's counters added."""
        stats = self._alloc.statistics()
        status = stats.status if self._store_error is None else f"suspended: {self._store_error}"
        return replace(stats, status=status, counters={**stats.counters, **self._counts})

    @property
    def suspended(self) -> StoreError | None:
        """Why requests are refused now (the store refuses writes); None when durable."""
        return self._store_error

    # -- the Gossiper of channel "ipam" (called by the gossip router) ----------------------

    # While suspended, gossip is dropped (counted) rather than raised into the gossip
    # router (it is not the sending peer's fault).

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        """A unicast for us: a ring, a space request or a denial."""
        via = self._channel.sender
        self._gossip_call(
            lambda now: self._alloc.on_gossip_unicast(src, payload, via=via, now=now))

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        """A broadcast: a proposal, a new ring, a ring request; our state is relayed on."""
        via = self._channel.sender
        return self._durable(self._gossip_call(
            lambda now: self._alloc.on_gossip_broadcast(src, payload, via=via, now=now)))

    def gossip(self) -> GossipData | None:
        """Our complete state (periodic gossip, new neighbours); nothing while suspended."""
        return None if self._store_error is not None else self._durable(self._alloc.gossip())

    def on_gossip(self, payload: bytes) -> GossipData | None:
        """Merge gossip; the delta to relay if ownership moved."""
        via = self._channel.sender
        return self._durable(self._gossip_call(
            lambda now: self._alloc.on_gossip(payload, via=via, now=now)))

    def _gossip_call(self, fn: Callable[[float], T]) -> T | None:
        try:
            result, _ = self._call(fn)
        except StoreError:
            self._counts["gossip_dropped_suspended"] += 1
            return None
        return result

    def _durable(self, data: GossipData | None) -> GossipData | None:
        """``data`` (encoded when sent, not now) that encodes nothing while suspended."""
        return None if data is None else _DurableGossip(data, self)

    # -- the persistence boundary ----------------------------------------------------------

    def _call(self, fn: Callable[[float], T]) -> tuple[T, _Waiter | None]:
        """Call the allocator, then persist, answer and send (module doc, stages 1-3).

        A Pending result gets its waiter before stage 2, so a completion that stage 2
        delivers is never lost. Exceptions from the allocator propagate after the
        stages ran (whatever it changed before failing is still made durable).
        StoreError, without calling the allocator, while suspended.
        """
        self._resume()
        waiter = None
        ticket: int | None = None
        try:
            result = fn(trio.current_time())
            if isinstance(result, Pending):
                ticket = result.ticket
                waiter = self._waiters[ticket] = _Waiter()
        finally:
            try:
                self._after()
            except StoreError:
                if ticket is not None:  # its caller gets the error: never complete it
                    self._waiters.pop(ticket, None)
                    self._cancel_when_durable.append(ticket)
                raise
        return result, waiter

    def _resume(self) -> None:
        """While suspended, retry the refused write; StoreError while it still fails."""
        if self._store_error is not None:
            self._after()

    def _persist(self) -> None:
        """Stage 1; on a refusal the batch stays unsaved and the service is suspended."""
        batch = self._alloc.take_persistence()
        if batch is not None:
            try:
                self._store.apply_ipam(batch)
            except StoreError as exc:
                self._alloc.persistence_failed(batch)
                self._counts["store_failures"] += 1
                if self._store_error is None:
                    log.error("IPAM: %s; refusing requests until it can be written (retrying "
                              "every %g s)", exc, STORE_RETRY_INTERVAL)
                    self._wake.set()  # the timer task now retries every STORE_RETRY_INTERVAL
                self._store_error = exc
                raise
            self._counts["batches_written"] += 1
        if self._store_error is not None:
            log.warning("IPAM: the database can be written again; answering requests")
            self._store_error = None

    def _after(self) -> None:
        self._persist()
        while self._cancel_when_durable:
            tickets, self._cancel_when_durable = self._cancel_when_durable, []
            for ticket in tickets:
                self._alloc.cancel(ticket)
            self._persist()
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
                data = self._durable(self._alloc.gossip())
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
                try:
                    self._call(lambda _now: self._alloc.cancel(pending.ticket))
                except StoreError:
                    self._cancel_when_durable.append(pending.ticket)
        assert waiter.completion is not None
        if waiter.completion.error is not None:
            raise waiter.completion.error
        return waiter.completion


class _DurableGossip:
    """Our gossip data, encoded when the mesh sends it: empty while the service is
    suspended, since the allocator's state may then hold changes that are not durable."""

    def __init__(self, inner: GossipData, service: IpamService) -> None:
        self.inner = inner
        self.service = service

    def encode(self) -> list[bytes]:
        return [] if self.service.suspended is not None else self.inner.encode()

    def merge(self, other: GossipData) -> GossipData:
        inner = other.inner if isinstance(other, _DurableGossip) else other
        return _DurableGossip(self.inner.merge(inner), self.service)


def _address(done: Completion) -> IPv4Interface:
    if done.cidr is None:  # pragma: no cover - the allocator always sets one
        raise BrokenError(f"IPAM request {done.ticket} completed without an address")
    return done.cidr
