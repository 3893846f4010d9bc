"""Which data plane runs: the compiled extension, or its pure-Python twin by name.

This is the one module that imports ``router._fastpath`` (a house-rule test checks it).
Both implementations expose the same module-level API, typed here as :class:`Backend`
and :class:`DataplaneLike`:

* ``"native"``: ``router._fastpath``, per-packet work in two native threads
  (``THREADED`` is True: the driver calls ``start(tap_fd, udp_fd)`` and drains
  ``get_upcalls``). This is what the router uses.
* ``"reference"``: ``router.dataplane.reference``, the same pipeline in plain Python,
  about 100 times slower, no threads (``THREADED`` is False: the driver pumps frames
  through ``egress``/``ingress``). Only used when asked for by name.

If the extension is missing, :func:`load_backend` raises :class:`ConfigError` instead of
silently falling back: the router refuses to start rather than run 100x slower.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypedDict

from router.errors import ConfigError

__all__ = [
    "BACKENDS",
    "Address",
    "Backend",
    "Datagram",
    "DataplaneLike",
    "PeerCounters",
    "Statistics",
    "Upcall",
    "load_backend",
]

BACKENDS = ("native", "reference")
Address = tuple[str, int]  # (IP literal, UDP port)
Datagram = tuple[Address, bytes]  # where it goes (or came from), the UDP payload
Upcall = tuple[int, Address, bytes]  # UPCALL_* kind, source address, the whole datagram


class PeerCounters(TypedDict):
    """Per neighbour with a session, since the session began."""

    frames_out: int  # elements sent (captured and relayed)
    bytes_out: int  # UDP payload bytes sent
    datagrams_out: int
    frames_in: int  # elements received (whole or reassembled)
    bytes_in: int  # UDP payload bytes of authentic datagrams
    datagrams_in: int


class Statistics(TypedDict):
    """A data plane's counters (both backends return this shape)."""

    frames_captured: int  # elements given to egress
    frames_delivered: int  # elements handed to the TAP
    frames_relayed: int  # element copies passed on to another peer
    upcalls: int  # datagrams handed to Python
    macs: int  # MAC table entries (expired ones count until the next sweep)
    mac_table_full: int  # MACs not learnt because the table was full
    icmp_frag_needed: int  # ICMP "fragmentation needed" replies written to the TAP
    egressed_by_rx_thread: int  # captured frames the RX thread sent right after a delivery
    drops: dict[str, int]  # by reason, keys DROP_REASONS
    peers: dict[int, PeerCounters]  # by peer name


class DataplaneLike(Protocol):
    """One router's data plane (see ``router/_fastpath.pyi`` for each method)."""

    @property
    def ourself(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def set_peer(
        self, name: int, conn_id: int, addr: Address, key: bytes | None, max_datagram: int,
        cipher: str = ...,
    ) -> None: ...

    def remove_peer(self, name: int) -> None: ...

    def set_routes(
        self, unicast: Mapping[int, int], broadcast: Mapping[int, Iterable[int]]
    ) -> None: ...

    def learn_mac(self, mac: bytes, peer: int, now: float) -> bool: ...

    def forget_mac(self, mac: bytes) -> bool: ...

    def lookup_mac(self, mac: bytes, now: float) -> int | None: ...

    def egress(self, frames: Sequence[bytes], now: float) -> list[Datagram]: ...

    def set_heartbeat_mac(self, mac: bytes | None) -> None: ...

    def set_kernel_peers(self, names: Iterable[int]) -> None: ...

    def write_tap(self, frame: bytes) -> bool: ...

    def take_local(self) -> list[bytes]: ...

    def ingress(
        self, datagrams: Sequence[tuple[Address, bytes]], now: float
    ) -> tuple[list[bytes], list[Datagram], list[Upcall]]: ...

    def deadline(self) -> float: ...

    def handle_timer(self, now: float) -> None: ...

    def statistics(self) -> Statistics: ...

    def start(self, tap_fd: int, udp_fd: int) -> None: ...

    def stop(self) -> None: ...

    def get_upcalls(self, timeout: float, limit: int = 256) -> list[Upcall]: ...


class DataplaneFactory(Protocol):
    """The ``Dataplane`` class of a backend."""

    def __call__(
        self, ourself: int, *, mac_expiry: float = ..., reassembly_timeout: float = ...
    ) -> DataplaneLike: ...


class Backend(Protocol):
    """What a data-plane backend module provides."""

    @property
    def THREADED(self) -> bool: ...  # True: start() runs native threads

    @property
    def DROP_REASONS(self) -> tuple[str, ...]: ...  # keys of statistics()["drops"]

    @property
    def CIPHERS(self) -> tuple[str, ...]: ...  # what set_peer's cipher may be

    @property
    def UPCALL_CONTROL(self) -> int: ...

    @property
    def UPCALL_UNKNOWN_CONN(self) -> int: ...

    @property
    def UPCALL_HEARTBEAT(self) -> int: ...

    @property
    def HEARTBEAT_ETHERTYPE(self) -> int: ...

    @property
    def VNET_HEADER_SIZE(self) -> int: ...

    @property
    def MAX_FRAME_SIZE(self) -> int: ...

    @property
    def MAX_ELEMENT_SIZE(self) -> int: ...

    @property
    def MIN_DATAGRAM_SIZE(self) -> int: ...

    @property
    def MAX_DATAGRAM_SIZE(self) -> int: ...

    @property
    def TTL(self) -> int: ...

    @property
    def Dataplane(self) -> DataplaneFactory: ...


def load_backend(name: str) -> Backend:
    """The backend called ``name`` ("native" or "reference").

    :class:`ConfigError` if the name is unknown, or if "native" is asked for and the
    extension is not built (the message says how to build it, or how to ask for the
    slow reference data plane explicitly).
    """
    if name == "native":
        try:
            from router import _fastpath
        except ImportError as exc:
            raise ConfigError(
                f"the compiled data plane router._fastpath cannot be loaded ({exc}); build "
                "it with 'make build', or ask for the pure-Python data plane by name "
                "('reference', about 100 times slower)") from None
        return _fastpath
    if name == "reference":
        from router.dataplane import reference

        return reference
    raise ConfigError(f"unknown data plane {name!r}: expected one of {', '.join(BACKENDS)}")
