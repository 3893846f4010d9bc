"""Requests a web page can make, foreign Hosts, and the root-only unix socket (issue 9
item 11): real HTTP on 127.0.0.1 and a real unix socket, the RouterControl double of
``api_helpers``, curl as Weave's script runs it, and the CLI as root and as ``nobody``."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from cli.client import choose_api
from cli.main import main
from router.errors import ConfigError
from router.testing import as_user
from tests.unit.api_helpers import FORM, Api, RouterDouble, raw, request, run_api

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[Api]:
    router = RouterDouble()
    _, port = await nursery.start(run_api, router)
    yield Api(router, port)


@pytest.mark.parametrize(("headers", "status", "says"), [
    ([("Origin", "https://evil.example")], 403, "cross-origin request refused"),
    ([("Origin", "null")], 403, "cross-origin request refused (Origin: null)"),
    ([("Sec-Fetch-Site", "cross-site"), *FORM], 403, "request from a web page refused"),
    ([("Content-Type", "text/plain")], 415, "Content-Type text/plain refused"),
    ([("Content-Type", "multipart/form-data; boundary=x")], 415, "refused: send application"),
    ([], 415, "POST with a body needs Content-Type: application/x-www-form-urlencoded"),
])
async def test_what_a_web_page_sends_is_refused_and_changes_nothing(
        api: Api, headers: list[tuple[str, str]], status: int, says: str) -> None:
    # Issue 9 item 11: a text/plain POST /connect from a page was accepted and persisted.
    response = await request(api.port, "POST", "/connect", b"peer=10.9.9.9", headers)
    assert response.status == status
    assert says in response.text and response.text.count("\n") == 1, response.text
    assert api.router.calls == []


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1", "localhost:1",
                                  "127.0.0.1:{port}.evil.example", "[::1", "::1:{port}"])
async def test_a_foreign_host_is_refused(api: Api, host: str) -> None:
    # DNS rebinding: the page's own name resolves to 127.0.0.1; its requests carry it.
    value = host.format(port=api.port)
    data = f"GET /status HTTP/1.1\r\nHost: {value}\r\n\r\n".encode()
    received = await raw(api.port, data)
    assert received.startswith(b"HTTP/1.1 403 "), received
    assert received.endswith(f"(use 127.0.0.1:{api.port})\n".encode())


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}",
                                  "[::1]:{port}", None])
async def test_our_own_names_are_served(api: Api, host: str | None) -> None:
    line = "" if host is None else f"Host: {host.format(port=api.port)}\r\n"
    version = "1.1" if host is not None else "1.0"  # HTTP/1.0 may omit the Host
    received = await raw(api.port, f"GET /status HTTP/{version}\r\n{line}\r\n".encode())
    assert received.startswith(b"HTTP/1.1 200 "), received


async def test_requests_without_a_body_need_no_content_type(api: Api) -> None:
    assert (await request(api.port, "DELETE", "/ip/x")).status == 503  # no IPAM, not 415
    assert (await request(api.port, "POST", "/forget", b"peer=a",
                          [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")]
                          )).status == 200


async def test_curl_as_weaves_script_runs_it(api: Api) -> None:
    base = f"127.0.0.1:{api.port}"
    ok = await trio.run_process(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                 "-X", "POST", f"{base}/connect", "-d", "peer=10.0.0.7"],
                                capture_stdout=True)
    assert ok.stdout == b"200"
    plain = await trio.run_process(["curl", "-s", "-X", "POST", "-H", "Content-Type: text/plain",
                                    f"{base}/connect", "-d", "peer=10.0.0.8"],
                                   capture_stdout=True)
    assert plain.stdout.startswith(b"Content-Type text/plain refused")
    assert api.router.calls == [("connect", ["10.0.0.7"], False)]


async def test_the_unix_socket_is_root_only_and_the_cli_uses_it(
        nursery: trio.Nursery, socket_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    router, path = RouterDouble(), socket_dir / "weave.sock"
    await nursery.start(run_api, router, path)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    code = await trio.to_thread.run_sync(main, ["connect", "10.0.0.5", "--socket", str(path)],
                                         {})
    assert (code, capsys.readouterr().err) == (0, "")
    env = {"WEAVE_SOCKET": str(path)}
    assert await trio.to_thread.run_sync(main, ["status", "targets"], env) == 0
    assert capsys.readouterr().out == "192.168.77.2\n"
    # Issue 9 item 11: user nobody could use the API. The socket keeps nobody out.
    nobody = await trio.run_process(  # (as_user: the checkout may be closed to nobody)
        as_user.argv("nobody", "cli.main", "connect", "10.0.0.6", "--socket", str(path)),
        cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
    assert nobody.returncode == 1
    assert nobody.stderr.decode() == (f"weave-router did not answer on {path}: permission "
                                      "denied (the socket is root's)\n")
    assert router.calls == [("connect", ["10.0.0.5"], False)]


async def test_a_second_router_on_the_socket_is_refused_and_a_leftover_replaced(
        nursery: trio.Nursery, socket_dir: Path) -> None:
    path = socket_dir / "weave.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))
    leftover.close()  # a router that died: the file stays, nobody listens
    await nursery.start(run_api, RouterDouble(), path)
    with pytest.raises(OSError) as caught:
        await run_api(RouterDouble(), path)
    assert caught.value.errno == errno.EADDRINUSE
    assert f"another router answers on {path}" in str(caught.value)
    assert (await _unix_status(path)) == 200  # the first one still serves


async def test_a_file_that_is_not_a_socket_is_left_alone(socket_dir: Path) -> None:
    path = socket_dir / "weave.db"
    path.write_text("precious")
    with pytest.raises(ConfigError, match=f"--socket: {path} exists and is not a socket"):
        await run_api(RouterDouble(), path)
    assert path.read_text() == "precious"


async def test_the_socket_is_removed_when_the_api_stops(socket_dir: Path) -> None:
    path = socket_dir / "weave.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(run_api, RouterDouble(), path)
        assert path.exists()
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def _unix_status(path: Path) -> int:
    stream = await trio.open_unix_socket(str(path))
    await stream.send_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return int(received.split()[1])


def test_where_the_cli_talks(tmp_path: Path) -> None:
    present, absent = tmp_path / "present.sock", tmp_path / "absent.sock"
    present.touch()

    def where(flag_addr: str | None, flag_sock: str | None, env: dict[str, str],
              default: Path = absent) -> str:
        return choose_api(flag_addr, flag_sock, env, default_socket=default).where

    assert where(None, None, {}) == "127.0.0.1:6784"
    assert where(None, None, {}, present) == str(present)  # the default socket, if there
    assert where("127.0.0.1:7000", None, {}, present) == "127.0.0.1:7000"
    assert where(None, "/x.sock", {"WEAVE_HTTP_ADDR": "127.0.0.1:7"}) == "/x.sock"
    assert where(None, None, {"WEAVE_SOCKET": "/y.sock", "WEAVE_HTTP_ADDR": "1.2.3.4:5"}) == (
        "/y.sock")
    assert where(None, None, {"WEAVE_HTTP_ADDR": "127.0.0.1:7"}, present) == "127.0.0.1:7"
    with pytest.raises(ConfigError, match="give --socket or --http-addr, not both"):
        where("127.0.0.1:1", "/x.sock", {})


def test_launch_flags_choose_the_socket(tmp_path: Path) -> None:
    from cli.launch import build_config
    from cli.main import parse_args
    from router.config import DEFAULT_API_SOCKET

    def socket_of(*argv: str, env: dict[str, str] | None = None) -> Path | None:
        return build_config(parse_args(["launch", *argv]), env or {}).api_socket

    assert socket_of() == DEFAULT_API_SOCKET
    db = tmp_path / "h1" / "weave.db"
    assert socket_of("--db-path", str(db)) == tmp_path / "h1" / "weave.sock"
    assert socket_of("--socket", str(tmp_path / "s")) == tmp_path / "s"
    assert socket_of("--socket", "") is None
    assert socket_of(env={"WEAVE_SOCKET": str(tmp_path / "e")}) == tmp_path / "e"
    code = subprocess.run([sys.executable, "-m", "cli.main", "launch", "--socket", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert (code.returncode, code.stderr) == (2, f"weave-router: error: --socket: {tmp_path} "
                                                 "is a directory\n")
