"""What the allocator reports: the ``Status:`` line and the statistics snapshot (sans-IO).

The status line uses Weave's words: ``idle`` (no ring and nobody asked for one),
``priming`` (an observer waiting for electors), ``awaiting consensus (quorum: Q, known:
K)``, ``ready``, ``waiting for IP(s) to become available`` (allocations wait for space)
or, when every other owner is unreachable, ``all IP ranges owned by unreachable peers -
use 'rmpeer' if they are dead``. :func:`snapshot` builds the frozen
:class:`~router.ipam.IpamStatistics` that ``status``, ``status ipam``, the report and
the metrics are made from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from router.ipam import AllocatorConfig, IpamStatistics, PeerShare, RingEntryStatus
from router.ipam.election import Election
from router.ipam.peers import PeerBook
from router.ipam.requests import RequestQueue
from router.ipam.ring import Ring
from router.ipam.space import Space
from router.mesh.names import PeerName

STATUS_IDLE = "idle"
STATUS_PRIMING = "priming"
STATUS_READY = "ready"
STATUS_WAITING = "waiting for IP(s) to become available"
STATUS_UNREACHABLE = "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"


def status_line(ring: Ring, election: Election, queue: RequestQueue, peers: PeerBook) -> str:
    """The ``Status:`` line of ``status`` (Weave's words)."""
    if ring.empty():
        paxos = election.paxos
        if not election.awaiting:
            return STATUS_IDLE
        if paxos is None:
            return STATUS_PRIMING
        return f"awaiting consensus (quorum: {paxos.quorum}, known: {paxos.known})"
    if queue.count("allocate"):
        others = ring.peers() - {ring.ourself}
        if not others & peers.reachable:
            return STATUS_UNREACHABLE
        return STATUS_WAITING
    return STATUS_READY


def snapshot(
    config: AllocatorConfig,
    *,
    ring: Ring,
    space: Space,
    election: Election,
    queue: RequestQueue,
    peers: PeerBook,
    counts: Mapping[str, int],
    suspects: Iterable[PeerName] = (),
) -> IpamStatistics:
    """A frozen snapshot for ``status``, ``status ipam``, the report and metrics."""
    ourself = ring.ourself
    shares = tuple(
        PeerShare(
            name=str(name),
            nickname=peers.nickname(name),
            ips=ips,
            reachable=name == ourself or name in peers.reachable,
            active=space.num_allocated() if name == ourself else None,
        )
        for name, ips in sorted(ring.shares().items())
    )
    paxos = election.paxos if ring.empty() else None
    return IpamStatistics(
        status=status_line(ring, election, queue, peers),
        range=str(config.universe),
        default_subnet=str(config.default_subnet or config.universe),
        max_ips=config.universe.num_addresses,
        ips={"local-used": space.num_allocated(), "local-free": space.num_free()},
        shares=shares,
        unreachable_peers=sum(1 for s in shares if not s.reachable),
        pending_allocates=queue.count("allocate"),
        pending_claims=queue.count("claim"),
        quorum=paxos.quorum if paxos is not None else None,
        known=paxos.known if paxos is not None else None,
        counters=dict(counts),
        entries=_entries(ring, peers),
        pending_allocate_list=tuple(
            f"{r.ident} {r.subnet or config.default_subnet or config.universe}"
            for r in queue.waiting("allocate")),
        pending_claim_list=tuple(
            (r.ident, str(r.cidr)) for r in queue.waiting("claim") if r.cidr is not None),
        suspects=tuple(sorted(suspects)),
    )


def _entries(ring: Ring, peers: PeerBook) -> tuple[RingEntryStatus, ...]:
    """The ring's entries with their sizes, as Weave's report lists them."""
    ourself = ring.ourself
    return tuple(
        RingEntryStatus(
            token=str(ipaddress.IPv4Address(start)), size=end - start, peer=str(entry.peer),
            nickname=peers.nickname(entry.peer),
            is_known_peer=entry.peer == ourself or entry.peer in peers.reachable,
            version=entry.version,
        )
        for entry, start, end in ring.ranges()
    )
