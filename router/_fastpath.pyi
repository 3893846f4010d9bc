"""Typed API of the compiled data plane ``router._fastpath`` (sources in ``_fastpath/``).

Import it only through ``router.dataplane.backend.load_backend("native")``. The
pure-Python twin ``router.dataplane.reference`` has the same API. Times (``now``) are
seconds on the monotonic clock (``time.monotonic()``); peer names are 48-bit ints.
"""

from collections.abc import Iterable, Mapping, Sequence

from router.dataplane.backend import Address, Datagram, Statistics, Upcall

THREADED: bool  # True: start() runs the pipeline in native threads
CIPHERS: tuple[str, ...]  # ("aes256gcm", "secretbox"): set_peer's cipher (router.crypto.ciphers)
DROP_REASONS: tuple[str, ...]  # keys of statistics()["drops"], in a fixed order
UPCALL_CONTROL: int  # 1: a non-frame datagram (heartbeat) for the sleeve demux
UPCALL_UNKNOWN_CONN: int  # 2: frames for a connection id the data plane does not know
UPCALL_HEARTBEAT: int  # 3: a fastdp heartbeat frame read from the TAP (no vnet header)
HEARTBEAT_ETHERTYPE: int  # 0x88B5
VNET_HEADER_SIZE: int  # 10: struct virtio_net_hdr before every frame
MAX_FRAME_SIZE: int  # 65553: largest Ethernet frame (a GSO super-frame)
MAX_ELEMENT_SIZE: int  # VNET_HEADER_SIZE + MAX_FRAME_SIZE
MIN_DATAGRAM_SIZE: int  # 512: smallest max_datagram of a peer
MAX_DATAGRAM_SIZE: int  # 65507: largest UDP payload
TTL: int  # 16: hops a frame may take

def wire_constants() -> dict[str, int]:
    """The sleeve format's numbers as compiled, under their names in router.wire.sleeve
    (packet types as TYPE_<name>; KEY_SIZE, NONCE_SIZE, GCM_NONCE_SIZE, PLAIN_CONFIRM
    under router.crypto's)."""

class Dataplane:
    """The sleeve data plane of one router: tables, batch functions and threads."""

    def __init__(
        self, ourself: int, *, mac_expiry: float = 600.0, reassembly_timeout: float = 1.0
    ) -> None: ...
    @property
    def ourself(self) -> int: ...
    @property
    def running(self) -> bool: ...

    # tables (thread-safe: allowed while the threads run)
    def set_peer(
        self, name: int, conn_id: int, addr: Address, key: bytes | None, max_datagram: int,
        cipher: str = "secretbox",
    ) -> None:
        """Add or update the session with neighbour ``name``.

        ``addr``: (IP literal, port); ``key``: 32-byte frame key
        (``router.crypto.ciphers.frame_key``), None = unencrypted; ``max_datagram``:
        largest UDP payload for the path, MIN..MAX_DATAGRAM_SIZE; ``cipher``: one of
        CIPHERS. A new conn_id, key or cipher starts a fresh session (counters, replay
        window, partial frames).
        LocalProtocolError on bad arguments, a conn_id of another peer, or a full table.
        """
    def remove_peer(self, name: int) -> None:
        """End the session with ``name``; no-op if none."""
    def set_routes(
        self, unicast: Mapping[int, int], broadcast: Mapping[int, Iterable[int]]
    ) -> None:
        """Replace all routes: dest -> next hop; origin -> hops its broadcasts go to."""
    def learn_mac(self, mac: bytes, peer: int, now: float) -> bool:
        """MAC -> peer (ourself = local); False if the table is full."""
    def forget_mac(self, mac: bytes) -> bool:
        """Forget a MAC; True if it was known."""
    def lookup_mac(self, mac: bytes, now: float) -> int | None:
        """The peer behind a MAC, None if unknown or not seen for mac_expiry seconds."""

    # fastdp heartbeats (router/overlay/fastdp/heartbeat.py)
    def set_heartbeat_mac(self, mac: bytes | None) -> None:
        """Frames from the TAP of ethertype 0x88B5 to ``mac`` become UPCALL_HEARTBEAT
        upcalls (source ("", 0), the Ethernet frame) from get_upcalls(), at most 128
        waiting (more: queue_full drops), instead of being forwarded; None: none."""
    def set_kernel_peers(self, names: Iterable[int]) -> None:
        """Origins the kernel (fastdp's VXLAN device) delivers here: their frames that
        arrive over the sleeve are relayed as usual but not delivered into the TAP (a
        ``kernel_peer`` drop), so no frame reaches a container twice."""
    def write_tap(self, frame: bytes) -> bool:
        """Write an Ethernet frame into the TAP (any thread); False if the TAP refused
        it (a tap_write drop). Not running: kept for take_local(), zero vnet header."""

    # batches driven by Python (LocalProtocolError while the threads run)
    def egress(self, frames: Sequence[bytes], now: float) -> list[Datagram]:
        """Captured frames (vnet header + Ethernet frame) -> datagrams to send."""
    def take_local(self) -> list[bytes]:
        """Frames egress() made for the local TAP since the last call (ICMP
        "fragmentation needed" for a DF packet too big for its path), oldest first.
        The threads write theirs to the TAP themselves."""
    def ingress(
        self, datagrams: Sequence[tuple[Address, bytes]], now: float
    ) -> tuple[list[bytes], list[Datagram], list[Upcall]]:
        """Received datagrams -> (frames for the TAP, datagrams to relay, upcalls)."""
    def deadline(self) -> float:
        """Absolute time handle_timer() is next due; inf if never."""
    def handle_timer(self, now: float) -> None:
        """Expire partial frames and sweep expired MACs."""
    def statistics(self) -> Statistics:
        """Counters (allowed while the threads run)."""

    # threads
    def start(self, tap_fd: int, udp_fd: int) -> None:
        """Run TX and RX threads on a TAP (IFF_VNET_HDR) and the sleeve UDP socket."""
    def stop(self) -> None:
        """Stop and join the threads; no-op if not running."""
    def get_upcalls(self, timeout: float, limit: int = 256) -> list[Upcall]:
        """Wait up to ``timeout`` seconds (GIL released) for upcalls; oldest first."""
