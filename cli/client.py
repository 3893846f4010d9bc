"""A tiny client of the control API (``router/control/api.py``) over ``http.client``.

One short-lived connection per request, every call bounded by a timeout and every answer
by a size. "Nobody answers" (connection refused, timeout, a reset) is
:class:`ApiUnreachable`; an HTTP error status is returned, not raised, so each command
decides what it means. Also: the ``HOST:PORT`` parsing shared by ``--http-addr`` and peers.

Where the CLI talks (:func:`choose_api`), first match wins:

1. ``--socket PATH``: the router's unix socket there (root only, mode 0660);
2. ``--http-addr HOST:PORT``: TCP there (both flags at once: a usage error);
3. ``WEAVE_SOCKET``, then ``WEAVE_HTTP_ADDR``;
4. the default socket ``/run/weave-router/weave.sock`` if it exists (a router launched
   with the default ``--db-path`` makes it); else TCP ``127.0.0.1:6784``, Weave's address.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from router.config import DEFAULT_API_SOCKET, DEFAULT_HTTP_ADDR
from router.errors import ConfigError, RouterError

REQUEST_TIMEOUT = 10.0  # seconds for one request
ENV_SOCKET = "WEAVE_SOCKET"
ENV_HTTP_ADDR = "WEAVE_HTTP_ADDR"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ApiUnreachable(RouterError):
    """Nothing answered at the API address (``refused``: nothing listens there at all).

    ``where`` names the address: ``127.0.0.1:6784`` or the socket's path."""

    def __init__(self, where: str, reason: str, *, refused: bool) -> None:
        super().__init__(f"no answer on {where}: {reason}")
        self.where = where
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


class _UnixConnection(http.client.HTTPConnection):
    """``http.client`` over a unix stream socket (the Host header says ``localhost``)."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(os.fspath(self.path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """Requests to one router's API, over TCP at ``addr`` or the unix socket ``socket``."""

    def __init__(self, addr: tuple[str, int], *, timeout: float | None = REQUEST_TIMEOUT,
                 socket: Path | None = None) -> None:
        """Talk to the API at ``addr`` (or ``socket`` if given); each request must finish
        within ``timeout`` s (None: wait as long as it takes, for requests that block by
        design: ``prime``, ``attach``)."""
        self.addr = addr
        self.socket = socket
        self.timeout = timeout

    @property
    def where(self) -> str:
        """The address as messages name it."""
        return str(self.socket) if self.socket is not None else format_addr(self.addr)

    def _connection(self) -> http.client.HTTPConnection:
        if self.socket is not None:
            return _UnixConnection(self.socket, self.timeout)
        host, port = self.addr
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> ApiResponse:
        """One request; ApiUnreachable if nothing (sane) answers."""
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES:
                raise ApiUnreachable(self.where, "answer too large", refused=False)
            content_type = response.getheader("Content-Type", "")
            return ApiResponse(response.status, data.decode("utf-8", "replace"), content_type)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise ApiUnreachable(self.where, "connection refused", refused=True) from exc
        except PermissionError as exc:
            raise ApiUnreachable(self.where, "permission denied (the socket is root's)",
                                 refused=False) from exc
        except TimeoutError as exc:
            raise ApiUnreachable(self.where, f"no answer within {self.timeout} s",
                                 refused=False) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(self.where, str(exc) or type(exc).__name__,
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


def choose_api(http_addr: str | None, socket_path: str | None, env: Mapping[str, str], *,
               default_socket: Path = DEFAULT_API_SOCKET) -> ApiClient:
    """The client for ``--http-addr`` / ``--socket`` and the environment (module doc)."""
    if http_addr is not None and socket_path is not None:
        raise ConfigError("--socket: give --socket or --http-addr, not both")
    if socket_path is not None:
        return ApiClient(DEFAULT_HTTP_ADDR, socket=_socket_path(socket_path, "--socket"))
    if http_addr is not None:
        return ApiClient(parse_http_addr(http_addr, "--http-addr"))
    if env.get(ENV_SOCKET):
        return ApiClient(DEFAULT_HTTP_ADDR, socket=_socket_path(env[ENV_SOCKET], ENV_SOCKET))
    if env.get(ENV_HTTP_ADDR):
        return ApiClient(parse_http_addr(env[ENV_HTTP_ADDR], ENV_HTTP_ADDR))
    if default_socket.exists():
        return ApiClient(DEFAULT_HTTP_ADDR, socket=default_socket)
    return ApiClient(DEFAULT_HTTP_ADDR)


def _socket_path(text: str, flag: str) -> Path:
    if not text.strip():
        raise ConfigError(f"{flag}: empty path")
    return Path(text)
