"""``expose`` and ``hide`` in the control API (the router wires ``control.host_access``,
a :class:`~router.host.service.HostService`; None without a data plane: 503).

======  ===========  ============================================================
POST    /expose      form ``addr=ADDR...&masquerade=false`` -> the CIDRs exposed, one a line
POST    /hide        form ``addr=CIDR...`` (none: all) -> the CIDRs hidden, one a line
======  ===========  ============================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.control import api  # a module import: api.py imports this module too
from router.errors import ClosedError, ConfigError
from router.host.service import HostService

if TYPE_CHECKING:
    from router.control.api import Reply, Request, RouterControl


def _service(control: RouterControl) -> HostService:
    service: HostService | None = getattr(control, "host_access", None)
    if service is None:
        raise ClosedError("this router runs without a data plane: nothing to expose")
    return service


def _masquerade(values: list[str]) -> bool:
    if not values:
        return True
    if len(values) == 1 and values[0] in ("true", "false"):
        return values[0] == "true"
    raise ConfigError(f"form field 'masquerade': {' '.join(values)!r} is not true or false")


async def expose(control: RouterControl, request: Request) -> Reply:
    fields = api.parse_form(request.body, frozenset({"addr", "masquerade"}))
    cidrs = await _service(control).expose(fields.get("addr", []),
                                           masquerade=_masquerade(fields.get("masquerade", [])))
    return api.Reply(200, "".join(f"{c}\n" for c in cidrs))


async def hide(control: RouterControl, request: Request) -> Reply:
    fields = api.parse_form(request.body, frozenset({"addr"}))
    cidrs = await _service(control).hide(fields.get("addr", []))
    return api.Reply(200, "".join(f"{c}\n" for c in cidrs))
