"""The CNI part of the control API, for the ``weave-net`` plugin (``cni/``).

======  ===================  ==========================================================
POST    /cni/add             JSON ``{containerId, ifname, netns, ipam | result, hairpin,
                             multicastRoute, timeout, args}`` -> the CNI 1.0 result
POST    /cni/del             ``{containerId, ifname, netns}`` (netns may be empty)
POST    /cni/check           ``{containerId, ifname, netns, prevResult, prevIps}``
POST    /cni/status          ``{ipam: bool}``: 200 when the plugin can add containers
POST    /cni/gc              ``{valid: [{containerId, ifname}]}`` -> ``{released: [...]}``
POST    /cni/ipam/add        the ``weave-ipam`` mode: allocate only -> ``{ips, routes}``
POST    /cni/ipam/del        ``{containerId}``: free its addresses
POST    /cni/ipam/check      ``{containerId}``: 200 if IPAM holds an address for it
GET     /cni/attachments     the recorded attachments (with ``CNI_ARGS`` as ``args``)
======  ===================  ==========================================================

Successes answer 200 with a JSON object (``{}`` for DEL, CHECK, STATUS); failures answer
4xx/5xx with the body ``{code, msg, details}``: the CNI spec's error object minus
``cniVersion``, which the plugin adds. The router wires ``control.cni`` (a
:class:`~router.cni.service.CniService`; None without a kernel: 503).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from router.cni.model import (
    INVALID_CONFIG,
    IO_FAILURE,
    NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    CniError,
    attachment_key,
    container_key,
    decode_body,
    parse_add,
)
from router.cni.service import CniService
from router.control import api  # a module import: api.py imports this module too

if TYPE_CHECKING:
    from router.control.api import Reply, Request, RouterControl

log = logging.getLogger("weave-router.cni")

PREFIX = "/cni/"
ATTACHMENTS = "/cni/attachments"
CniHandler = Callable[[CniService, "RouterControl", dict[str, object]],
                      Awaitable[dict[str, object]]]


def _json(status: int, body: object) -> Reply:
    return api.Reply(status, json.dumps(body) + "\n", content_type=api.JSON)


def _status_for(code: int) -> int:
    if code in (TRY_AGAIN_LATER, NOT_AVAILABLE):
        return 503
    if code == IO_FAILURE:
        return 500
    return 400


async def handle_cni(control: RouterControl, request: Request) -> Reply | None:
    """Serve ``request`` if its path is a CNI one; None otherwise. Never raises."""
    if not request.path.startswith(PREFIX):
        return None
    if request.path == ATTACHMENTS:
        return _attachments(control, request)
    handler = ROUTES.get(request.path)
    if handler is None:
        return api.error(404, f"no such path: {request.path}")
    if request.method != "POST":
        return api.Reply(405, f"method {request.method} not allowed on {request.path} "
                         "(use POST)\n", allow="POST")
    service: CniService | None = getattr(control, "cni", None)
    try:
        if service is None:
            raise CniError(NOT_AVAILABLE, "this router runs without a data plane: no CNI")
        return _json(200, await handler(service, control, decode_body(request.body)))
    except CniError as exc:
        return _json(_status_for(exc.code), exc.to_json())
    except Exception as exc:
        log.exception("control API: %s %s failed", request.method, request.path)
        err = CniError(IO_FAILURE, f"weave-router failed serving {request.path}: {exc}",
                       "see the router's log")
        return _json(500, err.to_json())


def _attachments(control: RouterControl, request: Request) -> Reply:
    """``GET /cni/attachments``: what the router recorded of each ADD (the container id,
    interface, namespace, addresses, which IPAM, and ``CNI_ARGS`` such as K8S_POD_NAME)."""
    if request.method != "GET":
        return api.Reply(405, f"method {request.method} not allowed on {request.path} "
                         "(use GET)\n", allow="GET")
    service: CniService | None = getattr(control, "cni", None)
    records = service.attachments() if service is not None else []
    return _json(200, [r.to_json() for r in records])


def _ready(control: RouterControl) -> bool:
    return control.snapshot().ready


async def _add(service: CniService, control: RouterControl,
               data: dict[str, object]) -> dict[str, object]:
    return await service.add(parse_add(data))


async def _del(service: CniService, control: RouterControl,
               data: dict[str, object]) -> dict[str, object]:
    cid, ifname = container_key(data)
    netns = data.get("netns") or ""
    await service.delete(cid, ifname, str(netns))
    return {}


async def _check(service: CniService, control: RouterControl,
                 data: dict[str, object]) -> dict[str, object]:
    cid, ifname = container_key(data)
    prev = None
    if data.get("prevResult"):
        raw = data.get("prevIps") or []
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise CniError(INVALID_CONFIG, "prevResult's ips are not a list of addresses")
        prev = [str(x) for x in raw]
    await service.check(cid, ifname, str(data.get("netns") or ""), prev)
    return {}


async def _status(service: CniService, control: RouterControl,
                  data: dict[str, object]) -> dict[str, object]:
    await service.status(ipam=bool(data.get("ipam", True)), ready=_ready(control))
    return {}


async def _gc(service: CniService, control: RouterControl,
              data: dict[str, object]) -> dict[str, object]:
    valid = data.get("valid") or []
    if not isinstance(valid, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    keys = set()
    for item in valid:
        if not isinstance(item, dict):
            raise CniError(INVALID_CONFIG, "a cni.dev/valid-attachments entry is not an object")
        keys.add(attachment_key(str(item.get("containerId", "")), str(item.get("ifname", ""))))
    return {"released": await service.gc(keys)}


async def _ipam_add(service: CniService, control: RouterControl,
                    data: dict[str, object]) -> dict[str, object]:
    # the IPAM mode needs neither an interface nor a namespace
    data = {**data, "ifname": data.get("ifname") or "eth0", "netns": data.get("netns") or "-"}
    return await service.ipam_add(parse_add(data))


async def _ipam_del(service: CniService, control: RouterControl,
                    data: dict[str, object]) -> dict[str, object]:
    cid, _ = container_key({**data, "ifname": "eth0"})
    service.ipam_del(cid)
    return {}


async def _ipam_check(service: CniService, control: RouterControl,
                      data: dict[str, object]) -> dict[str, object]:
    cid, _ = container_key({**data, "ifname": "eth0"})
    service.ipam_check(cid)
    return {}


ROUTES: dict[str, CniHandler] = {
    "/cni/add": _add,
    "/cni/del": _del,
    "/cni/check": _check,
    "/cni/status": _status,
    "/cni/gc": _gc,
    "/cni/ipam/add": _ipam_add,
    "/cni/ipam/del": _ipam_del,
    "/cni/ipam/check": _ipam_check,
}
