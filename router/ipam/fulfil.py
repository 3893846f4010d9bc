"""Doing requests: allocations and claims against our space and the ring (sans-IO).

The :class:`Fulfiller` tries a :class:`~router.ipam.requests.Request` with what this
peer knows now, queues it (:class:`~router.ipam.requests.RequestQueue`) if it must
wait, and retries the queue (primes, then claims, then allocations) when the allocator
says something changed. A try:

* ``prime`` finishes once there is a ring;
* ``allocate`` gives the ident the address it already holds in the subnet, else the
  lowest free address of the subnet that we own; with none free it asks a peer for
  space (:class:`~router.ipam.space_requests.SpaceRequests`) and waits;
* ``claim`` of an address held here by another ident fails (``already in use`` /
  ``already owned by``); outside the range it is the user's call; ours and free, it is
  taken; another peer's, that owner is asked for it (a space request for one address),
  or, while the owner is unreachable, the claim waits up to ``claim_grace`` seconds and
  then fails with ``address A is owned by other peer NAME (nick)``, as it does when the
  owner answers ``space-denied``;
* ``free`` releases one address or all of an ident's (cancelling its waiting requests).

Every address given is recorded in the holdings and marked for persistence.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface

from router.errors import BrokenError
from router.ipam import ConflictError, Message, NotFoundError, Pending
from router.ipam.peers import PeerBook
from router.ipam.persistence import Unsaved
from router.ipam.requests import Request, RequestQueue
from router.ipam.ring import Ring
from router.ipam.space import Holdings, Space
from router.ipam.space_requests import SpaceRequests
from router.mesh.names import PeerName


class Fulfiller:
    """Tries, queues and retries requests; the allocator owns one.

    It shares the allocator's ring, space, holdings, peer book, unsaved changes and
    counters (changing only the space, the holdings, the marks and the counters) and
    hands the space requests it makes to ``send``.
    """

    def __init__(
        self,
        *,
        ring: Ring,
        space: Space,
        held: Holdings,
        peers: PeerBook,
        unsaved: Unsaved,
        counts: dict[str, int],
        send: Callable[[Message], None],
        rng: random.Random,
        max_pending: int,
        claim_grace: float,
    ) -> None:
        self._ring = ring
        self._space = space
        self._held = held
        self._peers = peers
        self._unsaved = unsaved
        self._counts = counts
        self._send = send
        self._claim_grace = claim_grace
        self.queue = RequestQueue(max_pending, counts)
        self.space_requests = SpaceRequests(counts, rng)

    def start(self, request: Request, now: float) -> Pending | None:
        """Try ``request``; None when done (result or error in it), else queue it."""
        self.space_requests.clear()
        if self.attempt(request, now):
            return None
        return self.queue.add(request)

    def retry(self, now: float, *, ask_again: bool) -> None:
        """Retry every waiting request: primes, then claims, then allocations
        (``ask_again``: peers already asked for space may be asked again)."""
        if ask_again:
            self.space_requests.clear()
        for kind in ("prime", "claim", "allocate"):
            for request in self.queue.waiting(kind):
                if request in self.queue and self.attempt(request, now):
                    self.queue.finish(request)

    def release(
        self, ident: str, address: IPv4Address | None, now: float
    ) -> list[IPv4Interface]:
        """Free one address of ``ident``, or all of them and cancel its waiting requests;
        NotFoundError if there is nothing to free. Waiting requests are retried."""
        if address is None:
            cancelled = self.queue.cancel_where(lambda r: r.ident == ident)
            released = self._held.lookup(ident)
            if not released and not cancelled:
                raise NotFoundError(f"Delete: no addresses for {ident}")
        else:
            released = [c for c in self._held.lookup(ident) if c.ip == address]
            if not released:
                raise NotFoundError(f"Free: address {address} not found for {ident}")
        for cidr in released:
            self._held.remove(ident, cidr)
            self._unsaved.owned.add(ident)
            if self._space.is_allocated(int(cidr.ip)):
                self._space.free(int(cidr.ip))
        self.retry(now, ask_again=False)
        return released

    def denied(self, src: PeerName, start: int, end: int) -> None:
        """``src`` has no space for us in ``[start, end)``: claims it owns there fail."""
        for request in self.queue.waiting("claim"):
            if request.cidr is None or not start <= int(request.cidr.ip) < end:
                continue
            if self._ring.owner(int(request.cidr.ip)) == src:
                request.error = ConflictError(self._peers.owned_by_other(request.cidr.ip, src))
                self.queue.finish(request)

    def attempt(self, request: Request, now: float) -> bool:
        """Do ``request`` if it can be done now; True when finished (result or error)."""
        if request.kind == "prime":
            return not self._ring.empty()
        if request.kind == "claim":
            return self._try_claim(request, now)
        return self._try_allocate(request, now)

    def _try_allocate(self, request: Request, now: float) -> bool:
        assert request.subnet is not None
        held = self._held.lookup(request.ident, request.subnet)
        if held:
            request.cidr = held[0]
            return True
        if self._ring.empty():
            return False
        net = request.subnet
        lo = max(int(net.network_address) + 1, self._ring.start)
        hi = min(int(net.broadcast_address), self._ring.end)
        addr = self._space.allocate(lo, hi) if lo < hi else None
        if addr is not None:
            request.cidr = IPv4Interface((addr, net.prefixlen))
            ident = request.filed_under(str(IPv4Address(addr)))
            self._record(ident, request.cidr, request.is_container)
            self._counts["allocations"] += 1
            return True
        start, end = int(net.network_address), int(net.broadcast_address) + 1
        if any(lo < end and start < hi for lo, hi, _d in self._ring.quarantined()):
            return False  # a gift there is about to become usable: wait for it
        message = self.space_requests.ask_anyone(
            self._ring, self._peers.reachable, start, end, now
        )
        if message is not None:
            self._send(message)
        return False

    def _try_claim(self, request: Request, now: float) -> bool:
        assert request.cidr is not None
        ip, addr = request.cidr.ip, int(request.cidr.ip)
        holder = self._held.holder(addr)
        if holder == str(ip) and request.ident != holder:
            return request.fail(ConflictError(f"address {ip} already in use"))
        if holder is not None and holder != request.ident:
            return request.fail(ConflictError(f"address {ip} is already owned by {holder}"))
        if holder is not None:
            return True  # the same container claims its own address again
        ident = request.filed_under(str(ip))
        if not self._ring.contains(addr):
            self._record(ident, request.cidr, request.is_container)  # outside: the user's call
            return True
        owner = self._ring.owner(addr)
        if owner is None:
            return False  # wait for the ring
        if owner == self._ring.ourself:
            if not self._space.owns(addr):
                # ours in the ring but held back (taken by rmpeer --force, or a gift we did
                # not ask for, while the peer it came from is reachable): wait, as for
                # allocations, until it is usable or goes back
                return False
            if not self._space.claim(addr):  # pragma: no cover - ours and not held means free
                raise BrokenError(f"address {ip} is ours, unheld and not free")
            self._record(ident, request.cidr, request.is_container)
            self._counts["claims"] += 1
            return True
        return self._await_owner(request, owner, now)

    def _await_owner(self, request: Request, owner: PeerName, now: float) -> bool:
        """A claim of ``owner``'s address: ask it, or wait for it to become reachable."""
        assert request.cidr is not None
        ip, addr = request.cidr.ip, int(request.cidr.ip)
        request.owner_unreachable = owner not in self._peers.reachable
        if request.owner_unreachable:
            # Its connection may only just be coming up: wait a bounded grace, then fail.
            if request.grace_until is None:
                request.grace_until = now + self._claim_grace
            if now >= request.grace_until:
                return request.fail(ConflictError(self._peers.owned_by_other(ip, owner)))
            return False
        message = self.space_requests.ask(owner, addr, addr + 1, now)
        if message is not None:
            self._send(message)
        return False

    def _record(self, ident: str, cidr: IPv4Interface, is_container: bool) -> None:
        self._held.add(ident, cidr, is_container)
        self._unsaved.owned.add(ident)
