"""weaveDNS's entries: a gossiped, last-writer-by-version CRDT of (name, address) records.

Sans-IO: every method takes ``now`` (Unix seconds, an int as Weave's) where time matters.

An :class:`Entry` is identified by its *key* ``(hostname, origin, container_id, address)``
(the hostname as registered, a fully qualified name with the trailing dot); the rest is
state: ``version`` and ``tombstone`` (0: live, else the Unix time it was removed).

Rules (Weave's ``nameserver/``):

1. **merge by version**: for one key the higher version wins; at equal versions the later
   tombstone wins (so merge is commutative, associative and idempotent).
2. **only the origin writes**: :meth:`Entries.add` and :meth:`Entries.tombstone` touch only
   our own entries. When gossip carries an entry claiming to be ours that disagrees with
   ours (a stale add after our removal, a forged tombstone, our entries from before a
   restart), we answer with our state at a version above the incoming one: the origin's
   word always ends up winning everywhere (:meth:`Entries.receive` returns those
   overrides to broadcast).
3. **tombstones expire** :data:`TOMBSTONE_TIMEOUT` (30 min) after they were set
   (:meth:`Entries.expire`): long enough for gossip to carry them everywhere, and twice
   the clock skew gossip accepts.
4. **clock skew**: gossip whose timestamp is more than :data:`GOSSIP_WINDOW` (15 min) from
   our clock is refused with Weave's message (``host clock skew of 1000s exceeds 900s
   limit``); the driver treats that as the sending peer's fault.
5. **versions are bounded** (issue 9's rule: versions near their limit are refused, never
   bumped past). An incoming entry at or above :data:`VERSION_CEILING` (``2**62 - 2**32``),
   or more than :data:`VERSION_STEP` (``2**32``) above the version we hold for its key (0
   for a key we do not know), is refused: skipped and counted (:attr:`Entries.refused`),
   the connection stays (an honest relay may pass one on). So whatever a liar forges for
   an origin, that origin can restate its own above it, below the ceiling; a liar would
   need ``2**30`` rounds of gossip to walk a key up to it. (A forged entry at the decode
   limit, ``2**63 - 1``, used to make the origin restate at ``2**63``, which no peer
   decodes: every neighbour then dropped the origin's gossip, and its connection, for
   good.)
6. **a peer that leaves the mesh** (unreachable) has its entries *hidden*, not deleted:
   :meth:`Entries.lookup`, :meth:`Entries.reverse` and :meth:`Entries.visible` take the set
   of reachable peers, so the entries come back as soon as it does. (Weave deletes them
   and relies on the peer gossiping them again.)

Wire (channel ``"dns"``): one CBOR map per payload ``{"t": timestamp, "e": [[hostname,
origin, container_id, address(4 bytes), version, tombstone], ...]}``, at most
:data:`ENTRIES_PER_PAYLOAD` entries each; :func:`decode_gossip_untrusted` raises only
:class:`~router.errors.DecodeError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

from router.errors import DecodeError, RemoteProtocolError
from router.mesh.names import NAME_BITS, PeerName
from router.wire import cbor

TOMBSTONE_TIMEOUT = 30 * 60  # seconds a tombstone is kept
GOSSIP_WINDOW = TOMBSTONE_TIMEOUT // 2  # seconds of clock skew gossip may show
ENTRIES_PER_PAYLOAD = 2000  # entries per gossip payload (~130 KB)
MAX_HOSTNAME = 255  # characters
MAX_CONTAINER_ID = 255  # characters
MAX_ENTRIES = 200_000  # entries kept; new ones from gossip beyond it are refused (counted)
VERSION_STEP = 1 << 32  # the most an incoming version may be above the one we hold
VERSION_CEILING = (1 << 62) - VERSION_STEP  # incoming versions at or above it are refused

Key = tuple[str, PeerName, str, ipaddress.IPv4Address]


@dataclass(frozen=True, slots=True)
class Entry:
    """One record: ``hostname`` -> ``address``, registered by ``origin`` for a container."""

    hostname: str  # fully qualified, trailing dot, case as given
    origin: PeerName
    container_id: str
    address: ipaddress.IPv4Address
    version: int = 0
    tombstone: int = 0  # 0: live; else Unix seconds when it was removed

    @property
    def key(self) -> Key:
        return (self.hostname, self.origin, self.container_id, self.address)

    @property
    def live(self) -> bool:
        return self.tombstone == 0

    def beats(self, other: Entry) -> bool:
        """Whether this state of one key wins over ``other``'s in a merge."""
        return (self.version, self.tombstone) > (other.version, other.tombstone)


def fqdn(name: str) -> str:
    """``name`` with exactly one trailing dot."""
    return name.rstrip(".") + "."


