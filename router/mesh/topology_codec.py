"""The topology's payloads: peer records and their CBOR codec (see ``topology.py``).

Payload layout (CBOR through :mod:`router.wire.cbor`), one channel for both kinds::

    {"v": 1, "from": <sender name, uint48>, "kind": "update" | "request-full",
     "peers": [record, ...]}                 (empty list for "request-full")
    record = [name: uint48, nickname: text, uid: uint64 (non-zero), short_id: uint12,
              version: uint (< 2**62; >= 2**62 - 2**32 refused), [conn, ...]]
    conn   = [remote name: uint48, address "ip:port": text, outbound: bool,
              established: bool]

Digest kinds (protocol version 2 and later only: a version-1 peer refuses them, so they
go only to neighbours whose connection negotiated version 2; see ``topology_gossip.py``)::

    {"v": 1, "from": name, "kind": "summary", "count": <records held>,
     "hash": <8-byte bstr: BLAKE2b over every (name, version, record hash) held>}
    {"v": 1, "from": name, "kind": "digest", "push": bool,
     "digest": [name, version, record hash, name, version, record hash, ...]}
    {"v": 1, "from": name, "kind": "want", "names": [name, ...]}

A record hash is the first 4 bytes of BLAKE2b over the record's CBOR encoding, as an
unsigned integer. "push": the sender wants the records it lacks or holds older pushed to
it. At most :data:`MAX_PEERS` entries or names, each name once.

A full topology is an "update" holding every record; :meth:`Topology.encode_chunks`
splits a large one into payloads of at most :data:`CHUNK_BUDGET` bytes. Limits:
:data:`MAX_PEERS` records, :data:`MAX_CONNECTIONS` connections per record (remote names
unique), :data:`MAX_NICKNAME` characters, :data:`MAX_ADDRESS` characters, payload at most
:data:`MAX_PAYLOAD` bytes. Anything else is a :class:`~router.errors.DecodeError`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from router.errors import DecodeError
from router.mesh.names import NAME_BITS, SHORT_ID_BITS, UID_BITS, PeerName
from router.wire import cbor
from router.wire.constants import MAX_FRAME_SIZE, MAX_NICKNAME_LEN

FORMAT_VERSION = 1
MAX_PEERS = 10_000
MAX_CONNECTIONS = 2048
MAX_NICKNAME = MAX_NICKNAME_LEN  # characters
MAX_ADDRESS = 64  # characters: "[v6 address]:port" fits
MAX_VERSION = 1 << 62  # versions at or above do not decode (the sender is dropped)
MAX_PAYLOAD = MAX_FRAME_SIZE  # bytes: a payload travels in one frame
MAX_DEPTH = 6
RECORD_CACHE_SIZE = 4096  # encoded peer records kept (process-wide, LRU)
CHUNK_BUDGET = 2 * 1024 * 1024  # bytes (estimated) per payload of a chunked update
KIND_UPDATE = "update"
KIND_REQUEST = "request-full"
KIND_SUMMARY = "summary"
KIND_DIGEST = "digest"
KIND_WANT = "want"
SUMMARY_HASH_BYTES = 8
RECORD_HASH_BYTES = 4


@dataclass(frozen=True, order=True)
class ConnectionSummary:
    """A connection as its owner reports it: remote peer, its TCP address, direction, state."""

    remote_name: PeerName
    remote_addr: str  # "ip:port" of the remote as the owner sees it (the dial target if outbound)
    outbound: bool
    established: bool


@dataclass(frozen=True)
class PeerEntry:
    """One peer of the mesh; ``connections`` are sorted by remote name, one per remote."""

    name: PeerName
    nickname: str
    uid: int
    short_id: int
    version: int
    connections: tuple[ConnectionSummary, ...] = ()

    def key(self) -> tuple[int, int, int, str, tuple[ConnectionSummary, ...]]:
        """Merge order: the greater key wins (see the module docstring)."""
        return (self.version, self.uid, self.short_id, self.nickname, self.connections)


def encode_payload(sender: PeerName, kind: str, entries: Iterable[PeerEntry]) -> bytes:
    head = {"v": FORMAT_VERSION, "from": int(sender), "kind": kind, "peers": []}
    return cbor.encode_with_array_tail(head, [_encode_record(e) for e in entries])


@functools.lru_cache(maxsize=RECORD_CACHE_SIZE)
def _encode_record(e: PeerEntry) -> bytes:
    """One peer record, encoded once per version: gossip re-sends records far more often
    than they change, and a full mesh of N peers holds N records of N connections."""
    return cbor.encode(raw_record(e))


@functools.lru_cache(maxsize=RECORD_CACHE_SIZE)
def raw_record(e: PeerEntry) -> list[Any]:
    """The record as plain CBOR values (shared by the cache: never mutate it)."""
    return [
        int(e.name),
        e.nickname,
        e.uid,
        e.short_id,
        e.version,
        [[int(c.remote_name), c.remote_addr, c.outbound, c.established] for c in e.connections],
    ]


def record_hash(raw: list[Any]) -> int:
    """The record hash of a record's plain CBOR values (see the module docstring)."""
    digest = hashlib.blake2b(cbor.encode(raw), digest_size=RECORD_HASH_BYTES).digest()
    return int.from_bytes(digest, "big")


