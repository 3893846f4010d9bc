"""Being told when nftables changes in this namespace, instead of reading tables back
every second.

The router keeps three tables whole (its own ``inet weave-router``, fastdp's ``bridge
weave-fastdp`` and, with a password, ``inet weave-vxlan-guard``): a ``nft flush ruleset``
or a firewall reload must not leave them gone. Reading a table costs an ``nft`` process
(about 1 ms of the router's CPU and 2.4 ms of the child's, measured here), so reading
each second cost an idle router more than anything else it did in a second.

The kernel announces every nftables transaction on the netlink multicast group
``NFNLGRP_NFTABLES`` (``NETLINK_NETFILTER``) to whoever listens in the namespace: new and
deleted tables, chains and rules, then the new generation. :class:`NftEvents` listens,
without decoding what it hears: any message (or a lost one: ``ENOBUFS``) bumps
:attr:`NftEvents.generation`, and the owners of the tables read theirs back then, and
only then (plus a slow safety check). Our own changes are heard too; the read that follows
finds the table as written and does nothing.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

log = logging.getLogger("weave-router.nft")

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
RECEIVE_BUFFER = 1 << 20  # bytes: a flush of a big ruleset is heard without loss
READ_SIZE = 1 << 16
SAFETY_INTERVAL = 60.0  # seconds between the owners' reads while nothing is heard


class NftEvents:
    """A generation number that grows whenever nftables changes in this namespace."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.generation = 0
        self._bumped = trio.Event()

    @classmethod
    def open(cls) -> NftEvents:
        """Listen in the calling thread's namespace; OSError if the kernel refuses."""
        sock = socket.socket(socket.AF_NETLINK,
                             socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self._sock.close()

    async def wait(self, since: int, timeout: float) -> int:
        """The generation, once it is past ``since`` or ``timeout`` seconds have passed."""
        with trio.move_on_after(timeout):
            while self.generation == since:
                await self._bumped.wait()
        return self.generation

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Hear notifications until cancelled (then the socket is closed). A socket error
        other than lost notifications ends the listening, not the router: the owners then
        read their tables on their safety interval only (logged)."""
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(self._sock)
                try:
                    heard = self._drain()
                except OSError as exc:
                    log.error("nftables notifications stopped (%s): tables are read back"
                              " only every minute", exc.strerror or exc)
                    self._bump()
                    return
                if heard:
                    self._bump()
        finally:
            self.close()

    def _bump(self) -> None:
        self.generation += 1
        self._bumped.set()
        self._bumped = trio.Event()

    def _drain(self) -> bool:
        """Read everything waiting; True if anything was heard (or lost)."""
        heard = False
        while True:
            try:
                if not self._sock.recv(READ_SIZE):
                    return heard
            except BlockingIOError:
                return heard
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                log.debug("nftables notifications lost (ENOBUFS): tables will be read back")
            heard = True


def open_nft_events() -> NftEvents | None:
    """:meth:`NftEvents.open`, or None (logged) if this kernel will not tell us: the
    tables are then read back on a short interval instead."""
    try:
        return NftEvents.open()
    except OSError as exc:
        log.warning("cannot listen for nftables changes (%s): reading tables back on a timer",
                    exc.strerror or exc)
        return None
