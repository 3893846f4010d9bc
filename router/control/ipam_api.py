"""The IPAM part of the control API (paths as Weave's), for ``api.py``'s dispatch.

======  ==============================  ===============================================
POST    /ip/<id>                        allocate in the default subnet (form ``subnet=CIDR``
                                        picks another one)
POST    /ip/<id>/<ip>/<prefixlen>       allocate in subnet ``<ip>/<prefixlen>``
PUT     /ip/<id>/<ip>/<prefixlen>       claim exactly that address
GET     /ip/<id>                        the addresses ``<id>`` holds, space-separated
DELETE  /ip/<id>                        free all its addresses (and pending requests)
DELETE  /ip/<id>/<ip>                   free that one address
GET     /ring                           prime: answers once this peer can allocate
DELETE  /peer                           hand our space over to another peer and stop IPAM
DELETE  /peer/<name-or-nickname>        rmpeer: ``N IPs taken over from NAME``; refused
                                        (400) for a peer reachable now unless
                                        ``?force=true``
======  ==============================  ===============================================

Allocations and claims answer ``IP/PREFIXLEN`` and a newline, once the address is durable;
they wait (the HTTP request stays open) for the ring or for space from other peers.
``<id>`` is a container id, or ``_`` for "no unique id". Errors: 400 for a malformed
address or subnet or a refused request, 404 nothing recorded (unknown container, address
or peer), 409 held by another container or owned by another peer, or cancelled, 503 when
IPAM is not running or has handed its space over. Every error is one line.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from router.control import api  # a module import: api.py may import this module too
from router.errors import ClosedError, ConfigError
from router.ipam import (
    CancelledError,
    ConflictError,
    NotFoundError,
    parse_address,
    parse_subnet,
)
from router.ipam.service import IpamService

if TYPE_CHECKING:
    from router.control.api import Reply, Request

    IpamHandler = Callable[[IpamService, Request, list[str]], Awaitable[Reply]]


async def handle_ipam(service: IpamService | None, request: Request) -> Reply | None:
    """Serve ``request`` if its path is one of IPAM's; None if it is not (try other routes).

    Never raises for a client's mistake: every failure is an error reply.
    """
    found = _route(request.path)
    if found is None:
        return None
    methods, args = found
    handler = methods.get(request.method)
    if handler is None:
        allow = ", ".join(sorted(methods))
        message = f"method {request.method} not allowed on {request.path} (use {allow})"
        return api.Reply(405, f"{message}\n", allow=allow)
    if service is None:
        return api.error(503, "IPAM is not running on this router")
    try:
        return await handler(service, request, args)
    except NotFoundError as exc:
        return api.error(404, str(exc))
    except (ConflictError, CancelledError) as exc:
        return api.error(409, str(exc))
    except ConfigError as exc:  # IpamError and malformed input
        return api.error(400, str(exc))
    except ClosedError as exc:
        return api.error(503, str(exc))


def _route(path: str) -> tuple[dict[str, IpamHandler], list[str]] | None:
    """The handlers for ``path`` and its arguments (URL-decoded); None: not an IPAM path."""
    parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
    if not parts or any(not p for p in parts):
        return None
    head, args = parts[0], parts[1:]
    if head == "ip" and len(args) == 1:
        return {"POST": _allocate, "GET": _lookup, "DELETE": _free}, args
    if head == "ip" and len(args) == 2:
        return {"DELETE": _free}, args
    if head == "ip" and len(args) == 3:
        return {"POST": _allocate, "PUT": _claim}, args
    if head == "ring" and not args:
        return {"GET": _prime}, args
    if head == "peer" and len(args) <= 1:
        return {"DELETE": _rmpeer if args else _handover}, args
    return None


def _ok(cidrs: str) -> Reply:
    return api.Reply(200, f"{cidrs}\n" if cidrs else "")


async def _allocate(service: IpamService, request: Request, args: list[str]) -> Reply:
    fields = api.parse_form(request.body, frozenset({"subnet"}))
    given = fields.get("subnet", [])
    if len(args) == 3:
        given = [*given, f"{args[1]}/{args[2]}"]
    if len(given) > 1:
        raise ConfigError("give one subnet, in the path or as subnet=CIDR")
    subnet = parse_subnet(given[0]) if given else None
    return _ok(str(await service.allocate(args[0], subnet)))


async def _claim(service: IpamService, request: Request, args: list[str]) -> Reply:
    api.parse_form(request.body, frozenset())
    cidr = parse_address(f"{args[1]}/{args[2]}")
    return _ok(str(await service.claim(args[0], cidr)))


async def _lookup(service: IpamService, request: Request, args: list[str]) -> Reply:
    cidrs = service.lookup(args[0])
    if not cidrs:
        raise NotFoundError(f"no addresses for {args[0]}")
    return _ok(" ".join(str(c) for c in cidrs))


async def _free(service: IpamService, request: Request, args: list[str]) -> Reply:
    address = None
    if len(args) == 2:
        try:
            address = IPv4Address(args[1])
        except ValueError:
            raise ConfigError(f"invalid address {args[1]!r}") from None
    service.free(args[0], address)
    return _ok("")


async def _prime(service: IpamService, request: Request, args: list[str]) -> Reply:
    await service.prime()
    return _ok("")


async def _handover(service: IpamService, request: Request, args: list[str]) -> Reply:
    await service.reset_handover()
    return _ok("")


async def _rmpeer(service: IpamService, request: Request, args: list[str]) -> Reply:
    query = urllib.parse.parse_qs(request.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"force"})
    if unknown:
        raise ConfigError(f"unknown query parameter {unknown[0]!r} (only force=true)")
    force = query.get("force", ["false"])[-1]
    if force not in ("true", "false"):
        raise ConfigError(f"force={force!r}: use force=true or force=false")
    return _ok(service.rmpeer(args[0], force=force == "true"))
