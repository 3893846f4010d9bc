"""What the control API's handlers take and give: :class:`Request` and :class:`Reply`.

Shared by the routes (``api.py``, ``ipam_api.py``), the request policy (``guard.py``)
and the connection driver (``connection.py``), so none of them imports another's
internals. Every error is a status code and one line of ``text/plain``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


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
    """One received request: method, path (query stripped), body, (lower-case) headers and
    the query (after "?", still percent-encoded)."""

    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())
    http_version: str = "1.1"
    query: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def error(status: int, message: str, *, close: bool = False) -> Reply:
    """A one-line text error reply."""
    line = " ".join(message.split())  # one line, whatever the message held
    return Reply(status, f"{line}\n", close=close)
