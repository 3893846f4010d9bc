"""The mesh as this peer knows it: one entry per peer, merged from gossip.

Each peer owns its entry (name, nickname, uid, short id, version and the connections it
reports) and bumps the version on every change; everyone else only stores and forwards
it. Merging keeps, per name, the entry with the greatest key
``(version, uid, short_id, nickname, connections)``: a total order, so merging is
commutative, associative and idempotent, and any set of updates applied in any order
converges to the same state.

Restarts. A restarted peer keeps its name but has a new uid and starts again at version
1, so its old incarnation (higher version) first wins the merge elsewhere. Two rules end
that quickly (as Weave's mesh does):

* A record *about ourself* that is not exactly our entry and not older (a stale
  incarnation, or a forged or future version) makes us bump our version above it, so our
  own truth wins everywhere once flooded.
* :meth:`Topology.note_direct_peer` (called after a handshake) adopts a neighbour's new
  uid at once, and returns the superseded record so the driver can hand it to that
  neighbour, which then bumps (rule one) without waiting for gossip.

Lies. Records are not signed (peers share one password, not identities), so a peer
cannot prove a record about someone else is genuine. Two rules keep a forged record
from partitioning anyone, and make the owner's own word win in the end:

* *Never near the limit.* A record at or above :data:`VERSION_CEILING` (``MAX_VERSION -
  MAX_VERSION_STEP``) is refused (counted in ``records_refused``, the connection stays:
  an honest relay may pass one on), so nobody, the owner included, adopts or bumps to a
  version that others would refuse to decode.
* *Bounded steps.* A record more than :data:`MAX_VERSION_STEP` above the version we hold
  for that peer (0 for a peer we do not know) is refused the same way. Any lie that a
  peer does accept is therefore within one step of what the owner holds (the owner's
  version is never below anyone's copy of it), so when the gossip reaches the owner it
  can bump above the lie (rule one of restarts, below) and its truth wins everywhere. A
  liar needs 2**30 rounds to walk a version up to the ceiling.

Unreachable peers are garbage collected by :meth:`Topology.garbage_collect` (reachability
over symmetric connections in any state; our direct neighbours are always kept).
Short-id collisions: the lowest name keeps a contested short id; when that is not us we
pick a free one and bump our version.

Payloads (layout, limits, codec): :mod:`router.mesh.topology_codec`.
:class:`TopologyGossiper` carries all this on gossip channel ``"topology"``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import SHORT_ID_BITS, UID_BITS, PeerName
from router.mesh.routes import reachable
from router.mesh.topology_codec import CHUNK_BUDGET as CHUNK_BUDGET
from router.mesh.topology_codec import (
    KIND_REQUEST,
    KIND_UPDATE,
    DigestKind,
    DigestMessage,
    decode_message,
    encode_digest,
    encode_payload,
    encode_summary,
    encode_want,
    raw_record,
    record_hash,
    summary_hash,
)
from router.mesh.topology_codec import MAX_ADDRESS as MAX_ADDRESS
from router.mesh.topology_codec import MAX_CONNECTIONS as MAX_CONNECTIONS
from router.mesh.topology_codec import MAX_NICKNAME as MAX_NICKNAME
from router.mesh.topology_codec import MAX_PAYLOAD as MAX_PAYLOAD
from router.mesh.topology_codec import MAX_PEERS as MAX_PEERS
from router.mesh.topology_codec import MAX_VERSION as MAX_VERSION
from router.mesh.topology_codec import ConnectionSummary as ConnectionSummary
from router.mesh.topology_codec import PeerEntry as PeerEntry
from router.status import PeerConnection, PeerStatus

MAX_VERSION_STEP = 1 << 32  # a record may move a version up this much at once, at most
MAX_DISCOVERED = 1024  # discovery addresses, in all
MAX_ADDRESSES_PER_PEER = 4  # discovery addresses of one peer
VERSION_CEILING = MAX_VERSION - MAX_VERSION_STEP  # records at or above are refused
_RECORD_BOUND = 32 + 4 * MAX_NICKNAME  # bytes: a record without connections, at most
_CONN_BOUND = 16 + 4 * MAX_ADDRESS  # bytes: one connection, at most
TOPOLOGY_CHANNEL = "topology"


LocalConnection = ConnectionSummary  # what the driver calls the entries of our own list


@dataclass(frozen=True)
class UpdateResult:
    """What :meth:`Topology.apply_update_untrusted` learnt.

    ``delta`` encodes the ``added`` and ``updated`` entries for forwarding (None when
    nothing changed). ``unknown`` are peers that the connections of those new entries
    refer to and that we still do not know (the update did not carry them): ask
    ``sender`` for the full topology. Only changed entries count, so an answer that
    teaches nothing never triggers another request. ``wants_full``: the sender asked
    us for everything.
    """

    sender: PeerName
    wants_full: bool
    added: frozenset[PeerName]
    updated: frozenset[PeerName]
    unknown: frozenset[PeerName]
    delta: bytes | None

    @property
    def changed(self) -> frozenset[PeerName]:
        """Added or updated peers."""
        return self.added | self.updated


@dataclass(frozen=True)
class TopologyStatistics:
    """Counters and sizes of the topology, for status and metrics."""

    peers: int
    established_connections: int  # reported by all peers, each direction counted
    version: int  # our own entry's version
    updates_applied: int
    records_stale: int  # records that lost the merge (already known or older)
    records_dropped: int  # new peers refused because MAX_PEERS was reached
    full_requests: int
    peers_removed: int  # by garbage collection
    records_refused: int = 0  # versions near the limit or too far ahead (see the module doc)
    digests_received: int = 0  # summaries and digests (protocol version 2)
    summaries_matched: int = 0  # summaries equal to ours: nothing to exchange
    records_wanted: int = 0  # records asked for by name after comparing a digest


class Topology:
    """This peer's view of the mesh (sans-IO; see the module docstring)."""

    def __init__(
        self,
        ourself: PeerName,
        nickname: str,
        uid: int,
        short_id: int,
        *,
        rng: random.Random | None = None,
        max_peers: int = MAX_PEERS,
    ) -> None:
        _check_local(nickname, uid, short_id)
        self._ourself = ourself
        self._rng = rng if rng is not None else random.Random()
        self._max_peers = max_peers
        self._entries: dict[PeerName, PeerEntry] = {
            ourself: PeerEntry(ourself, nickname, uid, short_id, 1)
        }
        self._generation = 0
        self._applied = self._stale = self._dropped = self._requests = self._removed = 0
        self._refused = 0
        # the raw form of the record we hold per peer, built once per record (not once per
        # copy of it received): checked by identity, so no entry is ever hashed for it
        self._held_raw: dict[PeerName, tuple[PeerEntry, list[Any]]] = {}
        self._held_hash: dict[PeerName, tuple[PeerEntry, int]] = {}  # the same for hashes
        self._summary: tuple[int, tuple[int, bytes]] | None = None  # (generation, summary)
        self._digests = self._matched = self._wanted = 0

    @property
    def ourself(self) -> PeerName:
        """Our peer name."""
        return self._ourself

    @property
    def generation(self) -> int:
        """Increases on every change of any entry; recompute routes when it moves."""
        return self._generation

    def local_entry(self) -> PeerEntry:
        """Our own entry."""
        return self._entries[self._ourself]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def peers(self) -> Mapping[PeerName, PeerEntry]:
        """A read-only snapshot of every known peer, ourself included."""
        return MappingProxyType(dict(self._entries))

    def peer_by_short_id(self, short_id: int) -> PeerName | None:
        """The peer holding ``short_id`` (the lowest name wins a collision)."""
        holders = [n for n, e in self._entries.items() if e.short_id == short_id]
        return min(holders) if holders else None

    # -- local changes --------------------------------------------------------------------

    def set_local_connections(self, conns: Iterable[ConnectionSummary]) -> bytes | None:
        """Replace our connection list; the encoded update to send, or None if unchanged."""
        ordered = tuple(sorted(conns))
        if len(ordered) > MAX_CONNECTIONS:
            raise LocalProtocolError(f"more than {MAX_CONNECTIONS} connections")
        remotes = [c.remote_name for c in ordered]
        if len(set(remotes)) != len(remotes) or self._ourself in remotes:
            raise LocalProtocolError("duplicate connection, or a connection to ourself")
        mine = self._entries[self._ourself]
        if ordered == mine.connections:
            return None
        self._store_own(dataclasses.replace(mine, version=mine.version + 1, connections=ordered))
        return self.encode_update([self._ourself])

    def note_direct_peer(
        self, name: PeerName, nickname: str, uid: int, short_id: int
    ) -> bytes | None:
        """Adopt what a handshake told us about a neighbour.

        A new or restarted neighbour (unknown, or known with another uid) gets an entry
        with version 0 and no connections, replaced by its first real record. Returns an
        update holding the superseded old-incarnation record, to hand to that neighbour
        so it bumps its version above it; None if nothing was superseded.
        """
        _check_local(nickname, uid, short_id)
        if name == self._ourself:
            raise LocalProtocolError("a handshake with ourself")
        old = self._entries.get(name)
        if old is not None and old.uid == uid:
            return None
        if old is None and len(self._entries) >= self._max_peers:
            self._dropped += 1
            return None
        self._entries[name] = PeerEntry(name, nickname, uid, short_id, 0)
        self._generation += 1
        self._resolve_short_id()
        if old is None or old.version == 0:  # nothing, or only another handshake's word
            return None
        return encode_payload(self._ourself, KIND_UPDATE, [old])

    def garbage_collect(self) -> set[PeerName]:
        """Drop peers unreachable from us over symmetric connections; returns their names.

        Our direct neighbours (the peers in our own connection list) are always kept.
        """
        keep = reachable(self._ourself, self._entries) | {
            c.remote_name for c in self._entries[self._ourself].connections
        }
        removed = {name for name in self._entries if name not in keep}
        for name in removed:
            del self._entries[name]
            self._held_raw.pop(name, None)
            self._held_hash.pop(name, None)
        if removed:
            self._removed += len(removed)
            self._generation += 1
            self._resolve_short_id()
        return removed

    def discovery_addresses(self, port: int) -> dict[str, PeerName]:
        """Addresses of peers that others are connected to: ``"ip:port" -> peer name``.

        For peer discovery (as Weave does): an outbound connection's address is the
        target its owner dialled; for an inbound one only the host is useful, with
        ``port`` (ours, the mesh port) instead of the remote's ephemeral port.
        Connections to ourself are skipped. The strings come from gossip: untrusted, so
        only IP literals are taken (a host name would make us look it up), at most
        :data:`MAX_ADDRESSES_PER_PEER` per peer and :data:`MAX_DISCOVERED` in all; the
        peers reporting the fewest connections are heard first, so one record claiming
        thousands of connections cannot crowd out the rest.
        """
        found: dict[str, PeerName] = {}
        per_peer: dict[PeerName, int] = {}
        for name in sorted(self._entries, key=lambda n: (len(self._entries[n].connections), n)):
            if name == self._ourself:
                continue
            for conn in self._entries[name].connections:
                remote = conn.remote_name
                if remote == self._ourself or per_peer.get(remote, 0) >= MAX_ADDRESSES_PER_PEER:
                    continue
                addr = _discovery_address(conn, port)
                if addr is None or addr in found:
                    continue
                found[addr] = remote
                per_peer[remote] = per_peer.get(remote, 0) + 1
                if len(found) >= MAX_DISCOVERED:
                    return found
        return found

    # -- encoding ---------------------------------------------------------------------------

    def encode_full(self) -> bytes:
        """Every entry we know, as one "update" payload (see :meth:`encode_chunks`)."""
        return encode_payload(self._ourself, KIND_UPDATE, self._entries.values())

    def encode_update(self, names: Iterable[PeerName]) -> bytes:
        """An "update" payload with the current entries of ``names`` (unknown ones skipped)."""
        entries = [self._entries[n] for n in sorted(set(names)) if n in self._entries]
        return encode_payload(self._ourself, KIND_UPDATE, entries)

    def encode_chunks(self, names: Iterable[PeerName] | None = None) -> list[bytes]:
        """The entries of ``names`` (default: all) as "update" payloads that each fit a frame.

        Records are grouped by a worst-case size estimate so that no payload exceeds
        :data:`CHUNK_BUDGET`; a small topology is one payload.
        """
        wanted = self._entries if names is None else set(names)
        chunks: list[bytes] = []
        group: list[PeerEntry] = []
        size = 0
        for name in sorted(n for n in wanted if n in self._entries):
            entry = self._entries[name]
            cost = _RECORD_BOUND + _CONN_BOUND * len(entry.connections)
            if group and size + cost > CHUNK_BUDGET:
                chunks.append(encode_payload(self._ourself, KIND_UPDATE, group))
                group, size = [], 0
            group.append(entry)
            size += cost
        if group:
            chunks.append(encode_payload(self._ourself, KIND_UPDATE, group))
        return chunks

    def encode_request_full(self) -> bytes:
        """A "request-full" payload: please send me everything you know."""
        return encode_payload(self._ourself, KIND_REQUEST, ())

    # -- digests (protocol version 2) -------------------------------------------------------

    def digest_entries(self) -> list[tuple[PeerName, int, int]]:
        """``(name, version, record hash)`` of every entry we hold, sorted by name."""
        return sorted((n, e.version, self._hash_of(e)) for n, e in self._entries.items())

    def summary(self) -> tuple[int, bytes]:
        """How many entries we hold and the summary hash over them (cached until the next
        change: periodic gossip asks for it every round)."""
        if self._summary is None or self._summary[0] != self._generation:
            digest = self.digest_entries()
            self._summary = (self._generation, (len(digest), summary_hash(digest)))
        return self._summary[1]

    def encode_summary(self) -> bytes:
        """A "summary" payload: O(1) bytes, whatever the size of the mesh."""
        count, hash_ = self.summary()
        return encode_summary(self._ourself, count, hash_)

    def encode_digest(self, *, push: bool) -> bytes:
        """A "digest" payload: name -> (version, record hash) of every entry we hold."""
        return encode_digest(self._ourself, self.digest_entries(), push=push)

    def encode_want(self, names: Iterable[PeerName]) -> bytes:
        """A "want" payload: send me the records of ``names``."""
        return encode_want(self._ourself, names)

    def summary_matches(self, count: int, hash_: bytes) -> bool:
        """Whether a peer's summary equals ours (counted)."""
        self._digests += 1
        same = (count, hash_) == self.summary()
        self._matched += same
        return same

    def compare_digest(
        self, digest: DigestMessage
    ) -> tuple[frozenset[PeerName], frozenset[PeerName]]:
        """``(wanted, newer_here)``: the names whose record in ``digest`` could change what we
        hold (a higher version, or the same version with another hash: the merge decides),
        and the names whose record the sender lacks or holds older or different.

        Records the merge would refuse anyway (near the limit, or too far ahead of what we
        hold) are not wanted, so a forged digest cannot make us ask for them every round.
        """
        self._digests += 1
        wanted: set[PeerName] = set()
        for name, (version, rhash) in digest.entries.items():
            old = self._entries.get(name)
            held = old.version if old is not None else 0
            if version >= VERSION_CEILING or version > held + MAX_VERSION_STEP:
                continue
            if old is None or version > held or (version == held
                                                  and rhash != self._hash_of(old)):
                wanted.add(name)
        newer: set[PeerName] = set()
        for name, entry in self._entries.items():
            theirs = digest.entries.get(name)
            if theirs is None or theirs[0] < entry.version or (
                    theirs[0] == entry.version and theirs[1] != self._hash_of(entry)):
                newer.add(name)
        self._wanted += len(wanted)
        return frozenset(wanted), frozenset(newer)

    def _hash_of(self, entry: PeerEntry) -> int:
        held = self._held_hash.get(entry.name)
        if held is None or held[0] is not entry:
            held = self._held_hash[entry.name] = (entry, record_hash(self._raw_of(entry)))
        return held[1]

    # -- merging ----------------------------------------------------------------------------

    def apply_update_untrusted(self, payload: bytes) -> UpdateResult:
        """Decode (DecodeError on anything malformed, a digest kind included) and merge an
        update or a request."""
        result = self.receive_untrusted(payload)
        if not isinstance(result, UpdateResult):
            raise DecodeError(f"topology payload: {type(result).__name__} where an update "
                              "was due")
        return result

    def receive_untrusted(self, payload: bytes) -> UpdateResult | DigestKind:
        """Decode (DecodeError on anything malformed) and merge an update or a request; a
        digest kind's message is returned as it is (the gossiper answers it)."""
        message = decode_message(payload, self._stale_key)
        if not isinstance(message, tuple):
            return message
        sender, kind, records = message
        if kind == KIND_REQUEST:
            self._requests += 1
            empty: frozenset[PeerName] = frozenset()
            return UpdateResult(sender, True, empty, empty, empty, None)
        added: set[PeerName] = set()
        updated: set[PeerName] = set()
        for record in records:
            if record is None:  # stale or refused (counted): its connections were not decoded
                continue
            if record.name == self._ourself:
                if self._answer_record_about_us(record):
                    updated.add(self._ourself)
                continue
            old = self._entries.get(record.name)
            if old is None and len(self._entries) >= self._max_peers:
                self._dropped += 1
            elif old is None:
                self._entries[record.name] = record
                added.add(record.name)
            elif record.key() > old.key():
                self._entries[record.name] = record
                updated.add(record.name)
            else:
                self._stale += 1
        self._applied += 1
        if added or updated:
            self._generation += 1
            if self._resolve_short_id():
                updated.add(self._ourself)
        changed = added | updated
        referenced = {c.remote_name for n in changed for c in self._entries[n].connections}
        unknown = frozenset(n for n in referenced if n not in self._entries)
        delta = self.encode_update(changed) if changed else None
        return UpdateResult(
            sender, False, frozenset(added), frozenset(updated), unknown, delta
        )

    def _stale_key(self, name: PeerName, version: int, uid: int, raw: Any) -> bool:
        """Whether a received record must not change the one we hold (counted).

        Refused: a version near the limit, or one more than :data:`MAX_VERSION_STEP`
        above the version we hold (0 for a peer we do not know). Stale: a lower
        (version, uid) loses the merge whatever it holds; an equal one that is the very
        record we hold changes nothing. All decided without decoding the connections.
        """
        old = self._entries.get(name)
        held = old.version if old is not None else 0
        if version >= VERSION_CEILING or version > held + MAX_VERSION_STEP:
            self._refused += 1
            return True
        if old is None:
            return False
        mine = (old.version, old.uid)
        if (version, uid) < mine or ((version, uid) == mine and raw == self._raw_of(old)):
            self._stale += 1
            return True
        return False

    def _raw_of(self, entry: PeerEntry) -> list[Any]:
        held = self._held_raw.get(entry.name)
        if held is None or held[0] is not entry:
            held = self._held_raw[entry.name] = (entry, raw_record(entry))
        return held[1]

    def _answer_record_about_us(self, record: PeerEntry) -> bool:
        """A record naming us that is not ours and not older: bump above it. True if bumped."""
        mine = self._entries[self._ourself]
        if record == mine or record.key() < mine.key():
            self._stale += 1
            return False
        self._store_own(dataclasses.replace(mine, version=record.version + 1))
        return True

    def _store_own(self, entry: PeerEntry) -> None:
        self._entries[self._ourself] = entry
        self._generation += 1

    def _resolve_short_id(self) -> bool:
        """If a lower-named peer holds our short id, move to a free one. True if moved."""
        mine = self._entries[self._ourself]
        if self.peer_by_short_id(mine.short_id) == self._ourself:
            return False
        used = {e.short_id for e in self._entries.values()}
        free = [i for i in range(1 << SHORT_ID_BITS) if i not in used]
        if not free:
            return False  # all taken: keep ours; retried after the next change
        new_id = free[self._rng.randrange(len(free))]
        self._store_own(dataclasses.replace(mine, version=mine.version + 1, short_id=new_id))
        return True

    # -- observability ----------------------------------------------------------------------

    def statistics(self) -> TopologyStatistics:
        """Frozen counters and sizes."""
        established = sum(
            1 for e in self._entries.values() for c in e.connections if c.established
        )
        return TopologyStatistics(
            peers=len(self._entries),
            established_connections=established,
            version=self._entries[self._ourself].version,
            updates_applied=self._applied,
            records_stale=self._stale,
            records_dropped=self._dropped,
            full_requests=self._requests,
            peers_removed=self._removed,
            records_refused=self._refused,
            digests_received=self._digests,
            summaries_matched=self._matched,
            records_wanted=self._wanted,
        )

    def peer_statuses(self) -> tuple[PeerStatus, ...]:
        """Every peer with its connections, sorted by name, for ``status peers``."""
        result = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            conns = tuple(
                PeerConnection(
                    outbound=c.outbound,
                    address=c.remote_addr,
                    peer_name=str(c.remote_name),
                    peer_nickname=self._nickname_of(c.remote_name),
                    established=c.established,
                )
                for c in entry.connections
            )
            result.append(
                PeerStatus(
                    str(name), entry.nickname, entry.uid, entry.short_id, entry.version, conns
                )
            )
        return tuple(result)

    def _nickname_of(self, name: PeerName) -> str:
        entry = self._entries.get(name)
        return entry.nickname if entry is not None else ""


def _discovery_address(conn: ConnectionSummary, port: int) -> str | None:
    """``ip:port`` (``[ip]:port`` for IPv6) to dial for ``conn``; None unless an IP literal."""
    return _dial_address(conn.remote_addr, conn.outbound, port)


@functools.lru_cache(maxsize=8192)
def _dial_address(remote_addr: str, outbound: bool, port: int) -> str | None:
    """:func:`_discovery_address` of one address (cached: every peer's topology holds the
    same few addresses, asked for on each change)."""
    host, sep, remote_port = remote_addr.rpartition(":")
    if not sep:
        return None
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None
    if not outbound:
        remote_port = str(port)
    elif not remote_port.isdigit() or not 0 < int(remote_port) < 65536:
        return None
    return f"[{ip}]:{remote_port}" if ip.version == 6 else f"{ip}:{remote_port}"


def _check_local(nickname: str, uid: int, short_id: int) -> None:
    if len(nickname) > MAX_NICKNAME:
        raise LocalProtocolError(f"nickname longer than {MAX_NICKNAME} characters")
    if not 0 < uid < (1 << UID_BITS) or not 0 <= short_id < (1 << SHORT_ID_BITS):
        raise LocalProtocolError("uid or short id out of range")