class Entries:
    """The entries one peer knows: ours (origin ``ourself``) and everyone else's."""

    def __init__(self, ourself: PeerName) -> None:
        self.ourself = ourself
        self._by_key: dict[Key, Entry] = {}
        self._by_name: dict[str, dict[Key, Entry]] = {}  # lowercased hostname -> entries
        self._by_address: dict[ipaddress.IPv4Address, dict[Key, Entry]] = {}
        self._ours: dict[Key, Entry] = {}  # our live entries
        self.generation = 0  # bumped by every change: answers cached before it are stale
        self.refused = 0  # incoming entries refused: their version (rule 5), or no room

    def __len__(self) -> int:
        return len(self._by_key)

    # -- our own writes -----------------------------------------------------------------

    def add(self, hostname: str, container_id: str, address: ipaddress.IPv4Address
            ) -> Entry | None:
        """Register ``hostname`` -> ``address`` for ``container_id``; the changed entry
        to gossip, or None if it was already live."""
        key = (fqdn(hostname), self.ourself, container_id, address)
        old = self._by_key.get(key)
        if old is not None and old.live:
            return None
        entry = Entry(*key) if old is None else replace(old, version=old.version + 1,
                                                        tombstone=0)
        self._put(entry)
        return entry

    def tombstone(self, now: int, *, hostname: str | None = None,
                  container_id: str | None = None,
                  address: ipaddress.IPv4Address | None = None) -> list[Entry]:
        """Remove our live entries matching every given field (None: any); the
        tombstoned entries, to gossip. The hostname matches case-insensitively."""
        wanted = None if hostname is None else fqdn(hostname).lower()
        changed = []
        for entry in list(self._ours.values()):
            if (entry.origin != self.ourself or not entry.live
                    or (wanted is not None and entry.hostname.lower() != wanted)
                    or (container_id is not None and entry.container_id != container_id)
                    or (address is not None and entry.address != address)):
                continue
            dead = replace(entry, version=entry.version + 1, tombstone=max(now, 1))
            self._put(dead)
            changed.append(dead)
        return changed

    def expire(self, now: int) -> int:
        """Drop tombstones older than :data:`TOMBSTONE_TIMEOUT`; how many were dropped."""
        old = [e for e in self._by_key.values()
               if not e.live and now - e.tombstone > TOMBSTONE_TIMEOUT]
        for entry in old:
            self._drop(entry.key)
        return len(old)

    # -- gossip -------------------------------------------------------------------------

    def merge(self, incoming: Iterable[Entry]) -> list[Entry]:
        """Merge entries (no origin rule: for our own periodic state); what was new."""
        new = []
        for entry in incoming:
            old = self._by_key.get(entry.key)
            if old is None or entry.beats(old):
                self._put(entry)
                new.append(entry)
        return new

    def receive(self, timestamp: int, incoming: Collection[Entry], now: int
                ) -> tuple[list[Entry], list[Entry]]:
        """A peer's gossip: ``(new, overrides)``: what was new to us (to relay), and our
        own entries restated above the incoming version (to broadcast).

        RemoteProtocolError for clock skew beyond :data:`GOSSIP_WINDOW`. Entries refused
        for their version (rule 5) or because :data:`MAX_ENTRIES` are held are skipped and
        counted (:attr:`refused`): the gossip may be an honest peer's relay, so the
        connection stays."""
        delta = timestamp - now
        if abs(delta) > GOSSIP_WINDOW:
            raise RemoteProtocolError(
                f"host clock skew of {delta}s exceeds {GOSSIP_WINDOW}s limit")
        accepted: list[Entry] = []
        overrides: list[Entry] = []
        room = MAX_ENTRIES - len(self._by_key)
        for entry in incoming:
            held = self._by_key.get(entry.key)
            if entry.version >= VERSION_CEILING or entry.version > (
                    held.version if held is not None else 0) + VERSION_STEP or (
                    held is None and room <= 0):
                self.refused += 1
                continue
            if held is None:
                room -= 1
            if entry.origin != self.ourself:
                accepted.append(entry)
                continue
            if entry.version + 1 >= VERSION_CEILING:  # we could not restate ours above it
                self.refused += 1
                continue
            if held is None:  # we never made it (or forgot it at a restart): it is dead
                if entry.live:
                    entry = replace(entry, version=entry.version + 1, tombstone=max(now, 1))
                    overrides.append(entry)
                accepted.append(entry)
            elif entry.version > held.version or (
                    entry.version == held.version and entry.tombstone != held.tombstone):
                restated = replace(held, version=entry.version + 1)
                overrides.append(restated)
                accepted.append(restated)
        return self.merge(accepted), overrides

    def all(self) -> list[Entry]:
        """Every entry (tombstones included), sorted: our complete state for gossip."""
        return sorted(self._by_key.values(), key=_order)

    # -- queries --------------------------------------------------------------------------

    def lookup(self, hostname: str, visible: Callable[[PeerName], bool]
               ) -> list[ipaddress.IPv4Address]:
        """Live addresses of ``hostname`` (any case) from peers ``visible`` says are
        reachable (ours always), each once, in a stable order."""
        found = self._by_name.get(fqdn(hostname).lower())
        if not found:
            return []
        out = {e.address: None for e in sorted(found.values(), key=_order)
               if e.live and (e.origin == self.ourself or visible(e.origin))}
        return list(out)

    def has_name(self, hostname: str, visible: Callable[[PeerName], bool]) -> bool:
        """Whether ``hostname`` has any live, visible entry."""
        return bool(self.lookup(hostname, visible))

    def reverse(self, address: ipaddress.IPv4Address, visible: Callable[[PeerName], bool]
                ) -> str | None:
        """The first (sorted) live, visible hostname of ``address``; None if none."""
        found = self._by_address.get(address)
        if not found:
            return None
        for entry in sorted(found.values(), key=_order):
            if entry.live and (entry.origin == self.ourself or visible(entry.origin)):
                return entry.hostname
        return None

    def visible(self, visible: Callable[[PeerName], bool]) -> list[Entry]:
        """Live entries of reachable peers (and ours), sorted: ``status dns``."""
        return [e for e in self.all()
                if e.live and (e.origin == self.ourself or visible(e.origin))]

    def ours(self) -> list[Entry]:
        """Our live entries (in no particular order)."""
        return list(self._ours.values())

    def count_ours(self) -> int:
        return len(self._ours)

    # -- indexes --------------------------------------------------------------------------

    def _put(self, entry: Entry) -> None:
        self.generation += 1
        self._by_key[entry.key] = entry
        if entry.origin == self.ourself and entry.live:
            self._ours[entry.key] = entry
        else:
            self._ours.pop(entry.key, None)
        self._by_name.setdefault(entry.hostname.lower(), {})[entry.key] = entry
        self._by_address.setdefault(entry.address, {})[entry.key] = entry

    def _drop(self, key: Key) -> None:
        self.generation += 1
        entry = self._by_key.pop(key)
        self._ours.pop(key, None)
        for index, at in ((self._by_name, entry.hostname.lower()),
                          (self._by_address, entry.address)):
            bucket = index[at]  # type: ignore[index]
            del bucket[key]
            if not bucket:
                del index[at]  # type: ignore[arg-type]


