"""``launch`` (detached) reads the new router's name from its first report. On a busy host
(20 routers starting on 2 cores) that report took longer than one poll's 2 s and the
launch failed although the router ran; now it asks again until the launch's deadline.
Served by a real HTTP server on 127.0.0.1 whose ``/report`` is slow or busy at first."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest

from cli.launch import PROBE_TIMEOUT, LaunchError, router_name

NAME = "7e:21:4a:70:2f:45"


class _Router(http.server.BaseHTTPRequestHandler):
    """``/report``: the first ``busy`` answers are 503, the next one waits ``delay`` s."""

    busy = 0
    delay = 0.0
    body = json.dumps({"Router": {"Name": NAME}}).encode()
    asked = 0

    def do_GET(self) -> None:
        cls = type(self)
        cls.asked += 1
        if cls.asked <= cls.busy:
            self._answer(503, b"busy\n")
            return
        time.sleep(cls.delay)
        self._answer(200, cls.body)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def router() -> Iterator[tuple[type[_Router], tuple[str, int]]]:
    handler = type("Handler", (_Router,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, ("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_report_slower_than_a_poll_is_waited_for(
        router: tuple[type[_Router], tuple[str, int]]) -> None:
    handler, addr = router
    handler.delay = PROBE_TIMEOUT + 0.5
    assert router_name(addr, time.monotonic() + 10.0) == NAME


def test_a_busy_api_is_asked_again(router: tuple[type[_Router], tuple[str, int]]) -> None:
    handler, addr = router
    handler.busy = 3
    assert router_name(addr, time.monotonic() + 10.0) == NAME
    assert handler.asked == 4


def test_no_report_by_the_deadline_or_a_bad_one_is_one_clear_error(
        router: tuple[type[_Router], tuple[str, int]]) -> None:
    handler, addr = router
    handler.busy = 10_000
    with pytest.raises(LaunchError, match=r"^the router started but gave no report within "
                       r"30 s: HTTP 503$"):
        router_name(addr, time.monotonic() + 0.5)
    handler.busy, handler.asked, handler.body = 0, 0, b"{}"
    with pytest.raises(LaunchError, match=r"its report is unreadable: 'Router'"):
        router_name(addr, time.monotonic() + 5.0)
