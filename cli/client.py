"""A tiny client of the control API (``router/control/api.py``) over ``http.client``.

One short-lived connection per request, every call bounded by a timeout and every answer
by a size. "Nobody answers" (connection refused, timeout, a reset) is
:class:`ApiUnreachable`; an HTTP error status is returned, not raised, so each command
decides what it means. Also: the ``HOST:PORT`` parsing shared by ``--http-addr`` and peers.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from router.config import DEFAULT_HTTP_ADDR
from router.errors import ConfigError, RouterError

REQUEST_TIMEOUT = 10.0  # seconds for one request
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ApiUnreachable(RouterError):
    """Nothing answered at the API address (``refused``: nothing listens there at all)."""

    def __init__(self, addr: tuple[str, int], reason: str, *, refused: bool) -> None:
        super().__init__(f"no answer on {format_addr(addr)}: {reason}")
        self.addr = addr
        self.reason = reason
        self.refused = refused


@dataclass(frozen=True)
class ApiResponse:
    """An HTTP answer: status code, body text and content type."""

    status: int
    body: str
    content_type: str = ""

    def message(self) -> str:
        """The body as a one-line error message."""
        line = self.body.strip().splitlines()[0] if self.body.strip() else ""
        return line or f"HTTP {self.status}"


def format_addr(addr: tuple[str, int]) -> str:
    """``127.0.0.1:6784`` or ``[::1]:6784``."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_hostname(text: str) -> bool:
    """True for a syntactically valid DNS host name (RFC 1123)."""
    labels = text.rstrip(".").split(".")
    return 0 < len(text) <= 253 and all(_HOSTNAME_LABEL.match(label) for label in labels)


def split_host_port(text: str, flag: str) -> tuple[str, str | None]:
    """Split ``HOST[:PORT]`` (IPv6 as ``[addr]:port`` or bare ``addr``); ConfigError if odd."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{flag}: {text} is not HOST[:PORT] (IPv6 as [addr]:port)")
        return host, (rest[1:] if rest else None)
    if text.count(":") > 1:
        return text, None  # a bare IPv6 address
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def parse_port(text: str, flag: str) -> int:
    """A TCP/UDP port number 1-65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{flag}: {text} is not a port (1-65535)")
    return int(text)


def parse_host(text: str, flag: str) -> str:
    """An IP address (returned in canonical form) or a host name."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not is_hostname(text):
        raise ConfigError(f"{flag}: {text or '(empty)'} is not an IP address or host name")
    return text


def parse_http_addr(text: str, flag: str = "--http-addr") -> tuple[str, int]:
    """``HOST:PORT`` of the control API (the port is required)."""
    host, port = split_host_port(text, flag)
    if port is None:
        raise ConfigError(f"{flag}: {text} has no port (like 127.0.0.1:6784)")
    return parse_host(host, flag), parse_port(port, flag)


def default_http_addr(flag_value: str | None, env_value: str | None) -> tuple[str, int]:
    """The API address from ``--http-addr``, else ``WEAVE_HTTP_ADDR``, else the default."""
    if flag_value is not None:
        return parse_http_addr(flag_value, "--http-addr")
    if env_value:
        return parse_http_addr(env_value, "WEAVE_HTTP_ADDR")
    return DEFAULT_HTTP_ADDR


class ApiClient:
    """Requests to one router's API."""

    def __init__(self, addr: tuple[str, int], *, timeout: float | None = REQUEST_TIMEOUT) -> None:
        """Talk to the API at ``addr``; each request must finish within ``timeout`` s
        (None: wait as long as it takes, for requests that block by design: ``prime``)."""
        self.addr = addr
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> ApiResponse:
        """One request; ApiUnreachable if nothing (sane) answers."""
        host, port = self.addr
        conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES:
                raise ApiUnreachable(self.addr, "answer too large", refused=False)
            content_type = response.getheader("Content-Type", "")
            return ApiResponse(response.status, data.decode("utf-8", "replace"), content_type)
        except ConnectionRefusedError as exc:
            raise ApiUnreachable(self.addr, "connection refused", refused=True) from exc
        except TimeoutError as exc:
            raise ApiUnreachable(self.addr, f"no answer within {self.timeout} s",
                                 refused=False) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(self.addr, str(exc) or type(exc).__name__,
                                 refused=False) from exc
        finally:
            conn.close()

    def get(self, path: str) -> ApiResponse:
        """``GET path``."""
        return self.request("GET", path)

    def post(self, path: str, fields: Sequence[tuple[str, str]] = ()) -> ApiResponse:
        """``POST path`` with a form body."""
        body = urllib.parse.urlencode(list(fields)).encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.request("POST", path, body, headers)
