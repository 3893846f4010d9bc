"""The upstream servers: ``nameserver`` lines of ``--resolv-conf``, re-read when it changes.

Sans-IO parsing (:func:`parse_resolv_conf`) and a small reader (:class:`ResolvConf`) that
looks at the file's mtime, size and inode at most once a second and re-parses it when
they changed. Our own listen address (and, listening on every address, loopback) is left
out, so a host whose resolv.conf points at weaveDNS does not forward to itself.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("weave-router.dns")

DNS_PORT = 53
RECHECK_INTERVAL = 1.0  # seconds between looks at the file
MAX_UPSTREAMS = 3  # as glibc's MAXNS

Server = tuple[str, int]


def parse_resolv_conf(text: str, *, ourselves: Callable[[str], bool] = lambda _a: False
                      ) -> list[Server]:
    """The ``nameserver`` addresses of a resolv.conf, in order, at most :data:`MAX_UPSTREAMS`,
    without those ``ourselves`` recognises and without malformed ones."""
    servers: list[Server] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(fields[1].split("%", 1)[0])
        except ValueError:
            continue
        if ourselves(str(address)) or (str(address), DNS_PORT) in servers:
            continue
        servers.append((str(address), DNS_PORT))
        if len(servers) == MAX_UPSTREAMS:
            break
    return servers


def not_us(listen: Server) -> Callable[[str], bool]:
    """The ``ourselves`` test for a server listening on ``listen`` (port 53 only: a DNS
    server on another port cannot be named in resolv.conf)."""
    host, port = listen
    if port != DNS_PORT:
        return lambda _a: False
    if host in ("0.0.0.0", "::"):
        return lambda a: ipaddress.ip_address(a).is_loopback or a == host
    return lambda a: a == host


class ResolvConf:
    """The upstream servers of one resolv.conf file, kept current."""

    def __init__(self, path: Path, listen: Server) -> None:
        self.path = path
        self._ourselves = not_us(listen)
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -RECHECK_INTERVAL
        self._servers: list[Server] = []
        self.reloads = 0

    def servers(self, now: float) -> list[Server]:
        """The servers as of ``now`` (monotonic seconds): re-read if the file changed."""
        if now - self._checked >= RECHECK_INTERVAL:
            self._checked = now
            self._refresh()
        return list(self._servers)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            if self._stamp is not None or self.reloads == 0:
                log.warning("cannot read %s (%s): no upstream servers", self.path, exc)
            self._stamp, self._servers = None, []
            self.reloads += 1
            return
        self._stamp = stamp
        self._servers = parse_resolv_conf(text, ourselves=self._ourselves)
        self.reloads += 1
        log.info("upstream servers from %s: %s", self.path,
                 ", ".join(h for h, _ in self._servers) or "none")
