"""Path MTU verified by probes: a binary search per connection (sans-IO).

The kernel's route gives an *estimate* of the path MTU: the interface MTU, or less once an
ICMP "fragmentation needed" taught it better. A middle box that carries less and drops
bigger datagrams silently (a *black hole*) is invisible to the kernel. A
:class:`PathMtuProber` verifies the estimate the only way that works through a black
hole: it has heartbeat *probes* sent, padded so the IP datagram is exactly a candidate
size, with DF set (the sleeve socket uses ``IP_PMTUDISC_PROBE``); the peer answers each
probe with an *ack* carrying the size it received (heartbeat kinds 1 and 2 in
:mod:`router.overlay.sleeve.packet`). Each side verifies its own direction.

The search (sizes are IP datagram sizes: UDP payload + ``ip_overhead``)::

    good = floor, bad = estimate + 1, candidate = estimate
    loop:  send a probe of `candidate`; wait `timeout`, 2 x `timeout`, 4 x ... (`attempts` tries)
             acked                          -> good = candidate
             every try lost, or EMSGSIZE    -> bad = candidate
           good + 1 >= bad                  -> verified = good; the search ends
           else                             -> candidate = (good + bad) // 2

The largest acknowledged size wins; the floor (576, what every IPv4 host must take) is
assumed, never probed, so a path that answers nothing ends at the floor. Until the
first search ends, :attr:`PathMtuProber.path_mtu` is the estimate (traffic flows at once).
``reverify_interval`` after a search ends, another starts, so a path that shrank, or grew
back towards the estimate, is followed; :meth:`PathMtuProber.restart` starts one at once,
with a new estimate if the driver has one (a send failed with EMSGSIZE, the route changed).

:func:`overlay_mtu` (from :mod:`router.wire.sleeve`, where the sleeve's sizes live) turns
a path MTU into what ``status connections`` shows as ``mtu=N`` (as Weave does): the
largest IP packet a container can send over the path in one datagram.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from router.errors import LocalProtocolError
from router.wire.sleeve import IPV4_UDP_OVERHEAD, MAX_IP_DATAGRAM, overlay_mtu

__all__ = [
    "FEATURE",
    "FLOOR",
    "IPV4_UDP_OVERHEAD",
    "PathMtuProber",
    "PmtuSettings",
    "PmtuStatistics",
    "overlay_mtu",
    "peer_answers_probes",
]

FEATURE = "pmtu_probes"  # sleeve handshake parameter: True when a peer answers probes
FLOOR = 576  # bytes: the IP datagram every IPv4 host must accept (RFC 791)
_MIN_FLOOR = 128  # bytes: room for the largest unpadded probe (56 sealed) and headers


@dataclass(frozen=True)
class PmtuSettings:
    """How a path MTU is searched; times in seconds, sizes in bytes of IP datagram."""

    floor: int = FLOOR  # assumed good, never probed
    attempts: int = 3  # tries per candidate before it counts as too big
    timeout: float = 0.1  # wait for an ack after the first try; doubled for each retry
    reverify_interval: float = 120.0  # from the end of one search to the start of the next
    ip_overhead: int = IPV4_UDP_OVERHEAD  # IP datagram size - UDP payload size

    def __post_init__(self) -> None:
        if not _MIN_FLOOR <= self.floor <= MAX_IP_DATAGRAM:
            raise LocalProtocolError(f"PMTU floor {self.floor} outside {_MIN_FLOOR}..65535")
        if self.attempts < 1 or not 0 < self.timeout < self.reverify_interval:
            raise LocalProtocolError("need attempts >= 1 and 0 < timeout < reverify_interval")
        if not 0 <= self.ip_overhead < self.floor // 2:
            raise LocalProtocolError(f"implausible IP overhead {self.ip_overhead}")


@dataclass(frozen=True)
class PmtuStatistics:
    """A snapshot of one connection's path MTU search."""

    estimate: int  # the route's path MTU, the upper bound of every search
    verified: int  # the result of the last search; 0 before the first one ends
    path_mtu: int  # what is in use: ``verified``, or ``estimate`` before that
    searching: bool
    candidate: int  # the size being probed; 0 when not searching
    searches: int  # searches ended
    probes_sent: int
    acks: int  # acks that moved a search on
    stale_acks: int  # acks of anything but the candidate being probed (late, duplicated)
    too_big: int  # probes the local kernel refused (EMSGSIZE)


