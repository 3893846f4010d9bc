"""Hostile and measuring clients of the control API, for ``bench/api_soak.py`` and the
integration tests. Run inside a host's namespace (``ip netns exec``), optionally as
another user (``router/testing/as_user.py``); each mode prints one JSON object on stdout.

* ``hold``: ``--slow N`` slowloris connections (a partial request head, then one byte
  every ``--trickle`` seconds; when the router drops one, it reconnects at once) and
  ``--storm M`` tasks that connect, send half a head and hang up, as fast as they can.
  Prints ``{"ready": true}`` once every slow connection was opened, then, at the end
  (``--seconds``, or stdin closed), their counts: connections opened, dropped without a
  reply, answered 408 / 503 / other.
* ``probe``: ``--count`` sequential ``GET /status`` requests ``--interval`` s apart, each
  on a new connection as the CLI makes them, over ``--tcp HOST:PORT`` or ``--unix PATH``;
  prints each latency (ms) and every failure.

Bounded: at most :data:`MAX_CLIENTS` connections, :data:`MAX_SECONDS` seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from collections import Counter
from typing import Any

import trio

MAX_CLIENTS = 2000
MAX_SECONDS = 600.0
PROBE_TIMEOUT = 10.0  # seconds for one probe request


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def probe(target: str, unix: bool, count: int, interval: float) -> dict[str, Any]:
    """``count`` GET /status, each on a new connection; latencies in ms, failures."""
    latencies: list[float] = []
    failures: list[str] = []
    for _ in range(count):
        conn: http.client.HTTPConnection
        if unix:
            conn = _Unix(target, PROBE_TIMEOUT)
        else:
            host, _, port = target.rpartition(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=PROBE_TIMEOUT)
        start = time.perf_counter()
        try:
            conn.request("GET", "/status")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                latencies.append((time.perf_counter() - start) * 1000.0)
            else:
                failures.append(f"HTTP {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        time.sleep(interval)
    return {"latencies_ms": latencies, "failures": failures[:20], "failure_count": len(failures)}


async def _slow(port: int, trickle: float, counts: Counter[str], opened: trio.Event,
                first: list[int], total: int) -> None:
    announced = False
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            counts["connect_failed"] += 1
            await trio.sleep(0.01)
            continue
        counts["opened"] += 1
        if not announced:
            announced = True
            first[0] += 1
            if first[0] == total:
                opened.set()
        counts[await _trickle(stream, port, trickle)] += 1


async def _trickle(stream: trio.SocketStream, port: int, trickle: float) -> str:
    """Hold ``stream`` with a partial head; how the router ended it."""
    try:
        await stream.send_all(f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        while True:
            with trio.move_on_after(trickle):
                data = await stream.receive_some(4096)
                if not data:
                    return "dropped"
                return _answer(data)
            await stream.send_all(b"X")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return "dropped"
    finally:
        await trio.aclose_forcefully(stream)


def _answer(data: bytes) -> str:
    parts = data.split(b" ", 2)
    code = parts[1].decode("ascii", "replace") if len(parts) > 1 else "?"
    return f"answered_{code}" if code in ("408", "503") else "answered_other"


async def _storm(port: int, counts: Counter[str]) -> None:
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /status HTTP/1.1\r\n")
            await trio.aclose_forcefully(stream)
            counts["storm_connections"] += 1
        except OSError:
            counts["connect_failed"] += 1
        await trio.sleep(0)


async def hold(port: int, slow: int, storm: int, trickle: float, seconds: float) -> None:
    """Run the slow clients and the storm for ``seconds`` (or until stdin closes)."""
    counts: Counter[str] = Counter()
    opened, first = trio.Event(), [0]
    async with trio.open_nursery() as nursery:
        for _ in range(slow):
            nursery.start_soon(_slow, port, trickle, counts, opened, first, slow)
        with trio.move_on_after(min(seconds, 60.0)):
            await opened.wait()
        print(json.dumps({"ready": opened.is_set()}), flush=True)
        for _ in range(storm):
            nursery.start_soon(_storm, port, counts)
        with trio.move_on_after(seconds):
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    print(json.dumps(dict(counts)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.testing.slow_clients")
    modes = parser.add_subparsers(dest="mode", required=True)
    h = modes.add_parser("hold")
    h.add_argument("--port", type=int, default=6784)
    h.add_argument("--slow", type=int, default=100)
    h.add_argument("--storm", type=int, default=0)
    h.add_argument("--trickle", type=float, default=1.0)
    h.add_argument("--seconds", type=float, default=30.0)
    p = modes.add_parser("probe")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT")
    where.add_argument("--unix", metavar="PATH")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args(argv)
    if args.mode == "hold":
        if not 0 <= args.slow + args.storm <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS:
            parser.error(f"at most {MAX_CLIENTS} clients and {MAX_SECONDS:g} s")
        trio.run(hold, args.port, args.slow, args.storm, args.trickle, args.seconds)
        return 0
    count = min(args.count, 10_000)
    result = probe(args.unix or args.tcp, args.unix is not None, count, args.interval)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
