"""The metrics endpoint: ``GET /metrics`` (Prometheus text) and ``GET /status[/VIEW]``
on ``--metrics-addr`` (default 127.0.0.1:6782, Weave's ``WEAVE_STATUS_ADDR``).

It is served by the control API's server (``router/control/server.py``): the same
accept batches, lanes, per-client limits, deadlines and eviction, so a slow or hostile
scraper cannot take it (or the router) down. It never changes state: only GET.

Each scrape reads the router's live state on the trio thread (``RouterCollector``) and
prometheus_client renders the exposition; process metrics (CPU, memory, descriptors)
and Python's GC and platform info come from prometheus_client's own collectors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from router.control.api import ApiLimits, tcp_listeners
from router.control.http import Reply, Request, error
from router.control.layouts import VIEWS
from router.control.server import Server
from router.metrics.collector import RouterCollector
from router.status import Status

log = logging.getLogger("weave-router.metrics")

# A scraper needs few connections: small lanes, and the API's deadlines.
METRICS_LIMITS = ApiLimits(max_body_bytes=0, max_unix_clients=1, max_root_clients=8,
                           max_clients=16, max_per_client=4)
LISTEN_BACKLOG = 128


def make_registry(collector: RouterCollector) -> CollectorRegistry:
    """Our collector plus process, GC and platform metrics, in a registry of their own
    (never prometheus_client's global one: several routers may share a test process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def metrics_dispatch(registry: CollectorRegistry,
                     snapshot: Callable[[], Status]) -> Callable[[Request], Awaitable[Reply]]:
    """The request handler of the metrics port."""

    views: dict[str, str | None] = {"/metrics": None,
                                    **{("/status/" + v).rstrip("/"): v for v in VIEWS}}

    async def dispatch(request: Request) -> Reply:
        if request.path not in views:
            return error(404, f"no such path: {request.path} (try /metrics or /status)")
        if request.method != "GET":
            return Reply(405, f"method {request.method} not allowed on {request.path} "
                         "(use GET)\n", allow="GET")
        view = views[request.path]
        try:
            if view is None:
                return Reply(200, generate_latest(registry).decode(),
                             content_type=CONTENT_TYPE_PLAIN_0_0_4)  # as Weave
            status = snapshot()
            if not status.ready:
                return error(503, "not ready")
            return Reply(200, VIEWS[view](status))
        except Exception:
            log.exception("metrics: GET %s failed", request.path)
            return error(500, f"internal error serving GET {request.path} (see the log)")

    return dispatch


async def serve_metrics(
    collector: RouterCollector,
    snapshot: Callable[[], Status],
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics and /status on ``host:port`` until cancelled; ``started((host,
    bound_port))``. OSError (the port in use, a foreign address) before ``started``."""
    listeners = tcp_listeners(host, port)
    try:
        bound_port = int(listeners[0].getsockname()[1])
        for sock in listeners:
            sock.listen(LISTEN_BACKLOG)
        registry = make_registry(collector)
        server = Server(metrics_dispatch(registry, snapshot), METRICS_LIMITS.server_limits(),
                        http_host=host, port=bound_port)
        log.info("metrics listening on %s:%d", host, bound_port)
        async with trio.open_nursery() as nursery:
            for sock in listeners:
                nursery.start_soon(server.serve, sock, nursery)
            task_status.started((host, bound_port))
    finally:
        for sock in listeners:
            sock.close()


__all__ = ["METRICS_LIMITS", "make_registry", "metrics_dispatch", "serve_metrics"]
