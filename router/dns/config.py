"""weaveDNS's settings (``launch --dns-*``, ``--resolv-conf``), with Weave's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DOMAIN = "weave.local."
DEFAULT_TTL = 1  # seconds, as Weave's --dns-ttl
DEFAULT_RESOLV_CONF = Path("/etc/resolv.conf")
# Where weaveDNS listens when --dns-listen-address is not given: this link-local address
# on the weave bridge; attach routes it into each container (docs/dns.md says why).
DEFAULT_ADDRESS = "169.254.255.53"
DNS_PORT = 53


@dataclass(frozen=True)
class DnsConfig:
    """What weaveDNS serves and where; times in seconds."""

    domain: str = DEFAULT_DOMAIN  # fully qualified, lowercase, trailing dot
    listen: tuple[str, int] | None = None  # None: DEFAULT_ADDRESS:53 on the weave bridge
    ttl: int = DEFAULT_TTL
    resolv_conf: Path = DEFAULT_RESOLV_CONF
    upstream_timeout: float = 2.0  # per upstream server and query
    max_in_flight: int = 256  # forwarded queries at once; more get SERVFAIL (counted)
    max_tcp_clients: int = 64  # TCP connections at once; more are closed (counted)
    tcp_idle_timeout: float = 10.0

    @property
    def on_bridge(self) -> bool:
        """Whether we listen on the default address on the bridge (not --dns-listen-address)."""
        return self.listen is None

    @property
    def address(self) -> tuple[str, int]:
        """Where the listeners bind."""
        return self.listen if self.listen is not None else (DEFAULT_ADDRESS, DNS_PORT)
