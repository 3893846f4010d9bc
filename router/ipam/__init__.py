"""IP address management: every container gets a unique address, with no central store.

Modules (all sans-IO; ``service.py`` is the trio driver):

* :mod:`router.ipam.ring`: the token ring CRDT, who owns which part of the range;
* :mod:`router.ipam.space`: the addresses this peer owns and which are allocated;
* :mod:`router.ipam.consensus`: Paxos over gossip, to agree once who seeds the ring;
* :mod:`router.ipam.payloads`: the codec of the ``"ipam"`` gossip channel's payloads;
* :mod:`router.ipam.allocator`: the allocator, all the parts below together (the one
  class the driver and the API use);
* :mod:`router.ipam.election`: when and how the ring's seeds are elected;
* :mod:`router.ipam.requests`: a request and the bounded queue of those that wait;
* :mod:`router.ipam.fulfil`: allocating, claiming, freeing, retrying waiting requests;
* :mod:`router.ipam.space_requests`: asking peers for space and donating ours;
* :mod:`router.ipam.peers`: peers' nicknames and which peers are reachable;
* :mod:`router.ipam.persistence`: what must be stored, and taking it up at start;
* :mod:`router.ipam.statistics`: the ``Status:`` line and the statistics snapshot.

This file holds the vocabulary they share with the driver, the API and the CLI: user
errors, the ``--ipalloc-init`` modes and subnet parsing, the allocator's configuration,
its outputs, the persistence records and the statistics snapshot. ``docs/ipam.md``
explains the whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network

from router.errors import ConfigError
from router.mesh.names import PeerName

MIN_SUBNET_SIZE = 4  # addresses: network and broadcast are never given out
TICK_INTERVAL = 5.0  # seconds between retries (proposals, space requests)
# seconds a gift is not allocated from after we took it, while our ring naming us its
# owner spreads: a donor that gave it to another peer too is caught (router.ipam.merge)
GIFT_QUARANTINE = 2.0
MAX_PENDING = 1024  # requests waiting at once; more are refused (counted)

# -- errors -----------------------------------------------------------------------------------


class IpamError(ConfigError):
    """A request the allocator refuses; the one-line message says why (HTTP 400)."""


class NotFoundError(IpamError):
    """Nothing is recorded for that container, address or peer (HTTP 404)."""


class ConflictError(IpamError):
    """The address belongs to another container or to another peer (HTTP 409)."""


class CancelledError(IpamError):
    """A pending request was cancelled (container detached, peer reset)."""


# -- --ipalloc-init and subnets ---------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """``seed=NAME,...``: the range is divided among these peers at once."""

    peers: tuple[PeerName, ...]


@dataclass(frozen=True)
class Consensus:
    """``consensus[=N]``: elect the seeds when first needed; N peers expected if given."""

    count: int | None = None


@dataclass(frozen=True)
class Observer:
    """``observer``: never votes, asks electors for a ring when first needed."""


InitMode = Seed | Consensus | Observer


def parse_init_mode(text: str) -> InitMode:
    """Parse ``--ipalloc-init``; ConfigError naming the flag if malformed."""
    kind, sep, arg = text.strip().partition("=")
    if kind == "observer" and not sep:
        return Observer()
    if kind == "consensus":
        if not sep:
            return Consensus()
        if arg.isdigit() and int(arg) >= 1:
            return Consensus(int(arg))
        raise ConfigError(f"--ipalloc-init: consensus={arg!r} is not a positive peer count")
    if kind == "seed" and sep:
        names = [part for part in arg.split(",") if part]
        if not names:
            raise ConfigError("--ipalloc-init: seed= needs at least one peer name")
        peers = []
        for part in names:
            try:
                peers.append(PeerName.parse(part))
            except ConfigError as exc:
                raise ConfigError(f"--ipalloc-init: {exc}") from None
        return Seed(tuple(sorted(set(peers))))
    raise ConfigError(
        f"--ipalloc-init: {text!r} is not consensus[=COUNT], seed=NAME,... or observer"
    )


def parse_subnet(text: str, *, what: str = "subnet") -> IPv4Network:
    """Parse an IPv4 CIDR as Weave does; ConfigError starting with ``what`` if bad.

    Host bits must be zero and the subnet must hold at least :data:`MIN_SUBNET_SIZE`
    addresses (a /31 or /32 is refused).
    """
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{what}: invalid CIDR {text!r}") from None
    if not isinstance(net, IPv4Network):
        raise ConfigError(f"{what}: only IPv4 subnets are supported: {text}")
    if int(net.network_address) != int(ipaddress.ip_interface(text.strip()).ip):
        raise ConfigError(
            f"{what}: invalid subnet - bits after network prefix are not all zero: {text}"
        )
    if net.num_addresses < MIN_SUBNET_SIZE:
        raise ConfigError(
            f"{what}: invalid subnet - smaller than minimum size {MIN_SUBNET_SIZE}: {text}"
        )
    return net


def parse_address(text: str, *, what: str = "address") -> IPv4Interface:
    """Parse ``10.2.3.7/24`` (an address in its subnet) for a claim; ConfigError if bad."""
    try:
        cidr = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise ConfigError(f"{what}: invalid address {text!r} (expected IP/PREFIXLEN)") from None
    if not isinstance(cidr, IPv4Interface) or "/" not in text:
        raise ConfigError(f"{what}: expected an IPv4 address with a prefix length: {text}")
    return cidr


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocatorConfig:
    """What the allocator is told at start."""

    ourself: PeerName
    universe: IPv4Network  # --ipalloc-range
    nickname: str = ""
    default_subnet: IPv4Network | None = None  # --ipalloc-default-subnet; None: the range
    mode: InitMode = field(default_factory=Consensus)  # --ipalloc-init
    target_count: int = 0  # peers given on the command line (quorum without consensus=N)
    tick_interval: float = TICK_INTERVAL
    max_pending: int = MAX_PENDING
    gift_quarantine: float = GIFT_QUARANTINE


# -- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unicast:
    """Send ``payload`` to peer ``dst`` (``GossipChannel.send_unicast``)."""

    dst: PeerName
    payload: bytes


@dataclass(frozen=True)
class Broadcast:
    """Send ``payload`` to every peer (``GossipChannel.broadcast``)."""

    payload: bytes


@dataclass(frozen=True)
class GossipNow:
    """Push our state to every neighbour (``channel.gossip_update(allocator.gossip())``)."""


Message = Unicast | Broadcast | GossipNow


@dataclass(frozen=True)
class Pending:
    """The request waits (for the ring, for space); its answer comes as a Completion."""

    ticket: int


@dataclass(frozen=True)
class Completion:
    """The answer to a Pending request: an address (None for prime) or an error."""

    ticket: int
    cidr: IPv4Interface | None = None
    error: IpamError | None = None


# -- persistence ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnedRecord:
    """The addresses one container (or other ident) holds."""

    cidrs: tuple[IPv4Interface, ...]
    is_container: bool = True


@dataclass(frozen=True)
class PersistBatch:
    """Changes to store in ONE transaction before answering anything (see allocator doc).

    * ``reset``: delete every stored IPAM record first (new peer, changed name or range);
    * ``peer_name``: the peer the data belongs to (store it with the ring);
    * ``ring``: replace the stored ring with these bytes (None: unchanged);
    * ``paxos``: replace the stored consensus state (None: unchanged);
    * ``owned``: per ident, its new record, or None to delete it;
    * ``custody``: replace what the ring remembers beyond its entries (held gifts,
      unconfirmed owners, quarantined gifts, suspect donors; None: unchanged).
    """

    peer_name: PeerName
    reset: bool = False
    ring: bytes | None = None
    paxos: bytes | None = None
    owned: Mapping[str, OwnedRecord | None] = field(default_factory=dict)
    custody: bytes | None = None


@dataclass(frozen=True)
class PersistedState:
    """What the driver loaded from the store at start (the sum of all batches)."""

    peer_name: PeerName
    ring: bytes | None = None
    paxos: bytes | None = None
    owned: Mapping[str, OwnedRecord] = field(default_factory=dict)
    custody: bytes | None = None

    def apply(self, batch: PersistBatch) -> PersistedState:
        """This state with ``batch`` written on top (what a store does; used by tests)."""
        base = PersistedState(batch.peer_name) if batch.reset else self
        owned = dict(base.owned)
        for ident, record in batch.owned.items():
            if record is None:
                owned.pop(ident, None)
            else:
                owned[ident] = record
        return PersistedState(
            peer_name=batch.peer_name,
            ring=batch.ring if batch.ring is not None else base.ring,
            paxos=batch.paxos if batch.paxos is not None else base.paxos,
            owned=owned,
            custody=batch.custody if batch.custody is not None else base.custody,
        )


# -- statistics -------------------------------------------------------------------------------

COUNTERS = (
    "allocations",
    "claims",
    "space_requests_sent",
    "space_requests_denied",  # requests from others we could not serve
    "donations",
    "rmpeer_ips",
    "pending_overflow",
    "background_claims_failed",
    "ring_gifts_refused",  # entries naming us owner that did not come from the old owner
    "ring_reassertions",  # merges where we re-asserted a range of ours above a peer's entry
    "ring_gifts_disputed",  # quarantined gifts claimed by another peer: given back
)


@dataclass(frozen=True)
class PeerShare:
    """One line of ``status ipam``."""

    name: str
    nickname: str
    ips: int
    reachable: bool
    active: int | None  # allocated addresses; only known for ourselves


@dataclass(frozen=True)
class RingEntryStatus:
    """One entry of the ring as the report lists it (Weave's ``IPAM.Entries[]``)."""

    token: str  # first address, "10.32.0.0"
    size: int  # addresses up to the next token
    peer: str
    nickname: str
    is_known_peer: bool  # ourself or reachable now
    version: int


@dataclass(frozen=True)
class IpamStatistics:
    """The IPAM section of status, report and metrics."""

    status: str
    range: str
    default_subnet: str
    max_ips: int
    ips: Mapping[str, int]  # weave_ips{state}: "local-used", "local-free"
    shares: tuple[PeerShare, ...]
    unreachable_peers: int
    pending_allocates: int
    pending_claims: int
    quorum: int | None  # while awaiting consensus
    known: int | None
    counters: Mapping[str, int]
    entries: tuple[RingEntryStatus, ...] = ()  # the ring, by token (empty: no ring yet)
    pending_allocate_list: tuple[str, ...] = ()  # "IDENT SUBNET" of each waiting allocate
    pending_claim_list: tuple[tuple[str, str], ...] = ()  # (ident, CIDR) of each claim
    suspects: tuple[PeerName, ...] = ()  # donors that gave one range to two peers
