"""Requests to the allocator and the queue of those that wait (sans-IO).

A :class:`Request` (``allocate``, ``claim`` or ``prime``) is tried at once. One that
cannot finish yet (no ring, no free space, the owner has not answered) waits in the
:class:`RequestQueue` under a ticket, which the caller got as :class:`Pending`; the
allocator retries it whenever the ring or the reachable peers change and on its timer.
When it finishes, its answer is queued as a :class:`Completion` (drained by the
driver), except for requests already answered (a background claim), whose failure is
only counted (``background_claims_failed``).

Bounds: at most ``max_pending`` requests wait at once; one more is refused with an
IpamError and counted (``pending_overflow``). A claim of an address whose owner is
unreachable waits at most ``claim_grace`` seconds (``Request.grace_until``) for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from router.ipam import CancelledError, Completion, IpamError, Pending

NO_CONTAINER_ID = "_"  # "I have no unique id": the allocation is filed under its address
MAX_IDENT = 255  # characters of a container id
CLAIM_GRACE = 3.0  # seconds a claim waits for an unreachable owner before it fails

_TITLES = {"allocate": "Allocate", "claim": "Claim", "prime": "Prime"}


@dataclass(eq=False)
class Request:
    """A request: done at once, or waiting for the ring, for space, or for a peer."""

    kind: str  # "allocate" | "claim" | "prime"
    ident: str = ""
    subnet: IPv4Network | None = None
    cidr: IPv4Interface | None = None  # claim: the address wanted; allocate: the result
    is_container: bool = True
    answered: bool = False  # a claim with no_error_on_unknown: answered, still to do
    ticket: int = 0
    error: IpamError | None = None
    grace_until: float | None = None  # claim: fail after this if its owner stays unreachable
    owner_unreachable: bool = False  # claim: waiting for its owner to become reachable

    def filed_under(self, address: str) -> str:
        """The ident the address is recorded under (its own text for ``_``)."""
        return address if self.ident == NO_CONTAINER_ID else self.ident

    def fail(self, error: IpamError) -> bool:
        """Finish with ``error``; True (finished), for ``return request.fail(...)``."""
        self.error = error
        return True

    def result(self) -> IPv4Interface:
        """The answer of a request finished at once (raises its error)."""
        if self.error is not None:
            raise self.error
        assert self.cidr is not None
        return self.cidr


def check_ident(ident: str) -> None:
    """IpamError unless ``ident`` is a usable container id (no spaces, no ``/``)."""
    if not ident or len(ident) > MAX_IDENT or any(c.isspace() or c == "/" for c in ident):
        raise IpamError(f"invalid container id {ident[:MAX_IDENT]!r}")


class RequestQueue:
    """The requests that wait (in arrival order) and the answers of those now done."""

    def __init__(self, max_pending: int, counts: dict[str, int]) -> None:
        """``counts``: the allocator's counters (``pending_overflow``,
        ``background_claims_failed`` are counted here)."""
        self._max = max_pending
        self._counts = counts
        self._waiting: list[Request] = []
        self._tickets = 0
        self._completions: list[Completion] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request: object) -> bool:
        return request in self._waiting

    def waiting(self, kind: str | None = None) -> list[Request]:
        """The waiting requests (of ``kind`` if given), oldest first (a copy)."""
        return [r for r in self._waiting if kind is None or r.kind == kind]

    def count(self, kind: str) -> int:
        """How many requests of ``kind`` wait."""
        return sum(1 for r in self._waiting if r.kind == kind)

    def add(self, request: Request) -> Pending:
        """Queue ``request`` under a new ticket; IpamError (counted) when full."""
        if len(self._waiting) >= self._max:
            self._counts["pending_overflow"] += 1
            raise IpamError(f"too many pending IPAM requests ({self._max})")
        self._tickets += 1
        request.ticket = self._tickets
        self._waiting.append(request)
        return Pending(request.ticket)

    def finish(self, request: Request) -> None:
        """``request`` (waiting) is done: dequeue it and queue its answer."""
        self._waiting.remove(request)
        self._complete(request)

    def cancel_where(self, match: Callable[[Request], bool], *, complete: bool = True) -> int:
        """Cancel every waiting request ``match`` selects (answering it unless told not
        to: its caller went away); the number cancelled."""
        requests = [r for r in self._waiting if match(r)]
        for request in requests:
            self._waiting.remove(request)
            what = _TITLES[request.kind]
            request.error = CancelledError(
                f"{what} request for {request.ident or 'ring'} cancelled"
            )
            if complete:
                self._complete(request)
        return len(requests)

    def take_completions(self) -> list[Completion]:
        """The answers queued since the last call (drained)."""
        out, self._completions = self._completions, []
        return out

    def grace_deadline(self) -> float:
        """When the first claim waiting for an unreachable owner gives up (inf: none)."""
        return min(
            (r.grace_until for r in self._waiting
             if r.owner_unreachable and r.grace_until is not None),
            default=math.inf,
        )

    def _complete(self, request: Request) -> None:
        """Queue the answer of a finished request (or count a background failure)."""
        if request.answered:
            if request.error is not None:
                self._counts["background_claims_failed"] += 1
            return
        cidr = None if request.error is not None or request.kind == "prime" else request.cidr
        self._completions.append(Completion(request.ticket, cidr, request.error))
