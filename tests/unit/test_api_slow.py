"""Slow, idle and departing clients of the control API (issue 9 item 9, issue 10 item 4):
real HTTP on 127.0.0.1 and the unix socket, the RouterControl double of ``api_helpers``.

The tests run as root, so their TCP connections are in lane ``root``; lane ``general``
(other uids) is covered by ``test_api_admission.py`` and the netns bench/integration test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from cli.main import main
from tests.unit.api_helpers import FORM, LIMITS, Api, Client, RouterDouble, request, run_api


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[Api]:
    router = RouterDouble()
    _, port = await nursery.start(run_api, router)
    yield Api(router, port)


async def _hold(client: Client, peer: str) -> None:
    """A request that waits in the router until the test closes the client."""
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        await client.request("POST", "/connect", f"peer={peer}".encode(), FORM)


async def _slowloris(port: int, stop: trio.Event, opened: list[int]) -> None:
    """Open, send half a head, trickle a header byte every 50 ms; reconnect when dropped."""
    while not stop.is_set():
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.01)
            continue
        opened[0] += 1
        try:
            await stream.send_all(f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            while not stop.is_set():
                await stream.send_all(b"X")
                await trio.sleep(0.05)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def test_slow_clients_that_reconnect_do_not_keep_status_from_answering(api: Api) -> None:
    # Issue 9 item 9: more slow clients than slots, reconnecting as soon as they are
    # dropped, got every other request a 503 for as long as they liked.
    stop, opened = trio.Event(), [0]
    async with trio.open_nursery() as nursery:
        for _ in range(3 * LIMITS.max_root_clients):
            nursery.start_soon(_slowloris, api.port, stop, opened)
        await trio.sleep(0.3)
        statuses = []
        for _ in range(20):
            statuses.append((await request(api.port, "GET", "/status")).status)
            await trio.sleep(0.02)
        stop.set()
    assert statuses == [200] * 20
    assert opened[0] > 3 * LIMITS.max_root_clients  # they were pushed out and came back


async def test_a_trickled_head_gets_408_at_its_deadline(api: Api) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", api.port)
    received = b""
    with trio.fail_after(5):
        await stream.send_all(f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n".encode())
        with trio.move_on_after(4):  # a byte every 50 ms: never idle, never done
            while True:
                try:
                    await stream.send_all(b"X")
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.05):
                    received += await stream.receive_some(65536)
                if received:
                    break
        while chunk := await stream.receive_some(65536):  # the rest, to the server's close
            received += chunk
    await stream.aclose()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert received.endswith(b"request head not received in time\n")


async def test_a_trickled_body_gets_408(api: Api) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", api.port)
    head = (f"POST /connect HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nContent-Type: "
            "application/x-www-form-urlencoded\r\nContent-Length: 900\r\n\r\npeer=").encode()
    received = b""
    with trio.fail_after(5):
        await stream.send_all(head)
        while not received:
            with trio.move_on_after(0.05):
                received = await stream.receive_some(65536)
            if not received:
                try:
                    await stream.send_all(b"a")
                except trio.BrokenResourceError:
                    break
    await stream.aclose()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert api.router.calls == []


async def test_idle_connections_are_evicted_to_admit_a_new_client(api: Api) -> None:
    idle = [await Client.open(api.port) for _ in range(LIMITS.max_root_clients)]
    try:
        for client in idle:
            assert (await client.request("GET", "/status")).status == 200
        # The lane is full of idle keep-alive connections: a newcomer is served, the
        # longest-idle connection makes room.
        assert (await request(api.port, "GET", "/status")).status == 200
        with trio.fail_after(2):
            assert await idle[0].stream.receive_some(100) == b""
    finally:
        for client in idle:
            await client.aclose()


async def test_busy_connections_are_never_evicted_and_a_full_lane_answers_503(
        api: Api, nursery: trio.Nursery) -> None:
    busy = [await Client.open(api.port) for _ in range(LIMITS.max_root_clients)]
    for i, client in enumerate(busy):
        nursery.start_soon(_hold, client, f"wait.example{i}")
    with trio.fail_after(5):
        while len(api.router.waiting) < len(busy):
            await trio.sleep(0.01)
    refused = await request(api.port, "GET", "/status")
    assert (refused.status, refused.text) == (
        503, f"too many API requests in progress (limit {LIMITS.max_root_clients})\n")
    assert len(api.router.waiting) == len(busy)  # nobody was pushed out
    for client in busy:
        await client.aclose()


async def test_a_full_tcp_lane_leaves_the_unix_socket_to_the_cli(
        nursery: trio.Nursery, socket_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    router, path = RouterDouble(), socket_dir / "weave.sock"
    _, port = await nursery.start(run_api, router, path)
    busy = [await Client.open(port) for _ in range(LIMITS.max_root_clients)]
    for i, client in enumerate(busy):
        nursery.start_soon(_hold, client, f"wait.example{i}")
    with trio.fail_after(5):
        while len(router.waiting) < len(busy):
            await trio.sleep(0.01)
    assert (await request(port, "GET", "/status")).status == 503
    code = await trio.to_thread.run_sync(main, ["status", "--socket", str(path)], {})
    assert (code, capsys.readouterr().err) == (0, "")
    for client in busy:
        await client.aclose()


async def test_a_client_that_goes_away_cancels_its_request(api: Api) -> None:
    # Issue 10 item 4: a request waiting in the router (an allocation awaiting
    # consensus) went on after its client was killed.
    for how in ("close", "reset"):
        client = await Client.open(api.port)
        peer = f"wait.example-{how}"
        head = (f"POST /connect HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nContent-Type: "
                f"application/x-www-form-urlencoded\r\nContent-Length: {5 + len(peer)}\r\n"
                f"\r\npeer={peer}").encode()
        await client.stream.send_all(head)
        with trio.fail_after(5):
            while peer not in api.router.waiting:
                await trio.sleep(0.01)
        if how == "reset":
            client.stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await client.aclose()
        with trio.fail_after(5):
            while peer not in api.router.cancelled:
                await trio.sleep(0.01)
    assert api.router.calls == []
    assert (await request(api.port, "GET", "/status")).status == 200


async def test_pipelined_requests_are_still_served_in_order(api: Api) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", api.port)
    one = f"GET /status/targets HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n\r\n".encode()
    await stream.send_all(one * 3)
    received = b""
    with trio.fail_after(5):
        while received.count(b"HTTP/1.1 200 ") < 3:
            received += await stream.receive_some(65536)
    await stream.aclose()


def test_the_unix_socket_path_must_fit(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 120) / "weave.sock"

    async def serve() -> None:
        await run_api(RouterDouble(), long)

    with pytest.raises(Exception, match="longer than 107 bytes"):
        trio.run(serve)
    assert not os.path.exists(long)
