"""router/control/api.py over real HTTP on 127.0.0.1 (port 0), with a RouterControl double.

The double implements the RouterControl Protocol (an interface, not one of our classes).
The second half drives the real CLI (``cli.main.main`` in a worker thread) against the
same server, so the client, the server and the layouts are tested together. Hostile and
slow clients: ``test_api_guard.py``, ``test_api_slow.py``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import h11
import pytest
import trio

from cli.main import main
from router.control.api import serve_api
from router.control.layouts import render_connections, render_peers, render_status
from tests.unit.api_helpers import (
    FORM,
    Api,
    Client,
    RouterDouble,
    raw,
    request,
    run_api,
)
from tests.unit.test_layouts import H1, sample_status


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[Api]:
    router = RouterDouble()
    host, port = await nursery.start(run_api, router)
    assert host == "127.0.0.1" and port > 0
    yield Api(router, port)


async def test_status_is_503_until_ready_then_200(api: Api) -> None:
    api.router.status = sample_status(ready=False)
    for path in ("/status", "/status/targets", "/status/connections", "/status/peers"):
        response = await request(api.port, "GET", path)
        assert (response.status, response.text) == (503, "not ready\n")
    api.router.status = sample_status()
    response = await request(api.port, "GET", "/status")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == render_status(api.router.status)


async def test_status_views(api: Api) -> None:
    status = api.router.status
    assert (await request(api.port, "GET", "/status/targets")).text == "192.168.77.2\n"
    connections = await request(api.port, "GET", "/status/connections")
    assert connections.text == render_connections(status)
    assert (await request(api.port, "GET", "/status/peers?x=1")).text == render_peers(status)


async def test_report_is_json(api: Api) -> None:
    response = await request(api.port, "GET", "/report")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body)["Router"]["Name"] == H1


async def test_keep_alive_serves_several_requests_on_one_connection(api: Api) -> None:
    client = await Client.open(api.port)
    try:
        for _ in range(3):
            assert (await client.request("GET", "/status")).status == 200
        assert (await client.request("GET", "/nowhere")).status == 404
        assert (await client.request("GET", "/report")).status == 200
    finally:
        await client.aclose()


async def test_connect_parses_the_form(api: Api) -> None:
    body = b"peer=10.0.0.1&peer=host2%3A6783&replace=true"
    response = await request(api.port, "POST", "/connect", body, FORM)
    assert (response.status, response.text) == (200, "")
    response = await request(api.port, "POST", "/connect", b"peer=%5Bfe80%3A%3A1%5D", FORM)
    assert response.status == 200
    response = await request(api.port, "POST", "/connect", b"replace=true", FORM)
    assert response.status == 200
    assert api.router.calls == [
        ("connect", ["10.0.0.1", "host2:6783"], True),
        ("connect", ["[fe80::1]"], False),
        ("connect", [], True),
    ]


async def test_forget_parses_the_form(api: Api) -> None:
    response = await request(api.port, "POST", "/forget", b"peer=a&peer=b:1", FORM)
    assert response.status == 200
    assert api.router.calls == [("forget", ["a", "b:1"], False)]


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/connect", b"peer=refused.example", "invalid peer address refused.example: refused"),
    ("/connect", b"peer=a&color=red", "unknown form field 'color'"),
    ("/connect", b"peer=a&replace=maybe", "form field 'replace': 'maybe' is not true or false"),
    ("/connect", b"replace=true&replace=false", "given more than once"),
    ("/connect", b"peer=a&&&", "malformed form body"),
    ("/connect", b"peer=\xff\xfe", "form body is not UTF-8"),
    ("/forget", b"", "no peer given"),
    ("/forget", b"peer=a&replace=true", "unknown form field 'replace'"),
])
async def test_bad_forms_and_config_errors_are_400(api: Api, path: str, body: bytes,
                                                   message: str) -> None:
    response = await request(api.port, "POST", path, body, FORM)
    assert response.status == 400
    assert message in response.text
    assert response.text.count("\n") == 1 and response.text.endswith("\n")
    assert api.router.calls == []


async def test_unknown_path_is_404_and_wrong_method_is_405(api: Api) -> None:
    response = await request(api.port, "GET", "/status/dnsx")
    assert (response.status, response.text) == (404, "no such path: /status/dnsx\n")
    response = await request(api.port, "GET", "/connect")
    assert response.status == 405
    assert response.headers["allow"] == "POST"
    assert "method GET not allowed on /connect" in response.text
    response = await request(api.port, "DELETE", "/status")
    assert (response.status, response.headers["allow"]) == (405, "GET")


async def test_oversized_body_is_413(api: Api) -> None:
    response = await request(api.port, "POST", "/connect", b"peer=a&" * 200, FORM)
    assert response.status == 413
    assert response.text == "request body too large (limit 1024 bytes)\n"
    # A declared length over the limit is refused before the body is read.
    client = await Client.open(api.port)
    try:
        head = h11.Request(method="POST", target="/connect",
                           headers=[("Host", "x"), ("Content-Length", "100000000")])
        await client.stream.send_all(client.conn.send(head))
        assert (await client.response()).status == 413
    finally:
        await client.aclose()
    assert api.router.calls == []


async def test_oversized_chunked_body_is_413(api: Api) -> None:
    chunk = b"peer=" + b"a" * 300
    data = b"POST /connect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    received = await raw(api.port, data)
    assert received.startswith(b"HTTP/1.1 413 ")


async def test_oversized_headers_are_refused(api: Api) -> None:
    data = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
    received = await raw(api.port, data)
    assert received.startswith(b"HTTP/1.1 431 ")
    # Still incomplete when it passes the limit: h11 refuses it without waiting for the end.
    received = await raw(api.port, data[:-4])
    assert received.startswith(b"HTTP/1.1 431 ")


async def test_garbage_closes_the_connection_and_the_server_serves_the_next_client(
        api: Api) -> None:
    for garbage in (b"\x00\x01\x02 not http at all\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256))):
        received = await raw(api.port, garbage)
        assert received == b"" or received.startswith(b"HTTP/1.1 4")
        assert (await request(api.port, "GET", "/status")).status == 200


async def test_client_that_hangs_up_mid_request_does_not_hurt(api: Api) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", api.port)
    await stream.send_all(b"POST /connect HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\npeer")
    await stream.aclose()
    assert (await request(api.port, "GET", "/status")).status == 200
    assert api.router.calls == []


async def test_slow_request_times_out_with_408(api: Api) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", api.port)
    await stream.send_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    assert received.startswith(b"HTTP/1.1 408 ")


async def test_idle_keep_alive_connection_is_closed_quietly(api: Api) -> None:
    client = await Client.open(api.port)
    assert (await client.request("GET", "/status")).status == 200
    with trio.fail_after(5):
        assert await client.stream.receive_some(100) == b""
    await client.aclose()


async def test_unexpected_exception_is_500_and_the_server_lives_on(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    api.router.explode = True
    response = await request(api.port, "GET", "/status")
    assert response.status == 500
    assert response.text == "internal error serving GET /status (see the log)\n"
    assert "snapshot exploded" in caplog.text
    api.router.explode = False
    assert (await request(api.port, "GET", "/status")).status == 200


async def test_stop_answers_then_stops(api: Api) -> None:
    response = await request(api.port, "POST", "/stop")
    assert (response.status, response.text) == (200, "stopping\n")
    assert response.headers["connection"] == "close"
    with trio.fail_after(2):  # the stop is requested right after the answer is sent
        while not api.router.stopped:
            await trio.sleep(0.01)


async def test_port_zero_binds_distinct_ports(nursery: trio.Nursery) -> None:
    first = await nursery.start(serve_api, RouterDouble(), "127.0.0.1", 0)
    second = await nursery.start(serve_api, RouterDouble(), "127.0.0.1", 0)
    assert first[1] != second[1]


# --- the CLI against the server --------------------------------------------------------

async def _cli(api: Api, *argv: str) -> int:
    env = {"WEAVE_HTTP_ADDR": f"127.0.0.1:{api.port}"}
    return await trio.to_thread.run_sync(functools.partial(main, list(argv), env))


async def test_cli_status_views(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert await _cli(api, "status") == 0
    assert capsys.readouterr().out == render_status(api.router.status)
    assert await _cli(api, "status", "connections") == 0
    assert capsys.readouterr().out == render_connections(api.router.status)
    assert await _cli(api, "status", "targets", "--http-addr", f"127.0.0.1:{api.port}") == 0
    assert capsys.readouterr().out == "192.168.77.2\n"


async def test_cli_status_not_ready(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    api.router.status = replace(api.router.status, ready=False)
    assert await _cli(api, "status", "peers") == 1
    assert capsys.readouterr().err == "weave-router: error: not ready\n"


async def test_cli_report(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert await _cli(api, "report") == 0
    assert json.loads(capsys.readouterr().out)["Router"]["NickName"] == "host1"
    assert await _cli(api, "report", "-f", "{{.Router.Name}}") == 0
    assert capsys.readouterr().out == f"{H1}\n"
    assert await _cli(api, "report", "-f", "{{range .Router.Peers}}{{.NickName}}\n{{end}}") == 0
    assert capsys.readouterr().out == "host1\nhost2\nhost3\n"
    assert await _cli(api, "report", "-f", "{{.Router.Nope}}") == 1
    err = capsys.readouterr().err
    assert err.startswith("weave-router: error: report -f: can't evaluate field Nope")
    assert err.count("\n") == 1


async def test_cli_connect_and_forget(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert await _cli(api, "connect", "10.0.0.2", "host3:6783") == 0
    assert await _cli(api, "connect", "--replace", "10.0.0.9") == 0
    assert await _cli(api, "connect", "--replace") == 0
    assert await _cli(api, "forget", "10.0.0.9", "[fe80::1]:6783") == 0
    # This fake router's targets do not change on forget: the CLI says so.
    assert "nothing to forget: 10.0.0.9 [fe80::1]:6783 are not targets" in \
        capsys.readouterr().err
    assert api.router.calls == [
        ("connect", ["10.0.0.2", "host3:6783"], False),
        ("connect", ["10.0.0.9"], True),
        ("connect", [], True),
        ("forget", ["10.0.0.9", "[fe80::1]:6783"], False),
    ]
    assert await _cli(api, "connect", "refused.example") == 1
    assert capsys.readouterr().err == (
        "weave-router: error: invalid peer address refused.example: refused by policy\n")


async def test_cli_stop_waits_until_the_router_is_gone(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert await _cli(api, "stop") == 0
    assert api.router.stopped
    assert await _cli(api, "status") == 1
    assert capsys.readouterr().err == (
        f"weave-router is not running (no answer on 127.0.0.1:{api.port})\n")


async def test_cli_launch_refuses_when_a_router_already_answers(
        api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db, log = tmp_path / "db" / "weave.db", tmp_path / "log" / "weave.log"
    code = await _cli(api, "launch", "--db-path", str(db), "--log-file", str(log))
    assert code == 1
    assert capsys.readouterr().err == (
        f"weave-router is already running (answering on 127.0.0.1:{api.port})\n")
    assert list(tmp_path.iterdir()) == []


async def test_ipam_paths_answer_503_without_an_allocator(api: Api) -> None:
    response = await request(api.port, "GET", "/ring")
    assert response.status == 503