class PathMtuProber:
    """The path MTU search of one connection (see the module docstring).

    The driver sends one probe of UDP payload size ``s`` for each ``s`` in
    :meth:`probes_to_send`, reports acks with :meth:`receive_ack` and local send refusals
    with :meth:`message_too_big`, and calls :meth:`handle_timer` at :meth:`deadline`.
    """

    def __init__(self, estimate: int, now: float,
                 settings: PmtuSettings | None = None) -> None:
        self._settings = settings if settings is not None else PmtuSettings()
        self._estimate = _checked_estimate(estimate)
        self._verified = 0
        self._changed = False
        self._searching = False
        self._good = self._bad = self._candidate = self._tries = 0
        self._send_at = self._wait_until = self._reverify_at = math.inf
        self._searches = self._probes = self._acks = self._stale = self._too_big = 0
        self._start(now)

    @property
    def path_mtu(self) -> int:
        """The path MTU to use: the verified one, or the estimate until the first search ends."""
        return self._verified or self._estimate

    @property
    def verified(self) -> int:
        """The result of the last finished search; 0 before the first one ends."""
        return self._verified

    @property
    def searching(self) -> bool:
        """Whether a search is running."""
        return self._searching

    def take_changed(self) -> bool:
        """True once after :attr:`path_mtu` changed (the driver re-programs the data plane)."""
        changed, self._changed = self._changed, False
        return changed

    def restart(self, now: float, estimate: int | None = None) -> None:
        """Start a new search at once, from ``estimate`` if given (else the last one)."""
        if estimate is not None:
            before = self.path_mtu
            self._estimate = _checked_estimate(estimate)
            self._changed |= self.path_mtu != before
        self._start(now)

    # -- output and timers ------------------------------------------------------------

    def probes_to_send(self, now: float) -> list[int]:
        """The UDP payload sizes of the probes due at ``now`` (at most one)."""
        if not self._searching or now < self._send_at:
            return []
        self._tries += 1
        self._probes += 1
        self._send_at = math.inf
        self._wait_until = now + self._settings.timeout * (1 << (self._tries - 1))
        return [self._candidate - self._settings.ip_overhead]

    def deadline(self) -> float:
        """When :meth:`handle_timer` or :meth:`probes_to_send` has work next."""
        if self._searching:
            return min(self._send_at, self._wait_until)
        return self._reverify_at

    def handle_timer(self, now: float) -> None:
        """Retry or give up on the candidate whose ack is overdue; start a re-verification."""
        if not self._searching:
            if now >= self._reverify_at:
                self._start(now)
            return
        if now < self._wait_until:
            return
        self._wait_until = math.inf
        if self._tries < self._settings.attempts:
            self._send_at = now
        else:
            self._bad = self._candidate
            self._next(now)

    # -- input ------------------------------------------------------------------------

    def receive_ack(self, payload_size: int, now: float) -> None:
        """The peer received a probe of ``payload_size`` UDP bytes."""
        size = payload_size + self._settings.ip_overhead
        if not self._searching or size != self._candidate or not self._tries:
            self._stale += 1  # late (the candidate was judged already), duplicated or unasked
            return
        self._acks += 1
        self._good = size
        self._next(now)

    def message_too_big(self, payload_size: int, now: float) -> None:
        """Our kernel refused to send a probe of ``payload_size`` (EMSGSIZE)."""
        size = payload_size + self._settings.ip_overhead
        if self._searching and size == self._candidate:
            self._too_big += 1
            self._bad = size
            self._next(now)

    # -- status -----------------------------------------------------------------------

    def statistics(self) -> PmtuStatistics:
        """A frozen snapshot."""
        return PmtuStatistics(
            estimate=self._estimate, verified=self._verified, path_mtu=self.path_mtu,
            searching=self._searching, candidate=self._candidate if self._searching else 0,
            searches=self._searches, probes_sent=self._probes, acks=self._acks,
            stale_acks=self._stale, too_big=self._too_big,
        )

    # -- search -----------------------------------------------------------------------

    def _start(self, now: float) -> None:
        self._searching = True
        self._good = min(self._settings.floor, self._estimate)
        self._bad = self._estimate + 1
        self._reverify_at = math.inf
        self._aim(self._estimate, now)
        if self._good + 1 >= self._bad:  # an estimate at or below the floor: nothing to probe
            self._finish(now)

    def _next(self, now: float) -> None:
        if self._good + 1 >= self._bad:
            self._finish(now)
        else:
            self._aim((self._good + self._bad) // 2, now)

    def _aim(self, candidate: int, now: float) -> None:
        self._candidate = candidate
        self._tries = 0
        self._send_at = now
        self._wait_until = math.inf

    def _finish(self, now: float) -> None:
        before = self.path_mtu
        self._verified = self._good
        self._changed |= self.path_mtu != before
        self._searching = False
        self._searches += 1
        self._send_at = self._wait_until = math.inf
        self._reverify_at = now + self._settings.reverify_interval


def _checked_estimate(estimate: int) -> int:
    if not 1 <= estimate <= MAX_IP_DATAGRAM:
        raise LocalProtocolError(f"path MTU estimate {estimate} outside 1..65535")
    return estimate


def peer_answers_probes(params: Mapping[str, object]) -> bool:
    """Does the peer (its sleeve handshake parameters) answer probes? A peer of an older
    version does not say so; probing it would end at the floor, so its path keeps the
    route's estimate instead."""
    return params.get(FEATURE) is True
