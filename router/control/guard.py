"""Who may ask: the control API refuses requests a web browser makes for a page.

A page in a browser on this host can reach ``127.0.0.1:6784``: a ``text/plain`` POST
needs no CORS preflight, and DNS rebinding makes a page's own name resolve to us. So
every request passes these checks first (pure functions; ``connection.py`` calls
:func:`check` once the head is in):

1. an ``Origin`` header: 403. Browsers send it with every cross-origin POST, PUT and
   DELETE and every CORS GET; the CLI, curl and Weave's own script never do;
2. ``Sec-Fetch-Site`` other than ``none`` (a page's ``<img>`` or ``<form>``): 403;
3. over TCP, the ``Host`` must name this API: ``localhost``, ``127.0.0.1``, ``[::1]``,
   the ``--http-addr`` host or the address the connection arrived on, with our port
   (no port: 80). That defeats DNS rebinding, whose requests carry the page's name.
   HTTP/1.0 may omit it (h11 already refuses an HTTP/1.1 request without one). The
   unix socket has no Host check: no browser reaches it;
4. POST, PUT and DELETE with a body or a ``Content-Type`` must be
   ``application/x-www-form-urlencoded`` (``curl -d`` sends it; a page can only send
   ``text/plain`` without a preflight) or ``application/json`` (the CNI plugin's
   ``/cni/*`` requests; a page cannot send it without a CORS preflight, which this API
   never approves): 415. Without a body and without a type (``curl -X DELETE``) they pass.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from router.control.http import Reply, Request, error

FORM = "application/x-www-form-urlencoded"
JSON_BODY = "application/json"
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_ECHO = 80  # characters of a refused header value quoted in the error line


@dataclass(frozen=True)
class Listener:
    """Where a TCP connection arrived: the names its Host header may use, and the port."""

    hosts: frozenset[str]
    port: int

    @classmethod
    def of(cls, configured_host: str, local_ip: str, port: int) -> Listener:
        """Loopback names, the ``--http-addr`` host and the connection's local address."""
        names = {*LOOPBACK_NAMES, _canonical(configured_host), _canonical(local_ip)}
        return cls(frozenset(names), port)


def check(request: Request, listener: Listener | None) -> Reply | None:
    """The refusal for ``request`` (module doc), or None to serve it. ``listener`` None:
    it came over the unix socket (no Host check)."""
    origin = request.header("origin")
    if origin is not None:
        return error(403, f"cross-origin request refused (Origin: {_echo(origin)})", close=True)
    site = request.header("sec-fetch-site")
    if site is not None and site.lower() != "none":
        return error(403, f"request from a web page refused (Sec-Fetch-Site: {_echo(site)})",
                     close=True)
    if listener is not None:
        refused = _check_host(request, listener)
        if refused is not None:
            return refused
    if request.method in STATE_CHANGING:
        return _check_content_type(request)
    return None


def _check_host(request: Request, listener: Listener) -> Reply | None:
    host = request.header("host")
    if host is None:
        if request.http_version == "1.0":
            return None
        return error(400, "request without a Host header", close=True)
    name, port = split_host(host)
    if name is not None and _canonical(name) in listener.hosts and port == listener.port:
        return None
    return error(403, f"Host {_echo(host)} is not this router's API "
                      f"(use 127.0.0.1:{listener.port})", close=True)


def _check_content_type(request: Request) -> Reply | None:
    value = request.header("content-type")
    if value is None:
        if not request.body:
            return None
        return error(415, f"{request.method} with a body needs Content-Type: {FORM}", close=True)
    media = value.split(";", 1)[0].strip().lower()
    if media in (FORM, JSON_BODY):
        return None
    return error(415, f"Content-Type {_echo(value)} refused: send {FORM}", close=True)


def split_host(value: str) -> tuple[str | None, int]:
    """``(name, port)`` of a Host header value; name None if it is malformed."""
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None, 0
        port_text = rest[1:] if rest else ""
    else:
        if value.count(":") > 1:
            return None, 0  # a bare IPv6 address must be bracketed
        name, _, port_text = value.partition(":")
    if not port_text:
        return name, 80
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None, 0
    return name, int(port_text)


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name.split("%", 1)[0]))
    except ValueError:
        return name.lower()


def _echo(value: str) -> str:
    """A header value as quoted in an error line: printable, one line, bounded."""
    clean = "".join(c if c.isprintable() else "?" for c in value)
    return clean if len(clean) <= MAX_ECHO else clean[:MAX_ECHO] + "..."