def summary_hash(entries: Iterable[tuple[PeerName, int, int]]) -> bytes:
    """The summary hash of ``(name, version, record hash)`` triples, sorted by name."""
    h = hashlib.blake2b(digest_size=SUMMARY_HASH_BYTES)
    for name, version, rhash in sorted(entries):
        h.update(int(name).to_bytes(6, "big") + version.to_bytes(8, "big")
                 + rhash.to_bytes(RECORD_HASH_BYTES, "big"))
    return h.digest()


@dataclass(frozen=True)
class SummaryMessage:
    """"summary": how many records the sender holds and the hash over all of them."""

    sender: PeerName
    count: int
    hash: bytes


@dataclass(frozen=True)
class DigestMessage:
    """"digest": name -> (version, record hash) of every record the sender holds."""

    sender: PeerName
    entries: dict[PeerName, tuple[int, int]]
    push: bool


@dataclass(frozen=True)
class WantMessage:
    """"want": please send me the records of these names."""

    sender: PeerName
    names: frozenset[PeerName]


DigestKind = SummaryMessage | DigestMessage | WantMessage


def encode_summary(sender: PeerName, count: int, hash_: bytes) -> bytes:
    return cbor.encode({"v": FORMAT_VERSION, "from": int(sender), "kind": KIND_SUMMARY,
                        "count": count, "hash": hash_})


def encode_digest(sender: PeerName, entries: Iterable[tuple[PeerName, int, int]],
                  *, push: bool) -> bytes:
    flat: list[int] = []
    for name, version, rhash in sorted(entries):
        flat += (int(name), version, rhash)
    return cbor.encode({"v": FORMAT_VERSION, "from": int(sender), "kind": KIND_DIGEST,
                        "push": push, "digest": flat})


def encode_want(sender: PeerName, names: Iterable[PeerName]) -> bytes:
    return cbor.encode({"v": FORMAT_VERSION, "from": int(sender), "kind": KIND_WANT,
                        "names": sorted(int(n) for n in set(names))[:MAX_PEERS]})


def decode_payload(
    payload: bytes, stale: Callable[[PeerName, int, int, Any], bool]
) -> tuple[PeerName, str, list[PeerEntry | None]]:
    """An "update" or "request-full" payload -> (sender, kind, records); DecodeError on
    anything malformed, a digest kind included (see :func:`decode_message`)."""
    message = decode_message(payload, stale)
    if not isinstance(message, tuple):
        raise DecodeError(f"topology payload: {type(message).__name__} where an update was due")
    return message


_KEYS = {
    KIND_UPDATE: {"v", "from", "kind", "peers"},
    KIND_REQUEST: {"v", "from", "kind", "peers"},
    KIND_SUMMARY: {"v", "from", "kind", "count", "hash"},
    KIND_DIGEST: {"v", "from", "kind", "push", "digest"},
    KIND_WANT: {"v", "from", "kind", "names"},
}


def decode_message(
    payload: bytes, stale: Callable[[PeerName, int, int, Any], bool]
) -> tuple[PeerName, str, list[PeerEntry | None]] | DigestKind:
    """Untrusted payload -> (sender, kind, records) for "update" and "request-full", or
    the digest kind's message; DecodeError on anything malformed.

    A record for which ``stale(name, version, uid, raw)`` holds comes back as None, its
    connections unread: in a mesh of N peers most records a peer receives are ones it
    already has, and their N connections each would dominate the cost of gossip.
    """
    obj = cbor.decode_untrusted(payload, max_size=MAX_PAYLOAD, max_depth=MAX_DEPTH)
    if not isinstance(obj, dict) or "kind" not in obj:
        raise DecodeError("topology payload: expected a map with v, from, kind")
    kind = obj["kind"]
    if not isinstance(kind, str) or kind not in _KEYS:
        raise DecodeError(f"topology payload: unknown kind {kind!r}")
    if set(obj) != _KEYS[kind]:
        raise DecodeError(f"topology payload: {kind} expects {', '.join(sorted(_KEYS[kind]))}")
    if obj["v"] != FORMAT_VERSION or type(obj["v"]) is not int:
        raise DecodeError(f"topology payload: unsupported version {obj['v']!r}")
    sender = PeerName(_uint(obj["from"], NAME_BITS, "from"))
    if kind == KIND_SUMMARY:
        hash_ = obj["hash"]
        if not isinstance(hash_, bytes) or len(hash_) != SUMMARY_HASH_BYTES:
            raise DecodeError(f"topology summary: hash must be {SUMMARY_HASH_BYTES} bytes")
        return SummaryMessage(sender, _uint(obj["count"], 32, "count"), hash_)
    if kind == KIND_DIGEST:
        return _decode_digest(sender, obj["push"], obj["digest"])
    if kind == KIND_WANT:
        names = obj["names"]
        if not isinstance(names, list) or len(names) > MAX_PEERS:
            raise DecodeError(f"topology want: names must be a list of at most {MAX_PEERS}")
        wanted = frozenset(PeerName(_uint(n, NAME_BITS, "name")) for n in names)
        if len(wanted) != len(names):
            raise DecodeError("topology want: a name appears twice")
        return WantMessage(sender, wanted)
    raw = obj["peers"]
    if not isinstance(raw, list) or len(raw) > MAX_PEERS:
        raise DecodeError(f"topology payload: peers must be a list of at most {MAX_PEERS}")
    if kind == KIND_REQUEST and raw:
        raise DecodeError("topology payload: request-full carries no peers")
    records = [_decode_record(r, stale) for r in raw]
    names = [_record_name(r) for r in raw]
    if len(set(names)) != len(names):
        raise DecodeError("topology payload: a peer appears twice")
    return sender, kind, records


