"""The API server: listeners, lanes, and one task per client connection.

Pipeline, per accepted connection (a task in the server's nursery):

1. **classify**  unix socket -> lane ``unix``; TCP -> the uid owning the client's socket
   (``peer_cred.py``): 0 -> lane ``root``, another uid -> ``general`` as ``uid N``, not on
   this host -> ``general`` as its address;
2. **admit**     ``admission.py``: maybe evict the lane's (or the client's) longest-reading
   connection, or refuse with 503 (warnings about refusals are rate-limited);
3. **serve**     read a request (``connection.py``: bounded in size and time), check it
   (``guard.py``), dispatch it while watching for the client to go away (then the
   handler is cancelled), send the reply; keep the connection while both sides want to.

The unix socket (``unix_socket.py``) is bound before the TCP listeners, so a second
router on the same socket fails before it takes the TCP port.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from router.control import guard
from router.control.admission import Admission, Admitted, LaneLimit, Slot
from router.control.connection import Bounds, Connection
from router.control.http import Reply, Request, error
from router.control.peer_cred import tcp_peer_uid, unix_peer_uid

log = logging.getLogger("weave-router.api")

WARN_INTERVAL = 10.0  # seconds between warnings about refused or evicted clients

Dispatch = Callable[[Request], Awaitable[Reply]]


@dataclass(frozen=True)
class ServerLimits:
    """What ``serve`` needs of ``api.ApiLimits``: per-connection bounds, per-lane limits."""

    bounds: Bounds
    lanes: dict[str, LaneLimit]


class Server:
    """Admits clients into lanes and serves each until it goes away."""

    def __init__(self, dispatch: Dispatch, limits: ServerLimits, *, http_host: str,
                 port: int) -> None:
        self.dispatch = dispatch
        self.bounds = limits.bounds
        self.admission = Admission(dict(limits.lanes))
        self.http_host = http_host
        self.port = port
        self.errors = 0  # connections that ended in an unexpected exception
        self._scopes: dict[int, trio.CancelScope] = {}
        self._next_warning = 0.0
        self._unwarned = 0

    def statistics(self) -> dict[str, int]:
        """Admission counters and connections per lane, and unexpected failures."""
        return {**self.admission.statistics(), "errors": self.errors}

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one client connection; nothing escapes (the server never dies of a client)."""
        client = Connection(stream, self.bounds)
        try:
            lane, who, listener = self._classify(stream.socket)
            decision = self.admission.admit(lane, who, trio.current_time())
            if not isinstance(decision, Admitted):
                self._warn(f"refused an API client in lane {lane}: {decision.reason}")
                await client.send_reply(error(503, decision.reason, close=True))
                await client.linger_and_close()
                return
            for victim in decision.evict:
                scope = self._scopes.pop(victim.ident, None)
                if scope is not None:
                    scope.cancel()
            if decision.evict:
                self._warn(f"evicted a slow API client in lane {lane} to admit {who}")
            await self._admitted(client, decision.slot, listener)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            self.errors += 1
            log.exception("control API: client connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _admitted(self, client: Connection, slot: Slot,
                        listener: guard.Listener | None) -> None:
        with trio.CancelScope() as scope:
            self._scopes[slot.ident] = scope
            try:
                await self._serve(client, slot, listener)
            finally:
                self._scopes.pop(slot.ident, None)
                self.admission.release(slot)

    def _classify(self, sock: trio.socket.SocketType) -> tuple[str, str, guard.Listener | None]:
        """Lane, client name and (TCP) the listener the Host header must name."""
        if sock.family == socket.AF_UNIX:
            uid = unix_peer_uid(sock)
            return "unix", f"uid {uid}", None
        local_ip = str(sock.getsockname()[0])
        listener = guard.Listener.of(self.http_host, local_ip, self.port)
        uid = tcp_peer_uid(sock)
        if uid == 0:
            return "root", "uid 0", listener
        if uid is not None:
            return "general", f"uid {uid}", listener
        return "general", str(sock.getpeername()[0]), listener

    def _warn(self, line: str) -> None:
        """Log ``line`` at most every WARN_INTERVAL seconds, with how many were not logged."""
        now = trio.current_time()
        if now < self._next_warning:
            self._unwarned += 1
            return
        more = f" (and {self._unwarned} more like it)" if self._unwarned else ""
        log.warning("control API: %s%s", line, more)
        self._unwarned, self._next_warning = 0, now + WARN_INTERVAL

    async def _serve(self, client: Connection, slot: Slot,
                     listener: guard.Listener | None) -> None:
        while True:
            self.admission.reading(slot, trio.current_time())
            request = await client.read_request()
            if request is None:
                return
            self.admission.busy(slot, trio.current_time())
            reply = request if isinstance(request, Reply) else guard.check(request, listener)
            if reply is None:
                assert isinstance(request, Request)
                reply = await self._dispatch_while_connected(client, request)
                if reply is None:
                    return  # the client went away: its handler was cancelled
            try:
                keep = await client.send_reply(reply)
            finally:
                if reply.after is not None:
                    reply.after()
            if not keep:
                await client.linger_and_close()
                return

    async def _dispatch_while_connected(self, client: Connection,
                                        request: Request) -> Reply | None:
        """The reply to ``request``, or None if the client closed its end first."""
        reply: Reply | None = None
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                await client.wait_gone()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            reply = await self.dispatch(request)
            nursery.cancel_scope.cancel()
        if reply is None:
            log.info("control API: client of %s %s went away; request cancelled",
                     request.method, request.path)
        return reply
