"""The peers IPAM knows by name: their nicknames and which are reachable (sans-IO).

Nicknames come from the topology (``set_peers``) and from the ``nicks`` of gossiped
state; they make Weave's messages (``address A is owned by other peer NAME (nick)``,
the seed lists of a ring conflict), ``status ipam`` and ``rmpeer NICKNAME`` work.
At most :data:`~router.ipam.payloads.MAX_NICKNAMES` are kept; a name neither in the
ring nor reachable is forgotten whenever the ring or the reachable set changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from ipaddress import IPv4Address

from router.errors import ConfigError
from router.ipam import IpamError, NotFoundError
from router.ipam.payloads import MAX_NICKNAMES
from router.ipam.ring import Ring
from router.mesh.names import PeerName


class PeerBook:
    """Nicknames (bounded) and the set of peers reachable now (never ourself)."""

    def __init__(self, ourself: PeerName, nickname: str) -> None:
        self.ourself = ourself
        self._nicknames: dict[PeerName, str] = {ourself: nickname}
        self.reachable: frozenset[PeerName] = frozenset()

    def learn(self, name: PeerName, nickname: str) -> None:
        """Note a peer's nickname (ignored for ourself and once the book is full)."""
        if name != self.ourself and len(self._nicknames) < MAX_NICKNAMES:
            self._nicknames[name] = nickname

    def set_reachable(self, reachable: frozenset[PeerName]) -> bool:
        """The peers we can reach now; True if that changed."""
        if reachable == self.reachable:
            return False
        self.reachable = reachable
        return True

    def prune(self, ring_peers: Set[PeerName]) -> None:
        """Forget the nicknames of peers neither in the ring nor reachable."""
        keep = ring_peers | self.reachable | {self.ourself}
        for name in [n for n in self._nicknames if n not in keep]:
            del self._nicknames[name]

    def nickname(self, name: PeerName) -> str:
        """The peer's nickname ("" if unknown)."""
        return self._nicknames.get(name, "")

    def nicknames(self) -> list[tuple[PeerName, str]]:
        """Every (name, nickname) known, ourself included, sorted (for our state)."""
        return sorted(self._nicknames.items())

    def resolve(self, text: str, ring_peers: Set[PeerName]) -> PeerName:
        """The peer ``rmpeer`` means by ``text`` (a nickname or a name).

        IpamError for a nickname two peers share, NotFoundError for a peer neither the
        ring nor the mesh knows.
        """
        by_nick = sorted(n for n, nick in self._nicknames.items() if nick == text)
        if len(by_nick) > 1:
            raise IpamError(f"rmpeer: nickname {text!r} is ambiguous; give the peer name")
        if by_nick:
            return by_nick[0]
        try:
            name: PeerName | None = PeerName.parse(text)
        except ConfigError:
            name = None
        known = ring_peers | self.reachable | {self.ourself}
        if name is None or name not in known:
            raise NotFoundError(f"rmpeer: unknown peer {text!r}")
        return name

    def pick_heir(self, ring: Ring) -> PeerName | None:
        """Who gets our space on ``reset``: a reachable peer of the ring, else any
        reachable peer, else any peer of the ring, else any peer we know (None: nobody)."""
        reachable = ring.pick_peer_for_transfer(lambda p: p in self.reachable)
        if reachable is not None:
            return reachable
        others = sorted(p for p in self._nicknames if p != self.ourself)
        for peer in others:
            if peer in self.reachable:
                return peer
        any_ring = ring.pick_peer_for_transfer(lambda p: True)
        return any_ring if any_ring is not None else (others[0] if others else None)

    def names(self, names: Iterable[PeerName]) -> str:
        """``[NAME(nick) NAME ...]``, as Weave lists seeds."""
        return "[" + " ".join(self.describe(n) for n in names) + "]"

    def describe(self, name: PeerName) -> str:
        """``NAME(nick)``, or ``NAME`` without a nickname."""
        nick = self._nicknames.get(name)
        return f"{name}({nick})" if nick else str(name)

    def owned_by_other(self, ip: IPv4Address, owner: PeerName) -> str:
        """Weave's message for a claim of an address another peer owns."""
        nick = self._nicknames.get(owner)
        suffix = f" ({nick})" if nick else ""
        return f"address {ip} is owned by other peer {owner}{suffix}"
