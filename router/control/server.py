"""The API server: listeners, lanes, and one task per admitted client connection.

Pipeline:

1. **accept**    each listener's loop takes every connection waiting in the kernel's queue
   at once (up to :data:`ACCEPT_BATCH`), without yielding, so a storm of connections
   from one user cannot bury another's in the queue for long;
2. **classify**  unix socket -> lane ``unix``; TCP -> the uid owning the client's socket
   (``peer_cred.py``): 0 -> lane ``root``, another uid -> ``general`` as ``uid N``, not on
   this host -> ``general`` as its address. A batch is admitted in lane order (``unix``,
   ``root``, ``general``), and within a lane the connections whose request head is all
   there already (a peek) first: quick requests before slow ones;
3. **admit**     ``admission.py``: maybe evict the lane's (or the client's) longest-reading
   connection, or refuse: a one-line 503 is written without waiting and the connection
   closed at once, so a refusal costs no task (warnings about them are rate-limited);
4. **serve**     (a task) read a request (``connection.py``: bounded in size and time),
   check it (``guard.py``), dispatch it while watching for the client to go away (then
   the handler is cancelled), send the reply; keep the connection while both want to.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from router.control import guard
from router.control.admission import Admission, Admitted, LaneLimit, Slot
from router.control.connection import Bounds, Connection
from router.control.http import Reply, Request
from router.control.peer_cred import tcp_peer_uid, unix_peer_uid

log = logging.getLogger("weave-router.api")

WARN_INTERVAL = 10.0  # seconds between warnings about refused or evicted clients
ACCEPT_BATCH = 512  # connections taken from a listener's queue in one go
ACCEPT_PAUSE = 0.1  # seconds to wait after running out of file descriptors
RECV_PEEK = 4096  # bytes looked at to tell whether a request head is all there
SECOND_LOOK = 0.25  # seconds a newcomer refused before its request arrived may wait for it
MAX_SECOND_LOOKS = 256  # newcomers waiting for that second look at once ...
MAX_SECOND_LOOKS_PER_CLIENT = 8  # ... of one client in lane general (a storm uses up its own)
LANE_ORDER = {"unix": 0, "root": 1, "general": 2}
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

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
        self._second_looks: dict[str, int] = {}  # per client: newcomers in _look_again

    def statistics(self) -> dict[str, int]:
        """Admission counters and connections per lane, and unexpected failures."""
        return {**self.admission.statistics(), "errors": self.errors}

    async def serve(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        """Accept from ``listener`` (a non-blocking stdlib socket) until cancelled; each
        admitted client is served by a task in ``nursery``."""
        while True:
            await trio.lowlevel.wait_readable(listener)
            batch, starved = self._accept_batch(listener)
            classified = []
            for conn in batch:
                try:
                    classified.append((conn, *self._classify(conn), _head_is_in(conn)))
                except OSError:  # gone already (getpeername of a closed socket)
                    conn.close()
            classified.sort(key=lambda item: (LANE_ORDER[item[1]], not item[4]))
            for conn, lane, who, checker, ready in classified:
                self._admit(conn, lane, who, checker, nursery, ready=ready)
            await trio.sleep(ACCEPT_PAUSE if starved else 0)

    def _accept_batch(self, listener: socket.socket) -> tuple[list[socket.socket], bool]:
        """What waits in the queue (at most ACCEPT_BATCH); True if out of descriptors."""
        batch: list[socket.socket] = []
        while len(batch) < ACCEPT_BATCH:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._warn(f"cannot accept API clients: {exc.strerror}")
                    return batch, True
                continue  # ECONNABORTED and the like: that client is gone
            conn.setblocking(False)
            batch.append(conn)
        return batch, False

    def _admit(self, conn: socket.socket, lane: str, who: str,
               checker: guard.Listener | None, nursery: trio.Nursery, *, ready: bool,
               second_look: bool = True) -> None:
        decision = self.admission.admit(lane, who, trio.current_time(), ready=ready)
        if not isinstance(decision, Admitted):
            if not ready and second_look and self._may_look_again(lane, who):
                # Accepted a moment before its request arrived? Look again shortly: if
                # its head is all there by then, it is a quick request after all.
                self._second_looks[who] = self._second_looks.get(who, 0) + 1
                nursery.start_soon(self._look_again, conn, lane, who, checker, nursery)
                return
            self._warn(f"refused an API client in lane {lane}: {decision.reason}")
            _refuse_now(conn, decision.reason)
            return
        for victim in decision.evict:
            scope = self._scopes.pop(victim.ident, None)
            if scope is not None:
                scope.cancel()
        if decision.evict:
            self._warn(f"evicted a slow API client in lane {lane} to admit {who}")
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
        nursery.start_soon(self._handle, stream, decision.slot, checker)

    def _may_look_again(self, lane: str, who: str) -> bool:
        if sum(self._second_looks.values()) >= MAX_SECOND_LOOKS:
            return False
        return lane != "general" or self._second_looks.get(who, 0) < MAX_SECOND_LOOKS_PER_CLIENT

    async def _look_again(self, conn: socket.socket, lane: str, who: str,
                          checker: guard.Listener | None, nursery: trio.Nursery) -> None:
        try:
            with trio.move_on_after(SECOND_LOOK):  # for its first bytes (a quick client
                await trio.lowlevel.wait_readable(conn)  # sends its head in one go)
            ready = _head_is_in(conn)
            if not ready:  # a slow client: no second chance
                _refuse_now(conn, "too many API clients waiting for their requests")
                return
        except OSError:  # the client is gone
            conn.close()
            return
        except BaseException:  # the server stops
            conn.close()
            raise
        finally:
            self._second_looks[who] -= 1
            if not self._second_looks[who]:
                del self._second_looks[who]
        self._admit(conn, lane, who, checker, nursery, ready=ready, second_look=False)

    async def _handle(self, stream: trio.SocketStream, slot: Slot,
                      checker: guard.Listener | None) -> None:
        """Serve one client connection; nothing escapes (the server never dies of a client)."""
        client = Connection(stream, self.bounds)
        try:
            await self._admitted(client, slot, checker)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            self.errors += 1
            log.exception("control API: client connection failed")
        finally:
            self.admission.release(slot)
            await trio.aclose_forcefully(stream)

    async def _admitted(self, client: Connection, slot: Slot,
                        listener: guard.Listener | None) -> None:
        client.on_receive = functools.partial(self.admission.settled, slot)
        with trio.CancelScope() as scope:
            self._scopes[slot.ident] = scope
            try:
                await self._serve(client, slot, listener)
            finally:
                self._scopes.pop(slot.ident, None)
                self.admission.release(slot)

    def _classify(self, sock: socket.socket) -> tuple[str, str, guard.Listener | None]:
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


def _refuse_now(conn: socket.socket, reason: str) -> None:
    """Write a one-line 503 if the socket takes it at once, then close."""
    body = f"{reason}\n".encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        conn.send(head + body)
        conn.shutdown(socket.SHUT_WR)
        for _ in range(4):  # what it sent already: unread, it would make close() a reset
            if not conn.recv(65536):
                break
    except OSError:
        pass
    conn.close()


def _head_is_in(conn: socket.socket) -> bool:
    """True if a whole request head waits in the socket already (a quick request)."""
    try:
        return b"\r\n\r\n" in conn.recv(RECV_PEEK, socket.MSG_PEEK)
    except BlockingIOError:
        return False
