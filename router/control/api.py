"""The control API: HTTP/1.1 (h11 over trio) on ``--http-addr``, default 127.0.0.1:6784.

Every CLI command but ``launch --foreground`` is a client of this. Routes (paths as Weave's):

======  ==============================  =========================================
GET     /status                         text layout of ``status`` (503 until ready)
GET     /status/targets|connections|peers|ipam|dns  the other layouts (503 until ready)
GET     /report                         the JSON report (application/json)
GET     /report?format=TEMPLATE         that Go text/template rendered against it (text)
GET     /ps[?container=C...]            attached containers (C: name, path or PID)
POST    /connect                        form ``peer=A&peer=B&replace=true``
POST    /forget                         form ``peer=A&peer=B``
POST    /stop                           our addition: answer 200, then stop gracefully
PUT/DELETE/GET /name...                 weaveDNS entries (``router/dns/api.py``)
POST    /expose, /hide                  the host's addresses on the bridge (expose_api.py)
======  ==============================  =========================================

Errors are a status code and a one-line ``text/plain`` body naming the problem: 400 for a
bad form or a :class:`~router.errors.ConfigError` from the router (e.g. a bad peer), 403 a
request from a web page or for a foreign Host (``guard.py``), 404 unknown path, 405 wrong
method (with ``Allow``), 408 request not received in time, 413 request too large, 415 a
state-changing request that is not a form, 431 headers too large, 503 not ready / too
many clients, 500 for anything unexpected (the traceback is logged; the server lives on).

Where it listens: TCP ``--http-addr`` (Weave's address: its script runs ``curl`` there),
and a unix socket ``--socket`` (mode 0660: root only) that the CLI prefers. How slow or
hostile clients are kept from starving the others (deadlines, lanes, eviction) is in
``server.py``, ``admission.py`` and ``connection.py``; ``docs/control-api.md`` has the
whole design.
"""

from __future__ import annotations

import functools
import logging
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from router.containers.service import Attached
from router.control import cni_api, expose_api, ipam_api
from router.control.admission import LaneLimit
from router.control.connection import Bounds
from router.control.http import JSON, TEXT, Reply, Request, error
from router.control.layouts import VIEWS
from router.control.report import build_report, render_report
from router.control.server import Server, ServerLimits
from router.control.template import Template, TemplateError
from router.control.unix_socket import bind_unix_socket, remove_unix_socket
from router.dns.api import handle_dns
from router.dns.service import DnsService
from router.errors import ClosedError, ConfigError
from router.ipam.service import IpamService
from router.status import Status

log = logging.getLogger("weave-router.api")

MAX_FORM_FIELDS = 1000  # fields in one form body
LISTEN_BACKLOG = 1024  # connections the kernel queues for us (a storm is taken in batches)
__all__ = ["JSON", "TEXT", "ApiLimits", "Reply", "Request", "RouterControl", "dispatch",
           "error", "parse_form", "serve_api"]


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

    async def attach(self, container: str, addrs: list[str], *, multicast_route: bool,
                     hostname: str | None = None, with_dns: bool = True) -> Attached:
        """Attach a container (ConfigError for a bad container or address, or a hostname
        outside the DNS domain); register ``hostname`` (default: its netns name)."""
        ...

    async def detach(self, container: str, addrs: list[str]) -> Attached | None:
        """Take addresses off a container (all: it leaves the network)."""
        ...

    async def ps(self, containers: Sequence[str] = ()) -> list[Attached]:
        """The attached containers (only ``containers``, in that form, if given)."""
        ...

    @property
    def dns(self) -> DnsService | None:
        """weaveDNS behind /name, /domain, /dns-address (None: --no-dns, they answer 503)."""
        ...

    def dns_container_id(self, container: str) -> str:
        """The id an attached container's names are filed under (ConfigError if not)."""
        ...