def _decode_digest(sender: PeerName, push: Any, flat: Any) -> DigestMessage:
    if type(push) is not bool:
        raise DecodeError("topology digest: push must be a boolean")
    if not isinstance(flat, list) or len(flat) % 3 or len(flat) > 3 * MAX_PEERS:
        raise DecodeError(f"topology digest: at most {MAX_PEERS} (name, version, hash) triples")
    entries: dict[PeerName, tuple[int, int]] = {}
    for i in range(0, len(flat), 3):
        name = PeerName(_uint(flat[i], NAME_BITS, "name"))
        version = _uint(flat[i + 1], 64, "version")
        if version >= MAX_VERSION:
            raise DecodeError("topology digest: version too large")
        entries[name] = (version, _uint(flat[i + 2], 8 * RECORD_HASH_BYTES, "hash"))
    if len(entries) * 3 != len(flat):
        raise DecodeError("topology digest: a peer appears twice")
    return DigestMessage(sender, entries, push)


def _record_name(raw: Any) -> PeerName:
    return PeerName(_uint(raw[0], NAME_BITS, "name"))  # shape checked by _decode_record


def _decode_record(
    raw: Any, stale: Callable[[PeerName, int, int, Any], bool]
) -> PeerEntry | None:
    if not isinstance(raw, list) or len(raw) != 6:
        raise DecodeError("topology record: expected a list of 6 items")
    name, nickname, uid, short_id, version, conns = raw
    peer = PeerName(_uint(name, NAME_BITS, "name"))
    if _uint(version, 64, "version") >= MAX_VERSION:
        raise DecodeError("topology record: version too large")
    if stale(peer, version, _uint(uid, UID_BITS, "uid"), raw):
        return None
    if not isinstance(nickname, str) or len(nickname) > MAX_NICKNAME:
        raise DecodeError(f"topology record: nickname must be text of at most {MAX_NICKNAME}")
    if _uint(uid, UID_BITS, "uid") == 0:
        raise DecodeError("topology record: uid 0 is reserved")
    _uint(short_id, SHORT_ID_BITS, "short_id")
    if not isinstance(conns, list) or len(conns) > MAX_CONNECTIONS:
        raise DecodeError(f"topology record: at most {MAX_CONNECTIONS} connections")
    decoded = [_decode_connection(c) for c in conns]
    # Records are sent sorted by remote name, one connection per remote: checking that
    # costs one integer comparison a connection, sorting N dataclasses far more.
    if any(a.remote_name >= b.remote_name for a, b in itertools.pairwise(decoded)):
        decoded.sort()
        if any(a.remote_name == b.remote_name for a, b in itertools.pairwise(decoded)):
            raise DecodeError("topology record: two connections to the same peer")
    return PeerEntry(peer, nickname, uid, short_id, version, tuple(decoded))


def _decode_connection(raw: Any) -> ConnectionSummary:
    if not isinstance(raw, list) or len(raw) != 4:
        raise DecodeError("topology connection: expected a list of 4 items")
    remote, address, outbound, established = raw
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        raise DecodeError(f"topology connection: address must be text of at most {MAX_ADDRESS}")
    if type(outbound) is not bool or type(established) is not bool:
        raise DecodeError("topology connection: outbound and established must be booleans")
    peer = PeerName(_uint(remote, NAME_BITS, "remote"))
    return ConnectionSummary(peer, address, outbound, established)


def _uint(value: Any, bits: int, what: str) -> int:
    if type(value) is not int or not 0 <= value < (1 << bits):
        raise DecodeError(f"topology payload: {what} must be an unsigned {bits}-bit integer")
    return value
