"""The connection maker: which addresses to dial, when, and how they fared.

Sans-IO (weaveworks/mesh ``ConnectionMaker`` semantics). The trio driver tells it what
happened (targets added, dials started, failed, connected, disconnected, addresses
discovered from topology) and asks it what to dial (:meth:`ConnectionMaker.dials_due`)
and when to ask again (:meth:`ConnectionMaker.deadline`). It never reads a clock.

Targets come from two places:

* *direct* targets: ``launch PEER...`` and ``connect``; persisted, shown by
  ``status targets``; removed only by ``forget`` (or ``connect --replace``);
* *discovered* targets: addresses of peers other peers are connected to (only when
  discovery is on), minus peers we already have a connection to.

Each target address is ``waiting`` (for its retry time), ``connecting`` (a dial is in
flight) or ``connected``. A failed dial or a lost connection waits a jittered, growing
delay (:class:`BackoffPolicy`) before the next try; a connection that lived at least
``reset_after`` resets the delay and is redialled at once. A dial refused for good (the
handshake found ourself, or a name collision: ``retry=False``) is never retried unless
the user adds that target again.

Addresses are normalised ``HOST:PORT`` strings: ``10.0.0.1:6783``, ``[fd00::1]:6783``,
``host.example:6783``. Host names are kept as written (lower-cased); the driver
resolves them when it dials. Only the user's targets may be host names: discovered
ones must be IP literals (no lookups on a peer's say-so), and at most
:data:`MAX_DISCOVERED_TARGETS` are kept.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from router.config import MeshTimings
from router.errors import ConfigError, LocalProtocolError
from router.mesh.names import PeerName
from router.status import ConnectionStatus

MAX_TARGETS = 10_000  # direct targets
MAX_DISCOVERED_TARGETS = 1024  # discovered targets (from gossip: untrusted)
MAX_NEVER = 10_000  # remembered "retry: never" addresses
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_DIGITS = re.compile(r"[0-9]+")
_Bad = Callable[[str], ConfigError]  # builds the error naming the address, given a reason


@dataclass(frozen=True)
class TargetAddress:
    """A parsed ``HOST[:PORT]``; ``str()`` gives the normalised ``HOST:PORT`` form."""

    host: str  # IP literal (IPv6 without brackets) or lower-case host name
    port: int
    port_given: bool  # False when the default port was filled in

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str, *, default_port: int) -> TargetAddress:
    """Parse ``HOST[:PORT]`` (IPv4, ``[IPv6]``, host name); ConfigError naming the address."""
    raw = text.strip()

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"invalid peer address {text!r}: {reason}")

    if not raw:
        raise bad("empty")
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise bad("missing ']' after an IPv6 address")
        host_text, rest = raw[1:end], raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise bad("expected ':PORT' after ']'")
        try:
            host = str(ipaddress.IPv6Address(host_text))
        except ValueError:
            raise bad(f"{host_text!r} is not an IPv6 address") from None
        port_text = rest[1:] if rest else None
    elif raw.count(":") > 1:
        raise bad("write IPv6 addresses in brackets, e.g. [fd00::1]:6783")
    else:
        host_text, sep, port_text_or_empty = raw.partition(":")
        port_text = port_text_or_empty if sep else None
        host = _parse_host(host_text, bad)
    port = _parse_port(port_text, default_port, bad)
    return TargetAddress(host=host, port=port, port_given=port_text is not None)


def _parse_host(text: str, bad: _Bad) -> str:
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if all(_DIGITS.fullmatch(label) for label in labels):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise bad(f"{text!r} is not an IPv4 address") from None
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise bad(f"{text!r} is not a valid host name")
    return name


def _parse_port(text: str | None, default: int, bad: _Bad) -> int:
    if text is None:
        return default
    if not _PORT.fullmatch(text) or not 0 < int(text) < 65536:
        raise bad(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class BackoffPolicy:
    """Retry delays of a target, in seconds.

    After the n-th consecutive failure the target waits ``initial * factor**(n-1)``
    (never more than ``max``), varied by up to ``+-jitter`` of itself and then capped at
    ``max``. A connection that lived ``reset_after`` seconds resets the sequence.
    """

    initial: float = 2.0
    factor: float = 1.5
    max: float = 360.0
    jitter: float = 0.1  # fraction of each delay
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.max and self.factor >= 1 and 0 <= self.jitter < 1
                and self.reset_after >= 0):
            raise LocalProtocolError(f"inconsistent backoff policy {self!r}")

    @classmethod
    def from_timings(cls, timings: MeshTimings) -> BackoffPolicy:
        """The policy configured in :class:`~router.config.MeshTimings`."""
        return cls(
            initial=timings.backoff_initial,
            factor=timings.backoff_factor,
            max=timings.backoff_max,
            jitter=timings.backoff_jitter,
            reset_after=timings.backoff_reset_after,
        )

    def next_interval(self, interval: float) -> float:
        """The base delay after ``interval`` (grown by ``factor``, capped)."""
        return min(self.max, interval * self.factor)

    def jittered(self, interval: float, rng: random.Random) -> float:
        """``interval`` varied by up to +-jitter, capped at ``max``."""
        return min(self.max, interval * (1.0 + self.jitter * rng.uniform(-1.0, 1.0)))


class _State(enum.Enum):
    WAITING = "waiting"
    CONNECTING = "connecting"
    CONNECTED = "connected"


@dataclass
class _Target:
    state: _State
    try_after: float | None  # None: never (until the user adds it again)
    interval: float  # base delay of the next failure
    last_error: str = ""
    since: float = 0.0  # when it connected


@dataclass(frozen=True)
class _Conn:
    peer: PeerName
    outbound: bool
    since: float


@dataclass(frozen=True)
class ConnectionMakerStatistics:
    """Counts of the connection maker (gauges first, then totals since start)."""

    direct_targets: int
    discovered_targets: int
    connections: int  # peers with a live connection, either direction
    connecting: int  # dials in flight
    waiting: int  # targets waiting for their (re)try time
    never: int  # targets that will not be retried
    dials_started: int
    dials_failed: int
    disconnections: int
    discovered_dropped: int  # malformed or over MAX_TARGETS


class ConnectionMaker:
    """Decides which target addresses to dial and when (see the module docstring)."""

    def __init__(
        self,
        *,
        ourself: PeerName,
        port: int,
        discovery: bool,
        conn_limit: int,
        policy: BackoffPolicy,
        rng: random.Random,
        now: float,
        max_targets: int = MAX_TARGETS,
    ) -> None:
        if conn_limit < 0 or max_targets < 1:
            raise LocalProtocolError("conn_limit must be >= 0 and max_targets >= 1")
        self._ourself = ourself
        self._port = port
        self._discovery = discovery
        self._conn_limit = conn_limit
        self._policy = policy
        self._rng = rng
        self._now = now  # the latest time we were told: "due at once" for new targets
        self._max_targets = max_targets
        self._direct: dict[str, bool] = {}  # normalised address -> port given
        self._discovered: dict[str, PeerName | None] = {}  # address -> owner if known
        self._connected_peers: frozenset[PeerName] = frozenset()
        self._targets: dict[str, _Target] = {}
        self._never: dict[str, str] = {}  # address -> error, kept across refreshes
        self._conns: dict[str, _Conn] = {}  # outbound, by target address
        self._inbound: dict[str, _Conn] = {}  # by remote address
        self._dirty = True
        self._dials_started = 0
        self._dials_failed = 0
        self._disconnections = 0
        self._discovered_dropped = 0

    # -- targets -------------------------------------------------------------------------

    def add_targets(self, addrs: Iterable[str], *, replace: bool) -> list[str]:
        """Add direct targets (``replace`` drops the old ones first); returns them normalised.

        All addresses are checked before anything changes: one bad address raises
        ConfigError naming it. Adding a target that waits for a retry makes it due now.
        """
        parsed = [parse_address(a, default_port=self._port) for a in addrs]
        result = list(dict.fromkeys(str(p) for p in parsed))
        kept = {} if replace else dict(self._direct)
        for p in parsed:
            kept[str(p)] = kept.get(str(p), False) or p.port_given
        if len(kept) > self._max_targets:
            raise ConfigError(f"too many peer addresses: at most {self._max_targets}")
        self._direct = kept
        for addr in result:
            self._never.pop(addr, None)
            target = self._targets.get(addr)
            if target is not None and target.state is _State.WAITING:
                target.try_after = self._now
                target.interval = self._policy.initial
        self._dirty = True
        return result

    def forget(self, addrs: Iterable[str]) -> None:
        """Drop direct targets (ConfigError for a malformed one); live connections stay."""
        for addr in [str(parse_address(a, default_port=self._port)) for a in addrs]:
            self._direct.pop(addr, None)
        self._dirty = True

    def direct_targets(self) -> list[str]:
        """The direct targets, normalised, in the order they were added (to persist)."""
        return list(self._direct)

    def set_discovered(self, addrs: Iterable[str] | Mapping[str, PeerName]) -> None:
        """Replace the discovered addresses (ignored, but kept, while discovery is off).

        Pass a mapping ``address -> peer name`` when the owner is known (topology knows
        it): addresses of peers we are connected to, and our own, are then not dialled.
        Addresses are ``IP:PORT`` from untrusted gossip: a malformed one, a host name
        (we never look up what gossip says), or one over :data:`MAX_DISCOVERED_TARGETS`
        is a counted drop. (For a peer's *inbound* connection the driver
        should pass that IP with our port, not the remote's ephemeral port.)
        """
        owners = addrs if isinstance(addrs, Mapping) else None
        found: dict[str, PeerName | None] = {}
        limit = min(self._max_targets, MAX_DISCOVERED_TARGETS)
        for addr in addrs:
            try:
                parsed = parse_address(addr, default_port=self._port)
                ipaddress.ip_address(parsed.host)  # a host name from gossip: never looked up
            except (ConfigError, ValueError):
                self._discovered_dropped += 1
                continue
            key = str(parsed)
            if len(found) >= limit and key not in found:
                self._discovered_dropped += 1
                continue
            found[key] = owners[addr] if owners is not None else None
        self._discovered = found
        self._dirty = True

    def set_connected_peers(self, names: Iterable[PeerName]) -> None:
        """Peers we have a connection to (besides those reported via :meth:`connected`)."""
        self._connected_peers = frozenset(names)
        self._dirty = True

    # -- connection events ----------------------------------------------------------------

    def dial_started(self, addr: str, now: float) -> None:
        """A dial to ``addr`` is in flight. :meth:`dials_due` already marks what it returns;
        call this for a dial the driver starts on its own (a no-op if already connecting)."""
        self._observe(now)
        target = self._targets.get(addr)
        if target is None:
            target = _Target(_State.WAITING, now, self._policy.initial)
            self._targets[addr] = target
        if target.state is _State.CONNECTED:
            raise LocalProtocolError(f"dial to {addr} started while connected to it")
        if target.state is _State.WAITING:
            target.state = _State.CONNECTING
            self._dials_started += 1

    def dial_failed(self, addr: str, now: float, error: str, retry: bool) -> None:
        """The dial to ``addr`` (or its handshake) failed; ``retry=False``: never again."""
        self._observe(now)
        target = self._expect(addr, _State.CONNECTING)
        self._dials_failed += 1
        self._wait(addr, target, now, error, retry)

    def connected(self, addr: str, peer: PeerName, now: float, outbound: bool) -> None:
        """A connection to ``peer`` completed its handshake (``addr``: its remote address,
        or for ``outbound`` the target dialled). Repeating it for the same peer is a no-op."""
        self._observe(now)
        if not outbound:  # kept apart: a peer picks its source port, even our target's
            self._inbound[addr] = _Conn(peer, False, now)
            self._dirty = True
            return
        known = self._conns.get(addr)
        if known is not None and known.peer == peer:
            return
        if outbound:
            target = self._expect(addr, _State.CONNECTING)
            target.state = _State.CONNECTED
            target.since = now
            target.last_error = ""
            self._never.pop(addr, None)
        self._conns[addr] = _Conn(peer, outbound, now)
        self._dirty = True

    def disconnected(
        self, addr: str, peer: PeerName, now: float, error: str, *, retry: bool = True,
        inbound: bool = False,
    ) -> None:
        """The connection at ``addr`` ended: retry with backoff (or at once if it lived
        ``reset_after``); ``retry=False`` stops retrying that address. ``inbound``: it
        was reported by ``connected(..., outbound=False)``."""
        self._observe(now)
        if inbound:
            gone = self._inbound.get(addr)
            if gone is None or gone.peer != peer:
                raise LocalProtocolError(f"no inbound connection from {peer} at {addr}")
            del self._inbound[addr]
            self._disconnections += 1
            self._dirty = True
            return
        conn = self._conns.get(addr)
        if conn is None or conn.peer != peer:
            raise LocalProtocolError(f"no connection to {peer} at {addr}")
        del self._conns[addr]
        self._disconnections += 1
        self._dirty = True
        if not conn.outbound:
            return
        target = self._expect(addr, _State.CONNECTED)
        if retry and now - target.since >= self._policy.reset_after:
            target.state = _State.WAITING
            target.last_error = error
            target.interval = self._policy.initial
            target.try_after = now
        else:
            self._wait(addr, target, now, error, retry)

    # -- what to do -----------------------------------------------------------------------

    def room(self) -> int:
        """How many more connections (live + in flight) ``conn_limit`` allows."""
        connecting = sum(1 for t in self._targets.values() if t.state is _State.CONNECTING)
        return max(0, self._conn_limit - len(self._conns) - len(self._inbound) - connecting)

    def _live(self) -> int:
        """Peers with a live connection (a duplicate's dial target counts once)."""
        return len({c.peer for c in [*self._conns.values(), *self._inbound.values()]})

    def dials_due(self, now: float) -> list[str]:
        """Addresses to dial now (marked connecting); never beyond ``conn_limit``.

        Direct targets go first, then the longest-waiting ones.
        """
        self._observe(now)
        self._refresh()
        room = self.room()
        due = [
            (addr not in self._direct, t.try_after, addr)
            for addr, t in self._targets.items()
            if t.state is _State.WAITING and t.try_after is not None and t.try_after <= now
        ]
        due.sort()
        chosen = [addr for _, _, addr in due[:room]]
        for addr in chosen:
            self._targets[addr].state = _State.CONNECTING
        self._dials_started += len(chosen)
        return chosen

    def deadline(self) -> float:
        """When :meth:`dials_due` may next return something; ``math.inf`` if never (or
        while at ``conn_limit``: a disconnect is an event that changes this)."""
        self._refresh()
        if self.room() == 0:
            return math.inf
        times = [
            t.try_after
            for t in self._targets.values()
            if t.state is _State.WAITING and t.try_after is not None
        ]
        return min(times, default=math.inf)

    # -- status ---------------------------------------------------------------------------

    def target_statuses(self, now: float, wall_now: float) -> list[ConnectionStatus]:
        """The not-connected lines of ``status connections``, sorted by address.

        ``wall_now`` is the wall-clock time (Unix seconds) matching ``now``; retry times
        are printed in UTC.
        """
        self._observe(now)
        self._refresh()
        lines = []
        for addr in sorted(self._targets):
            target = self._targets[addr]
            if target.state is _State.CONNECTED:
                continue
            lines.append(self._status_line(addr, target, now, wall_now))
        return lines

    def statistics(self) -> ConnectionMakerStatistics:
        """A frozen snapshot of the counts."""
        self._refresh()
        targets = list(self._targets.values())
        return ConnectionMakerStatistics(
            direct_targets=len(self._direct),
            discovered_targets=len(self._discovered) if self._discovery else 0,
            connections=self._live(),
            connecting=sum(t.state is _State.CONNECTING for t in targets),
            waiting=sum(t.state is _State.WAITING and t.try_after is not None for t in targets),
            never=sum(t.try_after is None for t in targets),
            dials_started=self._dials_started,
            dials_failed=self._dials_failed,
            disconnections=self._disconnections,
            discovered_dropped=self._discovered_dropped,
        )

    # -- internals ------------------------------------------------------------------------

    def _observe(self, now: float) -> None:
        self._now = max(self._now, now)

    def _expect(self, addr: str, state: _State) -> _Target:
        target = self._targets.get(addr)
        if target is None or target.state is not state:
            found = "no target" if target is None else target.state.value
            raise LocalProtocolError(f"{addr}: expected a {state.value} target, found {found}")
        return target

    def _wait(self, addr: str, target: _Target, now: float, error: str, retry: bool) -> None:
        target.state = _State.WAITING
        target.last_error = error
        if retry:
            target.try_after = now + self._policy.jittered(target.interval, self._rng)
            target.interval = self._policy.next_interval(target.interval)
        else:
            target.try_after = None
            if len(self._never) >= MAX_NEVER:
                del self._never[next(iter(self._never))]
            self._never[addr] = error
        self._dirty = True

    def _valid_targets(self) -> set[str]:
        """Addresses we want a connection to and have none to."""
        busy = set(self._conns) | set(self._inbound)
        peers = (self._connected_peers | {c.peer for c in self._conns.values()}
                 | {c.peer for c in self._inbound.values()})
        inbound_hosts = set()
        for addr in self._inbound:
            with contextlib.suppress(ConfigError):  # inbound addresses are IP:PORT
                inbound_hosts.add(parse_address(addr, default_port=self._port).host)
        valid = set()
        for addr, port_given in self._direct.items():
            host = parse_address(addr, default_port=self._port).host
            # Weave: a peer given without a port is not dialled while it is connected to us.
            if port_given or host not in inbound_hosts:
                valid.add(addr)
        if self._discovery:
            for addr, owner in self._discovered.items():
                if owner is None or (owner != self._ourself and owner not in peers):
                    valid.add(addr)
        return valid - busy

    def _refresh(self) -> None:
        """Create targets for new valid addresses; drop waiting ones no longer wanted."""
        if not self._dirty:
            return
        self._dirty = False
        valid = self._valid_targets()
        for addr in [a for a, t in self._targets.items() if t.state is _State.WAITING]:
            if addr not in valid:
                del self._targets[addr]
        for addr in valid:
            if addr not in self._targets:
                never = self._never.get(addr)
                self._targets[addr] = _Target(
                    _State.WAITING,
                    None if never is not None else self._now,
                    self._policy.initial,
                    last_error=never or "",
                )

    def _status_line(
        self, addr: str, target: _Target, now: float, wall_now: float
    ) -> ConnectionStatus:
        if target.state is _State.CONNECTING:
            state = "retrying" if target.last_error else "connecting"
            return ConnectionStatus(True, addr, state, info=target.last_error)
        if not target.last_error:  # new, not dialled yet (e.g. waiting for conn_limit)
            return ConnectionStatus(True, addr, "connecting")
        if target.try_after is None:
            retry = "never"
        else:
            retry = format_utc(wall_now + max(0.0, target.try_after - now))
        return ConnectionStatus(True, addr, "failed", info=target.last_error, retry=retry)


def format_utc(wall: float) -> str:
    """Unix seconds as ``2024-05-01 12:34:56 UTC``."""
    return datetime.fromtimestamp(wall, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class AcceptLimiter:
    """Token bucket for inbound connections: ``rate`` per second sustained, ``burst`` at once.

    ``allow(now)`` takes a token or counts a refusal; time going backwards adds nothing.
    """

    def __init__(self, rate: float, burst: int, *, now: float | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise LocalProtocolError(f"accept limiter needs rate > 0, burst >= 1: {rate}, {burst}")
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now
        self._allowed = 0
        self._refused = 0

    def allow(self, now: float) -> bool:
        """Whether one more connection may be accepted at ``now``."""
        if self._last is not None and now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._allowed += 1
            return True
        self._refused += 1
        return False

    def statistics(self) -> AcceptLimiterStatistics:
        """Connections allowed and refused so far."""
        return AcceptLimiterStatistics(allowed=self._allowed, refused=self._refused)


@dataclass(frozen=True)
class AcceptLimiterStatistics:
    """Counts of an :class:`AcceptLimiter`."""

    allowed: int
    refused: int
