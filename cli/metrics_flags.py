"""``launch --metrics-addr HOST:PORT`` (Weave's router calls it ``--status-addr``; its
script takes it from ``WEAVE_STATUS_ADDR``): where /metrics and /status are served.
An empty value turns the endpoint off, as in Weave."""

from __future__ import annotations

from collections.abc import Mapping

from cli.client import parse_http_addr
from router.config import DEFAULT_METRICS_ADDR

ENV_STATUS_ADDR = "WEAVE_STATUS_ADDR"
HELP = f"/metrics and /status address (127.0.0.1:6782; '' for none) [{ENV_STATUS_ADDR}]"


def metrics_addr(flag_value: str | None, env: Mapping[str, str]) -> tuple[str, int] | None:
    """From ``--metrics-addr``, else ``WEAVE_STATUS_ADDR``, else the default; '' None."""
    if flag_value is not None:
        return parse_http_addr(flag_value, "--metrics-addr") if flag_value else None
    value = env.get(ENV_STATUS_ADDR)
    if value is not None:
        return parse_http_addr(value, ENV_STATUS_ADDR) if value else None
    return DEFAULT_METRICS_ADDR