def _order(entry: Entry) -> tuple[str, int, str, int]:
    return (entry.hostname.lower(), int(entry.origin), entry.container_id,
            int(entry.address))


# -- wire ---------------------------------------------------------------------------------


def encode_gossip(timestamp: int, entries: Collection[Entry]) -> list[bytes]:
    """The payloads carrying ``entries`` (none if there are none)."""
    rows = [[e.hostname, int(e.origin), e.container_id, e.address.packed, e.version,
             e.tombstone] for e in entries]
    return [cbor.encode({"t": timestamp, "e": rows[i:i + ENTRIES_PER_PAYLOAD]})
            for i in range(0, len(rows), ENTRIES_PER_PAYLOAD)]


def decode_gossip_untrusted(payload: bytes) -> tuple[int, list[Entry]]:
    """``(timestamp, entries)`` of one payload; DecodeError for anything malformed."""
    value = cbor.decode_untrusted(payload, max_depth=3)
    if not isinstance(value, dict) or set(value) != {"t", "e"}:
        raise DecodeError("DNS gossip: not a map of t and e")
    timestamp, rows = value["t"], value["e"]
    if type(timestamp) is not int or not isinstance(rows, list):
        raise DecodeError("DNS gossip: bad timestamp or entry list")
    if len(rows) > ENTRIES_PER_PAYLOAD:
        raise DecodeError(f"DNS gossip: {len(rows)} entries in one payload")
    return timestamp, [_entry(row) for row in rows]


def _entry(row: object) -> Entry:
    if not isinstance(row, list) or len(row) != 6:
        raise DecodeError("DNS gossip: an entry is not a list of 6")
    hostname, origin, container, address, version, tombstone = row
    if not (isinstance(hostname, str) and 1 < len(hostname) <= MAX_HOSTNAME
            and hostname.endswith(".") and isinstance(container, str)
            and len(container) <= MAX_CONTAINER_ID and isinstance(address, bytes)
            and len(address) == 4 and type(origin) is int and 0 <= origin < 1 << NAME_BITS
            and type(version) is int and 0 <= version < 1 << 63
            and type(tombstone) is int and 0 <= tombstone < 1 << 63):
        raise DecodeError(f"DNS gossip: malformed entry {row!r:.200}")
    return Entry(hostname, PeerName(origin), container, ipaddress.IPv4Address(address),
                 version, tombstone)


@dataclass(frozen=True)
class DnsGossip:
    """The GossipData of channel ``"dns"``: entries, merged per key; encoded on send."""

    timestamp: int
    entries: tuple[Entry, ...]

    def encode(self) -> list[bytes]:
        return encode_gossip(self.timestamp, self.entries)

    def merge(self, other: object) -> DnsGossip:
        assert isinstance(other, DnsGossip)
        by_key = {e.key: e for e in self.entries}
        for entry in other.entries:
            old = by_key.get(entry.key)
            if old is None or entry.beats(old):
                by_key[entry.key] = entry
        return DnsGossip(max(self.timestamp, other.timestamp), tuple(by_key.values()))
