"""One API client connection: h11 over a trio stream, every step bounded in size and time.

Deadlines (``ApiLimits`` in ``api.py``), so a slow client holds a slot for seconds, not
for as long as it likes:

* ``idle_timeout``: the first byte of a request must arrive within this long of the
  connection opening or of the previous reply (the keep-alive idle time); if none does,
  the connection is closed quietly;
* ``header_timeout``: the whole head, from its first byte; else 408;
* ``body_timeout``: the whole body, from the end of the head; else 408;
* ``send_timeout``: one reply (a client that does not read is dropped).

While a request is handled, :meth:`Connection.wait_gone` reads on: a client that closes
its end (EOF or reset) is gone, and its handler is cancelled (Go's ``http.Server``
cancels the request's context the same way). That is how an ``attach`` whose client was
killed gives up its pending allocation. What a client pipelines meanwhile is kept for h11,
up to one request's worth; beyond that, the connection is not read until the reply is out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import h11
import trio

from router.control.http import Reply, Request, error

RECV_CHUNK = 16 * 1024  # bytes per read
LINGER_SECONDS = 1.0  # after an error reply: how long to drain what the client still sends
LINGER_BYTES = 1024 * 1024  # ... and how much of it at most


@dataclass(frozen=True)
class Bounds:
    """The limits one connection is read under; sizes in bytes, times in seconds."""

    max_header_bytes: int
    max_body_bytes: int
    idle_timeout: float
    header_timeout: float
    body_timeout: float
    send_timeout: float


class Connection:
    """One client connection: h11 state plus the stream it talks over."""

    def __init__(self, stream: trio.abc.Stream, bounds: Bounds) -> None:
        self.stream = stream
        self.bounds = bounds
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=bounds.max_header_bytes)
        self.on_receive: Callable[[], None] | None = None  # after every read from the client

    async def _receive(self) -> bool:
        """Feed h11 the next chunk; False at end of stream."""
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        data = await self.stream.receive_some(RECV_CHUNK)
        self.conn.receive_data(bytes(data))
        if self.on_receive is not None:
            self.on_receive()
        return bool(data)

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def read_request(self) -> Request | Reply | None:
        """The next request, an error reply for a bad or slow one, or None (the client
        closed, or sent nothing within ``idle_timeout``)."""
        bounds = self.bounds
        deadline = trio.current_time() + bounds.idle_timeout
        phase = "idle"  # -> "head" at the first byte -> "body" at the end of the head
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                return error(exc.error_status_hint, f"bad request: {exc}", close=True)
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline):
                    if await self._receive() and phase == "idle":
                        phase, deadline = "head", trio.current_time() + bounds.header_timeout
                    continue
                if phase == "idle":
                    return None
                return error(408, f"request {phase} not received in time", close=True)
            if isinstance(event, h11.Request):
                head, phase = event, "body"
                deadline = trio.current_time() + bounds.body_timeout
                refused = self._check_head(event)
                if refused is not None:
                    return refused
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > bounds.max_body_bytes:
                    return self._too_large()
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return _request(head, bytes(body))
            else:  # ConnectionClosed
                return None

    def _check_head(self, head: h11.Request) -> Reply | None:
        limit = self.bounds.max_header_bytes
        if _head_size(head) > limit:
            return error(431, f"request headers too large (limit {limit} bytes)", close=True)
        length = _content_length(head)
        if length is not None and length > self.bounds.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> Reply:
        limit = self.bounds.max_body_bytes
        return error(413, f"request body too large (limit {limit} bytes)", close=True)

    async def wait_gone(self) -> None:
        """Return once the client has closed its end (module doc); sleeps forever if it
        pipelines more than one request's worth instead."""
        kept = 0
        limit = self.bounds.max_header_bytes + self.bounds.max_body_bytes
        while kept <= limit:
            try:
                data = await self.stream.receive_some(RECV_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.conn.receive_data(bytes(data))
            kept += len(data)
        await trio.sleep_forever()

    async def send_reply(self, reply: Reply) -> bool:
        """Send ``reply`` within ``send_timeout``; True if the connection can carry another
        request."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        body = reply.body.encode("utf-8")
        headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(body)))]
        if reply.allow:
            headers.append(("Allow", reply.allow))
        if reply.close:
            headers.append(("Connection", "close"))
        with trio.move_on_after(self.bounds.send_timeout):
            await self._send(h11.Response(status_code=reply.status, headers=headers))
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())
            states = self.conn.states  # both sides done: the connection may carry another
            if states[h11.SERVER] is h11.DONE and states[h11.CLIENT] is h11.DONE:
                self.conn.start_next_cycle()
                return True
        return False

    async def linger_and_close(self) -> None:
        """Half-close, then drain briefly, so the client reads our reply rather than a reset."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                if isinstance(self.stream, trio.SocketStream):
                    await self.stream.send_eof()
                drained = 0
                while drained < LINGER_BYTES:
                    data = await self.stream.receive_some(RECV_CHUNK)
                    if not data:
                        break
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(self.stream)


def _head_size(request: h11.Request) -> int:
    """Bytes of the request line and headers (h11 only bounds a head still incomplete)."""
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(name) + len(value) + 4 for name, value in request.headers)


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has already checked it is a number
    return None


def _request(head: h11.Request, body: bytes) -> Request:
    target = head.target.decode("ascii", errors="replace")
    headers = tuple((name.decode("ascii", "replace"), value.decode("latin-1"))
                    for name, value in head.headers)  # h11 gives names in lower case
    path, _, query = target.partition("?")
    return Request(method=head.method.decode("ascii", errors="replace"), path=path, body=body,
                   headers=headers, http_version=head.http_version.decode("ascii", "replace"),
                   query=query)
