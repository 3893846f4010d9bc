"""The control API: HTTP/1.1 (h11 over trio) on ``--http-addr``, default 127.0.0.1:6784.

Every CLI command but ``launch --foreground`` is a client of this. Routes (paths as Weave's):

======  ==============================  =========================================
GET     /status                         text layout of ``status`` (503 until ready)
GET     /status/targets|connections|peers  the other ``status`` layouts (503 until ready)
GET     /report                         the JSON report (application/json)
POST    /connect                        form ``peer=A&peer=B&replace=true``
POST    /forget                         form ``peer=A&peer=B``
POST    /stop                           our addition: answer 200, then stop gracefully
======  ==============================  =========================================

Errors are a status code and a one-line ``text/plain`` body naming the problem: 400 for a
bad form or a :class:`~router.errors.ConfigError` from the router (e.g. a bad peer), 404
unknown path, 405 wrong method (with ``Allow``), 408 request not received in time, 413
request too large, 431 headers too large, 503 not ready / too many clients, 500 for
anything unexpected (the traceback is logged; the server lives on).

Pipeline, per client connection (one task each, in the server's nursery):

1. read one request (head and body) within ``read_timeout``; the head is bounded by
   h11's ``max_incomplete_event_size``, the body by ``max_body_bytes``;
2. dispatch it to the route's handler, which calls the :class:`RouterControl`;
3. send the reply; keep the connection for the next request unless either side said
   ``close`` or the request was bad (then: half-close, drain briefly, close).

Bounds: at most ``max_clients`` connections at once (more are answered 503 and closed,
a counted refusal); every read is bounded in size and time.
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import h11
import trio

from router.containers.service import Attached
from router.control import ipam_api
from router.control.layouts import VIEWS
from router.control.report import render_report
from router.errors import ConfigError
from router.ipam.service import IpamService
from router.status import Status

log = logging.getLogger("weave-router.api")

RECV_CHUNK = 16 * 1024  # bytes per read
LINGER_SECONDS = 1.0  # after an error reply: how long to drain what the client still sends
LINGER_BYTES = 1024 * 1024  # ... and how much of it at most
MAX_FORM_FIELDS = 1000  # fields in one form body
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


class RouterControl(Protocol):
    """What the API asks of the router (``router/daemon.py`` implements it)."""

    def snapshot(self) -> Status:
        """The current status; ``ready`` False while services are still starting."""
        ...

    async def connect(self, peers: list[str], replace: bool) -> None:
        """Add connection targets (ConfigError for a bad peer address)."""
        ...

    async def forget(self, peers: list[str]) -> None:
        """Drop connection targets."""
        ...

    def request_stop(self) -> None:
        """Begin a graceful stop (returns at once)."""
        ...

    @property
    def ipam(self) -> IpamService | None:
        """The allocator behind /ip, /ring and /peer (None: those answer 503)."""
        ...

    def request_reset(self) -> None:
        """Stop, then remove the bridge, devices and data (returns at once)."""
        ...

    async def attach(self, container: str, addrs: list[str], *,
                     multicast_route: bool) -> Attached:
        """Attach a container (ConfigError for a bad container or address)."""
        ...

    async def detach(self, container: str, addrs: list[str]) -> Attached | None:
        """Take addresses off a container (all: it leaves the network)."""
        ...

    async def ps(self) -> list[Attached]:
        """The attached containers."""
        ...


@dataclass(frozen=True)
class ApiLimits:
    """Bounds of the API server; sizes in bytes, times in seconds."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    read_timeout: float = 10.0  # to receive one whole request (also the keep-alive idle time)
    max_clients: int = 64


@dataclass(frozen=True)
class Reply:
    """A response: status code, body, and an action to run once it was sent."""

    status: int
    body: str
    content_type: str = TEXT
    allow: str = ""  # the Allow header of a 405
    close: bool = False  # close the connection after this reply
    after: Callable[[], None] | None = None


@dataclass(frozen=True)
class Request:
    """One received request: method, path (query stripped) and body."""

    method: str
    path: str
    body: bytes
    query: str = ""  # what followed "?" in the target (e.g. ``force=true``)


def error(status: int, message: str, *, close: bool = False) -> Reply:
    """A one-line text error reply."""
    return Reply(status, f"{message}\n", close=close)


