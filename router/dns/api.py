"""The weaveDNS part of the control API (paths as Weave's), for ``api.py``'s dispatch.

======  ==============================  ===============================================
PUT     /name/<id>/<ip>                 register ``fqdn=`` (form or query) -> ``<ip>``
                                        for container ``<id>``: an attached container's
                                        name, path or PID (filed under its namespace),
                                        else taken as given (``weave:extern``, ...)
DELETE  /name[/<id>[/<ip>]]             tombstone our entries matching ``<id>``, ``<ip>``
                                        and ``fqdn=`` (each optional); answers the count
GET     /name                           every entry, tombstones included, as JSON
GET     /domain                         the domain (``weave.local.``)
GET     /dns-address                    the address weaveDNS listens on (no port)
======  ==============================  ===============================================

Errors are one line: 400 a malformed IP or an FQDN outside the domain (nothing changed),
503 when the router runs with ``--no-dns``.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from typing import TYPE_CHECKING, Protocol

from router.dns.service import EXTERNAL_ID, DnsService
from router.errors import ConfigError

if TYPE_CHECKING:
    from router.control.http import Reply, Request


class DnsControl(Protocol):
    """What these routes ask of the router."""

    @property
    def dns(self) -> DnsService | None: ...

    def dns_container_id(self, container: str) -> str: ...


PATHS = ("/name", "/domain", "/dns-address")


async def handle_dns(control: DnsControl, request: Request) -> Reply | None:
    """Serve ``request`` if its path is weaveDNS's; None if it is not."""
    from router.control.http import Reply, error

    parts = [urllib.parse.unquote(p) for p in request.path.split("/")[1:]]
    if not parts or f"/{parts[0]}" not in PATHS:
        return None
    service = control.dns
    if service is None:
        return error(503, "DNS is not running on this router (launched with --no-dns)")
    try:
        if parts[0] == "domain" and len(parts) == 1 and request.method == "GET":
            return Reply(200, service.config.domain)
        if parts[0] == "dns-address" and len(parts) == 1 and request.method == "GET":
            return Reply(200, service.statistics().address.rsplit(":", 1)[0])
        if parts[0] != "name" or len(parts) > 3:
            return error(404, f"no such path: {request.path}")
        fqdn = _fqdn(request)
        if request.method == "GET" and len(parts) == 1:
            return Reply(200, entries_json(service), content_type="application/json")
        if request.method == "PUT" and len(parts) == 3:
            if fqdn is None:
                raise ConfigError("give the name: fqdn=NAME.weave.local")
            address = _ip(parts[2])
            ident = _ident(control, parts[1])
            service.add(fqdn, ident, [address])
            return Reply(200, "")
        if request.method == "DELETE":
            who = _ident(control, parts[1]) if len(parts) > 1 and parts[1] != "*" else None
            where = _ip(parts[2]) if len(parts) > 2 and parts[2] != "*" else None
            count = service.remove(container_id=who, hostname=fqdn, address=where)
            return Reply(200, f"{count}\n")
    except ConfigError as exc:
        return error(400, str(exc))
    allow = "GET, DELETE" if len(parts) == 1 else "PUT, DELETE" if len(parts) == 3 else "DELETE"
    return Reply(405, f"method {request.method} not allowed on {request.path} (use {allow})\n",
                 allow=allow)


def _fqdn(request: Request) -> str | None:
    fields = urllib.parse.parse_qs(request.query)
    if request.body:
        try:
            fields.update(urllib.parse.parse_qs(request.body.decode("utf-8")))
        except UnicodeDecodeError as exc:
            raise ConfigError("form body is not UTF-8") from exc
    values = fields.get("fqdn", [])
    return values[0] if values and values[0] else None


def _ip(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an IPv4 address") from None


def _ident(control: DnsControl, container: str) -> str:
    """An attached container's id, else ``container`` as given (Weave's API callers)."""
    if not container:
        raise ConfigError("empty container id")
    if container == EXTERNAL_ID:
        return container
    try:
        return control.dns_container_id(container)
    except ConfigError:
        return container


def entries_json(service: DnsService) -> str:
    """``GET /name``: Weave's entry fields."""
    return json.dumps([entry_fields(e) for e in service.entries.all()]) + "\n"


def entry_fields(entry: object) -> dict[str, object]:
    from router.dns.entries import Entry

    assert isinstance(entry, Entry)
    return {"Hostname": entry.hostname, "Origin": str(entry.origin),
            "ContainerID": entry.container_id, "Address": str(entry.address),
            "Version": entry.version, "Tombstone": entry.tombstone}