@dataclass(frozen=True)
class ApiLimits:
    """Bounds of the API server; sizes in bytes, times in seconds, counts of connections."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    idle_timeout: float = 10.0  # to the first byte of a request (the keep-alive idle time)
    header_timeout: float = 5.0  # to the end of the head, from its first byte
    body_timeout: float = 10.0  # to the end of the body, from the end of the head
    send_timeout: float = 10.0  # to send one reply
    max_unix_clients: int = 16  # lane "unix": the CLI over the unix socket
    max_root_clients: int = 32  # lane "root": TCP clients whose socket uid 0 owns
    max_clients: int = 64  # lane "general": every other TCP client ...
    max_per_client: int = 8  # ... of which one uid (or one remote address) may hold this many

    def server_limits(self) -> ServerLimits:
        """The same limits, as ``server.py`` takes them."""
        bounds = Bounds(self.max_header_bytes, self.max_body_bytes, self.idle_timeout,
                        self.header_timeout, self.body_timeout, self.send_timeout)
        lanes = {"unix": LaneLimit(self.max_unix_clients, self.max_unix_clients),
                 "root": LaneLimit(self.max_root_clients, self.max_root_clients),
                 "general": LaneLimit(self.max_clients, self.max_per_client)}
        return ServerLimits(bounds, lanes)


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
    """The JSON report; with ``?format=T``, template T rendered against it (as Weave's
    API does; 400 and the one-line reason when T is malformed or does not fit)."""
    formats = urllib.parse.parse_qs(request.query, keep_blank_values=True).get("format")
    if formats is None:
        return Reply(200, render_report(control.snapshot()), content_type=JSON)
    if len(formats) != 1:
        raise ConfigError("give format once")
    try:
        return Reply(200, Template(formats[0]).render(build_report(control.snapshot())))
    except TemplateError as exc:
        return error(400, f"template: {exc}")


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
    fields = parse_form(request.body,
                        frozenset({"container", "addr", "multicast_route", "fqdn", "dns"}))
    multicast = fields.get("multicast_route", ["true"])
    container = _container(fields)
    fqdn = fields.get("fqdn", [None])[0]  # attach -h; dns=false: --without-dns
    with_dns = _parse_bool("dns", fields.get("dns", ["true"]))
    attached = await control.attach(container, fields.get("addr", []),
                                    multicast_route=_parse_bool("multicast_route", multicast),
                                    hostname=fqdn or None, with_dns=with_dns)
    return Reply(200, attached.line() + "\n")


async def _detach(control: RouterControl, request: Request) -> Reply:
    fields = parse_form(request.body, frozenset({"container", "addr"}))
    left = await control.detach(_container(fields), fields.get("addr", []))
    return Reply(200, "" if left is None else left.line() + "\n")


async def _ps(control: RouterControl, request: Request) -> Reply:
    """``GET /ps[?container=C...]``: C as a name, path or PID of its namespace."""
    wanted = urllib.parse.parse_qs(request.query).get("container", [])
    return Reply(200, "".join(a.line() + "\n" for a in await control.ps(wanted)))


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
    "/expose": {"POST": expose_api.expose},  # expose_api.py
    "/hide": {"POST": expose_api.hide},
    **{("/status/" + view).rstrip("/"): {"GET": _status_handler(view)} for view in VIEWS},
}


async def dispatch(control: RouterControl, request: Request) -> Reply:
    """Route one request; every failure becomes an error reply, never an exception."""
    try:
        reply = await ipam_api.handle_ipam(control.ipam, request)
        if reply is None:
            reply = await cni_api.handle_cni(control, request)
        if reply is None:
            reply = await handle_dns(control, request)
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
    except ClosedError as exc:  # IPAM suspended (its database refuses writes) or handed over
        return error(503, str(exc))
    except Exception:
        log.exception("control API: %s %s failed", request.method, request.path)
        return error(500, f"internal error serving {request.method} {request.path} (see the log)")


async def serve_api(
    control: RouterControl,
    host: str,
    port: int,
    *,
    socket_path: Path | None = None,
    limits: ApiLimits = ApiLimits(),
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``host:port`` (and ``socket_path`` if given) until cancelled;
    ``started((host, bound_port))``.

    Port 0 binds a free port (tests); the address actually bound is what ``started`` gives.
    Binding failures raise ``OSError`` (or ConfigError for a bad ``socket_path``) before
    ``started``; the unix socket is removed again on the way out.
    """
    listeners: list[socket.socket] = []
    inode = None
    try:
        if socket_path is not None:
            sock, inode = await bind_unix_socket(socket_path)
            listeners.append(sock)
        tcp = tcp_listeners(host, port)
        listeners += tcp
        bound_port = int(tcp[0].getsockname()[1])
        server = Server(functools.partial(dispatch, control), limits.server_limits(),
                        http_host=host, port=bound_port)
        where = f" and {socket_path}" if socket_path is not None else ""
        log.info("control API listening on %s:%d%s", host, bound_port, where)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(server.serve, listener, nursery)
            task_status.started((host, bound_port))
    finally:
        if socket_path is not None and inode is not None:
            remove_unix_socket(socket_path, inode)
        for listener in listeners:
            listener.close()


def tcp_listeners(host: str, port: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address ``host`` resolves to (as trio's
    ``open_tcp_listeners``; port 0: the first one's port for all). OSError if one fails."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in found:
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(listeners) > 1:
                address = (address[0], listeners[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners
