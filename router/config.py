"""Every tunable of the router, as frozen dataclasses with units and defaults.

``cli/launch.py`` turns flags and environment variables into a :class:`RouterConfig`
(validating each value and raising :class:`~router.errors.ConfigError` that names the
flag); ``router/daemon.py`` builds every service from it. Defaults are Weave's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from router.dns.config import DnsConfig
from router.mesh.names import PeerName

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORT = 6783
DEFAULT_HTTP_ADDR = ("127.0.0.1", 6784)
DEFAULT_METRICS_ADDR = ("127.0.0.1", 6782)  # /metrics and /status (Weave's status port)
DEFAULT_DB_PATH = Path("/var/lib/weave-router/weave.db")
DEFAULT_API_SOCKET = Path("/run/weave-router/weave.sock")  # the CLI's first choice
DEFAULT_LOG_FILE = Path("/var/log/weave-router.log")
DEFAULT_IPALLOC_RANGE = ipaddress.IPv4Network("10.32.0.0/12")  # Weave's --ipalloc-range
DEFAULT_MTU = 1376  # Weave's default; frames larger than a path's MTU are carried in pieces
PROTOCOL_MIN_VERSION = 1
PROTOCOL_MAX_VERSION = 2  # 2: topology digests (router/mesh/topology_gossip.py)


@dataclass(frozen=True)
class MeshTimings:
    """Timers of the mesh control plane, all in seconds."""

    handshake_timeout: float = 10.0
    tcp_heartbeat_interval: float = 30.0
    tcp_timeout: float = 60.0
    gossip_interval: float = 30.0
    backoff_initial: float = 2.0
    backoff_factor: float = 1.5
    backoff_max: float = 360.0
    backoff_jitter: float = 0.1  # +-10% of each delay
    backoff_reset_after: float = 60.0  # a connection that lived this long resets the backoff
    udp_heartbeat_fast: float = 0.5  # while pending
    udp_heartbeat_slow: float = 10.0  # once established
    udp_heartbeat_timeout: float = 60.0  # pending this long, or silent this long: connection fails
    accept_rate: float = 20.0  # inbound connections per second, sustained
    accept_burst: int = 50
    fastdp_heartbeat_timeout: float = 5.0  # no fastdp heartbeat this long: the peer leaves fastdp
    fastdp_hold: float = 10.0  # heartbeats heard this long after a loss: back to fastdp
    fastdp_retry_max: float = 20.0  # longest gap between fastdp probes while the path is lost


@dataclass(frozen=True)
class MeshConfig:
    """Who we are on the mesh and how we find and talk to peers."""

    name: PeerName | None = None  # None: persisted, or random on first launch
    nickname: str = ""
    host: str = "0.0.0.0"  # listen address for TCP and UDP (--host)
    port: int = DEFAULT_PORT
    password: bytes | None = None
    trusted_subnets: tuple[IPNetwork, ...] = ()
    peers: tuple[str, ...] = ()  # HOST[:PORT] targets from the command line
    resume: bool = False  # use the persisted targets instead of ``peers``
    discovery: bool = True
    conn_limit: int = 200
    timings: MeshTimings = field(default_factory=MeshTimings)


@dataclass(frozen=True)
class RouterConfig:
    """Everything ``weave-router launch`` was told."""

    mesh: MeshConfig = field(default_factory=MeshConfig)
    db_path: Path = DEFAULT_DB_PATH
    log_file: Path | None = None  # None: stderr
    log_level: str = "info"
    http_addr: tuple[str, int] | None = DEFAULT_HTTP_ADDR  # None: no API (simulations)
    api_socket: Path | None = None  # the API's unix socket (--socket); None: none
    metrics_addr: tuple[str, int] | None = DEFAULT_METRICS_ADDR  # --metrics-addr; None: none
    mtu: int = DEFAULT_MTU  # bytes: the bridge's and every container's ethwe MTU (--mtu)
    dataplane: str = "native"  # "reference": the pure-Python twin, ~100x slower (by name only)
    no_fastdp: bool = False  # --no-fastdp / WEAVE_NO_FASTDP: every peer on sleeve (docs/fastdp.md)
    # --ipalloc-range; None: ``--ipalloc-range ''``, the router runs without IPAM (Weave's)
    ipalloc_range: ipaddress.IPv4Network | None = DEFAULT_IPALLOC_RANGE
    ipalloc_default_subnet: ipaddress.IPv4Network | None = None  # None: the whole range
    # --ipalloc-init as given (``consensus[=N]``, ``seed=NAME,...``, ``observer``; parsed by
    # router.ipam.parse_init_mode); --init-peer-count N is stored as ``consensus=N``.
    ipalloc_init: str = "consensus"
    dns: DnsConfig | None = field(default_factory=DnsConfig)  # None: --no-dns


def default_api_socket(db_path: Path) -> Path:
    """The API socket of a router whose database is ``db_path`` (``--socket`` unset):
    :data:`DEFAULT_API_SOCKET` for the default database, else ``weave.sock`` style next
    to it (``<db without suffix>.sock``), so routers with their own databases never share
    a socket."""
    if db_path == DEFAULT_DB_PATH:
        return DEFAULT_API_SOCKET
    sock = db_path.with_suffix(".sock")
    return sock if sock != db_path else db_path.with_name(db_path.name + ".api.sock")
