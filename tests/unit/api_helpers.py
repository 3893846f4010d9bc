"""Shared by the control API's unit tests: a RouterControl double, a real h11 client."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h11
import trio

from router.control.api import ApiLimits, serve_api
from router.errors import ConfigError
from router.status import Status
from tests.unit.test_layouts import sample_status

LIMITS = ApiLimits(max_header_bytes=2048, max_body_bytes=1024, idle_timeout=0.5,
                   header_timeout=0.5, body_timeout=0.5, send_timeout=0.5,
                   max_unix_clients=4, max_root_clients=4, max_clients=4, max_per_client=2)


@dataclass
class RouterDouble:
    """Implements RouterControl: records calls, refuses peers named 'refused.example'."""

    status: Status = field(default_factory=sample_status)
    calls: list[tuple[str, list[str], bool]] = field(default_factory=list)
    explode: bool = False
    stopped: bool = False
    scope: trio.CancelScope | None = None
    ipam: None = None  # no allocator: /ip, /ring and /peer answer 503

    waiting: list[str] = field(default_factory=list)  # connects now blocked on wait.example
    cancelled: list[str] = field(default_factory=list)  # ... and those whose wait was cancelled

    def snapshot(self) -> Status:
        if self.explode:
            raise RuntimeError("snapshot exploded")
        return self.status

    async def connect(self, peers: list[str], replace: bool) -> None:
        for peer in peers:
            if peer.startswith("refused.example"):
                raise ConfigError(f"invalid peer address {peer}: refused by policy")
            if peer.startswith("wait.example"):  # blocks until cancelled (a pending request)
                self.waiting.append(peer)
                try:
                    await trio.sleep_forever()
                finally:
                    self.waiting.remove(peer)
                    self.cancelled.append(peer)
        self.calls.append(("connect", peers, replace))

    async def forget(self, peers: list[str]) -> None:
        self.calls.append(("forget", peers, False))

    def request_stop(self) -> None:
        self.stopped = True
        if self.scope is not None:
            self.scope.cancel()


@dataclass
class Api:
    router: RouterDouble
    port: int


async def run_api(router: RouterDouble, socket_path: Path | None = None, *,
                  task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
    with trio.CancelScope() as scope:
        router.scope = scope
        await serve_api(router, "127.0.0.1", 0, socket_path=socket_path, limits=LIMITS,
                        task_status=task_status)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class Client:
    """A real HTTP/1.1 client (h11) on one keep-alive connection."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), f"127.0.0.1:{port}")

    @classmethod
    async def open_unix(cls, path: Path) -> Client:
        return cls(await trio.open_unix_socket(str(path)), "localhost")

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> Response:
        hdrs = [("Host", self.host), ("Content-Length", str(len(body))), *(headers or [])]
        out = self.conn.send(h11.Request(method=method, target=path, headers=hdrs))
        out += self.conn.send(h11.Data(data=body)) if body else b""
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        return await self.response()

    async def response(self) -> Response:
        head: h11.Response | None = None
        body = b""
        with trio.fail_after(5):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                        self.conn.start_next_cycle()
                    headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                    return Response(head.status_code, headers, body)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def request(port: int, method: str, path: str, body: bytes = b"",
                  headers: list[tuple[str, str]] | None = None) -> Response:
    client = await Client.open(port)
    try:
        return await client.request(method, path, body, headers)
    finally:
        await client.aclose()


async def raw(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    with trio.fail_after(5):
        await stream.send_all(data)
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


FORM = [("Content-Type", "application/x-www-form-urlencoded")]


