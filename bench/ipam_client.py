"""The HTTP client of the IPAM benchmark, run inside a host namespace (``ip netns exec``).

Standard library only, started as a script (``python bench/ipam_client.py ...``) so it
needs nothing from the repository. It talks HTTP/1.1 to the router's API on
``127.0.0.1:6784`` over persistent connections (``http.client``, one per client thread)
and prints one JSON document on stdout.

``burst --clients K --count N --prefix P``
    K threads, each with its own connection opened before the clock starts, together
    POST ``/ip/<P>-<i>`` for ``i`` in ``0..N-1`` (thread ``t`` takes every K-th id), then,
    after all allocations are answered, DELETE ``/ip/<id>`` of each. Output::

        {"alloc": {"seconds": wall, "latencies_ms": [...], "errors": [...]},
         "free": {"seconds": wall, "latencies_ms": [...], "errors": [...]},
         "answers": N_ok, "distinct": N_distinct_addresses, "reconnects": n,
         "cpu_seconds": this process's CPU over both phases}

    ``seconds`` runs from the moment every thread is connected and released to the last
    answer; a latency is one request, from its first byte sent to its whole answer read.
    ``reconnects`` counts answers that closed the connection (expected: 0).

``first --id ID [--timeout S]``
    One connection, one timed ``POST /ip/<ID>`` (it waits for consensus when the ring is
    not known yet). Output: ``{"seconds", "status", "body"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sys
import threading
import time
from typing import Any

HOST = "127.0.0.1"
PORT = 6784
MAX_ERRORS = 20  # error messages kept per phase (the count is exact)


class Phase:
    """What one phase (allocate or free) saw, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.start = 0.0
        self.end = 0.0

    def record(self, seconds: float, error: str | None) -> None:
        """One request done at ``time.perf_counter()``: its latency or its error."""
        now = time.perf_counter()
        with self.lock:
            self.end = max(self.end, now)
            if error is None:
                self.latencies.append(seconds * 1000.0)
            else:
                self.error_count += 1
                if len(self.errors) < MAX_ERRORS:
                    self.errors.append(error)

    def as_json(self) -> dict[str, Any]:
        """The phase as a JSON-ready dict."""
        return {"seconds": max(0.0, self.end - self.start), "latencies_ms": self.latencies,
                "errors": self.errors, "error_count": self.error_count}


def _request(conn: http.client.HTTPConnection, method: str,
             path: str) -> tuple[float, int, str, bool]:
    """One request: (seconds, status, body, whether the server closes the connection)."""
    t0 = time.perf_counter()
    conn.request(method, path, headers={"Content-Length": "0"})
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    return time.perf_counter() - t0, resp.status, body, resp.will_close


def _client(ids: list[str], timeout: float, ready: threading.Barrier, go: threading.Event,
            alloc: Phase, free: Phase, answers: dict[str, str], between: threading.Barrier,
            reconnects: list[int]) -> None:
    conn = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    try:
        conn.connect()
        ready.wait(timeout)
        go.wait(timeout)
        for phase, method in ((alloc, "POST"), (free, "DELETE")):
            for ident in ids:
                try:
                    seconds, status, body, closes = _request(conn, method, f"/ip/{ident}")
                except (OSError, http.client.HTTPException) as exc:
                    phase.record(0.0, f"{method} {ident}: {type(exc).__name__}: {exc}")
                    conn.close()
                    continue
                if closes:
                    with phase.lock:
                        reconnects[0] += 1
                if status != 200:
                    phase.record(seconds, f"{method} {ident}: {status} {body.strip()}")
                    continue
                if method == "POST":
                    answers[ident] = body.strip()
                phase.record(seconds, None)
            if phase is alloc:
                between.wait(timeout)
    except (OSError, threading.BrokenBarrierError) as exc:
        alloc.record(0.0, f"client: {type(exc).__name__}: {exc}")
        ready.abort()  # never leave the others waiting for this thread
        between.abort()
    finally:
        conn.close()


def burst(clients: int, count: int, prefix: str, timeout: float) -> dict[str, Any]:
    """K clients allocate then free ``count`` ids between them (see the module docstring)."""
    alloc, free = Phase(), Phase()
    answers: dict[str, str] = {}
    reconnects = [0]
    ready = threading.Barrier(clients + 1)
    go = threading.Event()

    def start_free() -> None:
        free.start = time.perf_counter()

    between = threading.Barrier(clients, action=start_free)
    ids = [f"{prefix}-{i}" for i in range(count)]
    threads = [threading.Thread(target=_client, daemon=True,
                                args=(ids[t::clients], timeout, ready, go, alloc, free,
                                      answers, between, reconnects))
               for t in range(clients)]
    for thread in threads:
        thread.start()
    # a client that could not connect breaks the barrier: its error is recorded, all stop
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(timeout)
    cpu0 = time.process_time()
    alloc.start = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    return {"alloc": alloc.as_json(), "free": free.as_json(), "answers": len(answers),
            "distinct": len(set(answers.values())), "reconnects": reconnects[0],
            "cpu_seconds": time.process_time() - cpu0}


def first(ident: str, timeout: float) -> dict[str, Any]:
    """One timed POST /ip/<ident> on a fresh connection (see the module docstring)."""
    conn = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    try:
        conn.connect()
        seconds, status, body, _ = _request(conn, "POST", f"/ip/{ident}")
    finally:
        conn.close()
    return {"seconds": seconds, "status": status, "body": body.strip()}


def main() -> int:
    """Parse the command line, run it, print the JSON."""
    parser = argparse.ArgumentParser(prog="ipam_client.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("burst")
    b.add_argument("--clients", type=int, default=1)
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--prefix", required=True)
    b.add_argument("--timeout", type=float, default=30.0)
    f = sub.add_parser("first")
    f.add_argument("--id", required=True)
    f.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.cmd == "burst":
        out = burst(args.clients, args.count, args.prefix, args.timeout)
    else:
        out = first(args.id, args.timeout)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
