"""What the router tells systemd (``Type=notify``, sd_notify(3)): ``READY=1`` once it
serves, ``STATUS=`` a one-line summary that ``systemctl status`` shows, ``STOPPING=1``.

Pure: the datagram's text from a :class:`~router.status.Status`; ``daemon.py`` sends it
to ``$NOTIFY_SOCKET`` (a plain AF_UNIX datagram, no libsystemd).
"""

from __future__ import annotations

from router.status import Status

STATUS_INTERVAL = 5.0  # seconds between STATUS= updates while running


def status_line(status: Status) -> str:
    """``3 peers, 2 established, IPAM ready`` (IPAM left out when it does not run)."""
    router = status.router
    peers = max(1, len(router.peers))  # ourselves, before the topology knows anyone
    established = sum(1 for c in router.connections if c.state == "established")
    parts = [f"{peers} peer{'s' if peers != 1 else ''}", f"{established} established"]
    failed = sum(1 for c in router.connections if c.state == "failed")
    if failed:
        parts.append(f"{failed} failed")
    if status.ipam is not None:
        parts.append(f"IPAM {status.ipam.status}")
    return ", ".join(parts)


def notify_message(status: Status, *, ready: bool = False) -> str:
    """The datagram: ``READY=1`` (first time) and ``STATUS=...`` (newlines removed)."""
    line = " ".join(status_line(status).split())
    return ("READY=1\n" if ready else "") + f"STATUS={line}"