def parse_form(body: bytes, allowed: frozenset[str]) -> dict[str, list[str]]:
    """Decode an ``application/x-www-form-urlencoded`` body; ConfigError names the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("form body is not UTF-8") from exc
    try:
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, strict_parsing=bool(text),
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError as exc:
        raise ConfigError(f"malformed form body: {exc}") from exc
    fields: dict[str, list[str]] = {}
    for key, value in pairs:
        if key not in allowed:
            raise ConfigError(f"unknown form field {key!r}")
        fields.setdefault(key, []).append(value)
    return fields


def _parse_bool(name: str, values: list[str]) -> bool:
    if not values:
        return False
    if len(values) > 1:
        raise ConfigError(f"form field {name!r} given more than once")
    value = values[0].lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise ConfigError(f"form field {name!r}: {values[0]!r} is not true or false")


Handler = Callable[[RouterControl, Request], Awaitable[Reply]]


def _status_handler(view: str) -> Handler:
    render = VIEWS[view]

    async def handle(control: RouterControl, request: Request) -> Reply:
        status = control.snapshot()
        if not status.ready:
            return error(503, "not ready")
        return Reply(200, render(status))

    return handle


async def _report(control: RouterControl, request: Request) -> Reply:
    return Reply(200, render_report(control.snapshot()), content_type=JSON)


async def _connect(control: RouterControl, request: Request) -> Reply:
    fields = parse_form(request.body, frozenset({"peer", "replace"}))
    replace = _parse_bool("replace", fields.get("replace", []))
    await control.connect(fields.get("peer", []), replace)
    return Reply(200, "")


async def _forget(control: RouterControl, request: Request) -> Reply:
    fields = parse_form(request.body, frozenset({"peer"}))
    peers = fields.get("peer", [])
    if not peers:
        raise ConfigError("no peer given")
    await control.forget(peers)
    return Reply(200, "")


def _container(fields: dict[str, list[str]]) -> str:
    values = fields.get("container", [])
    if len(values) != 1 or not values[0]:
        raise ConfigError("give exactly one container")
    return values[0]


async def _attach(control: RouterControl, request: Request) -> Reply:
    fields = parse_form(request.body, frozenset({"container", "addr", "multicast_route"}))
    multicast = fields.get("multicast_route", ["true"])
    attached = await control.attach(_container(fields), fields.get("addr", []),
                                    multicast_route=_parse_bool("multicast_route", multicast))
    return Reply(200, attached.line() + "\n")


async def _detach(control: RouterControl, request: Request) -> Reply:
    fields = parse_form(request.body, frozenset({"container", "addr"}))
    left = await control.detach(_container(fields), fields.get("addr", []))
    return Reply(200, "" if left is None else left.line() + "\n")


async def _ps(control: RouterControl, request: Request) -> Reply:
    return Reply(200, "".join(a.line() + "\n" for a in await control.ps()))


async def _stop(control: RouterControl, request: Request) -> Reply:
    return Reply(200, "stopping\n", close=True, after=control.request_stop)


async def _reset(control: RouterControl, request: Request) -> Reply:
    return Reply(200, "resetting\n", close=True, after=control.request_reset)


ROUTES: dict[str, dict[str, Handler]] = {
    "/report": {"GET": _report},
    "/connect": {"POST": _connect},
    "/forget": {"POST": _forget},
    "/stop": {"POST": _stop},
    "/reset": {"POST": _reset},
    "/attach": {"POST": _attach},
    "/detach": {"POST": _detach},
    "/ps": {"GET": _ps},
    **{("/status/" + view).rstrip("/"): {"GET": _status_handler(view)} for view in VIEWS},
}


async def dispatch(control: RouterControl, request: Request) -> Reply:
    """Route one request; every failure becomes an error reply, never an exception."""
    try:
        reply = await ipam_api.handle_ipam(control.ipam, request)
    except Exception:
        log.exception("control API: %s %s failed", request.method, request.path)
        return error(500, f"internal error serving {request.method} {request.path} (see the log)")
    if reply is not None:
        return reply
    methods = ROUTES.get(request.path)
    if methods is None:
        return error(404, f"no such path: {request.path}")
    handler = methods.get(request.method)
    if handler is None:
        allow = ", ".join(sorted(methods))
        message = f"method {request.method} not allowed on {request.path} (use {allow})"
        return Reply(405, f"{message}\n", allow=allow)
    try:
        return await handler(control, request)
    except ConfigError as exc:
        return error(400, str(exc))
    except Exception:
        log.exception("control API: %s %s failed", request.method, request.path)
        return error(500, f"internal error serving {request.method} {request.path} (see the log)")


class _Client:
    """One client connection: h11 state plus the stream it talks over."""

    def __init__(self, stream: trio.SocketStream, limits: ApiLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    async def _receive(self) -> bool:
        """Feed h11 the next chunk; False at end of stream."""
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        data = await self.stream.receive_some(RECV_CHUNK)
        self.conn.receive_data(data)
        return bool(data)

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def read_request(self) -> Request | Reply | None:
        """The next request, an error reply for a bad one, or None (closed or idle timeout)."""
        started = False
        with trio.move_on_after(self.limits.read_timeout):
            head: h11.Request | None = None
            body = bytearray()
            while True:
                try:
                    event = self.conn.next_event()
                except h11.RemoteProtocolError as exc:
                    reason = " ".join(str(exc).split())  # one line, whatever h11 says
                    return error(exc.error_status_hint, f"bad request: {reason}", close=True)
                if event is h11.NEED_DATA:
                    started = await self._receive() or started
                elif isinstance(event, h11.Request):
                    started, head = True, event
                    if _head_size(event) > self.limits.max_header_bytes:
                        return error(431, "request headers too large "
                                     f"(limit {self.limits.max_header_bytes} bytes)", close=True)
                    length = _content_length(event)
                    if length is not None and length > self.limits.max_body_bytes:
                        return self._too_large()
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.limits.max_body_bytes:
                        return self._too_large()
                elif isinstance(event, h11.EndOfMessage) and head is not None:
                    return _request(head, bytes(body))
                else:  # ConnectionClosed
                    return None
        if started:
            return error(408, "request not received in time", close=True)
        return None

    def _too_large(self) -> Reply:
        limit = self.limits.max_body_bytes
        return error(413, f"request body too large (limit {limit} bytes)", close=True)

    async def send_reply(self, reply: Reply) -> bool:
        """Send ``reply``; True if the connection can carry another request."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        body = reply.body.encode("utf-8")
        headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(body)))]
        if reply.allow:
            headers.append(("Allow", reply.allow))
        if reply.close:
            headers.append(("Connection", "close"))
        await self._send(h11.Response(status_code=reply.status, headers=headers))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())
        states = self.conn.states  # both sides done: the connection may carry another request
        if states[h11.SERVER] is h11.DONE and states[h11.CLIENT] is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    async def linger_and_close(self) -> None:
        """Half-close, then drain briefly, so the client reads our reply rather than a reset."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
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
    path, _, query = target.partition("?")
    method = head.method.decode("ascii", errors="replace")
    return Request(method=method, path=path, body=body, query=query)


class _Server:
    """Accepts clients up to the limit and serves each until it goes away."""

    def __init__(self, control: RouterControl, limits: ApiLimits) -> None:
        self.control = control
        self.limits = limits
        self.clients = 0
        self.refused = 0  # clients turned away because max_clients were connected
        self.errors = 0  # connections that ended in an unexpected exception

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one client connection; nothing escapes (the server never dies of a client)."""
        client = _Client(stream, self.limits)
        if self.clients >= self.limits.max_clients:
            self.refused += 1
            log.warning("control API: refusing a client, %d connected (%d refused so far)",
                        self.clients, self.refused)
            await self._guarded(client, self._refuse)
            return
        self.clients += 1
        try:
            await self._guarded(client, self._serve)
        finally:
            self.clients -= 1

    async def _guarded(self, client: _Client, serve: Callable[[_Client], Awaitable[None]]) -> None:
        try:
            await serve(client)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            self.errors += 1
            log.exception("control API: client connection failed")
        finally:
            await trio.aclose_forcefully(client.stream)

    async def _refuse(self, client: _Client) -> None:
        await client.send_reply(error(503, "too many API clients", close=True))
        await client.linger_and_close()

    async def _serve(self, client: _Client) -> None:
        while True:
            request = await client.read_request()
            if request is None:
                return
            if isinstance(request, Reply):
                await client.send_reply(request)
                await client.linger_and_close()
                return
            reply = await dispatch(self.control, request)
            try:
                keep = await client.send_reply(reply)
            finally:
                if reply.after is not None:
                    reply.after()
            if not keep:
                await client.linger_and_close()
                return


async def serve_api(
    control: RouterControl,
    host: str,
    port: int,
    *,
    limits: ApiLimits = ApiLimits(),
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``host:port`` until cancelled; ``started((host, bound_port))``.

    Port 0 binds a free port (tests); the address actually bound is what ``started`` gives.
    Binding failures raise ``OSError`` before ``started``.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = int(listeners[0].socket.getsockname()[1])
    server = _Server(control, limits)
    log.info("control API listening on %s:%d", host, bound_port)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            trio.serve_listeners, server.handle, listeners, handler_nursery=nursery
        )
        await nursery.start(serve)
        task_status.started((host, bound_port))
