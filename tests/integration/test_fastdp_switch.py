"""The overlay switch in real routers: what the sleeve tells it, and switches under traffic.

Two hosts in namespaces (``router/testing/netns.py``) run ``weave-router launch``, the
fastdp switch's timers shortened with ``WEAVE_ROUTER_TIMINGS``. Checked:

* the sleeve's own state per peer reaches the switch and the report
  (``OverlayDiagnostics.fastdp.peers[].sleeve``): with UDP 6783 (the sleeve) dropped in
  host2, host1 hears host2's sleeve heartbeats (``heard``), host2 nothing (``pending``),
  while fastdp works; then with UDP 6784 dropped too, both keep fastdp ("heartbeats lost
  since ...; sleeve not established": the sleeve carries nothing either) and move to the
  sleeve once it is allowed again and established.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from router.testing.netns import Host, run_parallel
from tests.integration.conftest import MeshFactory

pytestmark = pytest.mark.integration

TIMEOUT = 2.0  # fastdp heartbeat timeout (s)
TIMINGS = {"WEAVE_ROUTER_TIMINGS":
           f"fastdp_heartbeat_timeout={TIMEOUT},fastdp_hold=2,fastdp_retry_max=2"}


def _peer(host: Host) -> dict[str, object]:
    """The report's one fastdp peer entry."""
    out = host.router("report", "-f", "{{json .Router.OverlayDiagnostics.fastdp}}").stdout
    peers = json.loads(out)["peers"]
    assert len(peers) == 1, peers
    entry = next(iter(peers.values()))
    assert isinstance(entry, dict)
    return entry


def _wait_peer(host: Host, what: str, check: dict[str, object], timeout: float = 20.0
               ) -> dict[str, object]:
    """Wait until the peer entry has every field of ``check`` (a str value ending in
    "..." is a prefix)."""
    got: dict[str, object] = {}

    def probe() -> tuple[bool, str]:
        nonlocal got
        got = _peer(host)
        ok = all(str(got.get(k, "")).startswith(v[:-3]) if isinstance(v, str)
                 and v.endswith("...") else got.get(k) == v for k, v in check.items())
        return ok, json.dumps(got)
    host.wait(what, probe, timeout=timeout)
    return got


def _drop(host: Host, table: str, port: int) -> None:
    host.run(["nft", "-f", "-"], input=(
        f"table inet {table} {{\n chain input {{ type filter hook input priority 0;"
        f" udp dport {port} drop; }}\n}}\n"))


def _allow(host: Host, table: str) -> None:
    host.run(["nft", "delete", "table", "inet", table])


def test_sleeve_state_reaches_the_switch_and_holds_fastdp(make_mesh: MeshFactory) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    _drop(h2, "swisleeve", 6783)  # the sleeve's UDP into host2
    h1.launch(env=TIMINGS)
    h2.launch(h1.ip, env=TIMINGS)
    run_parallel(
        lambda: _wait_peer(h1, "fastdp, sleeve heard", {"overlay": "fastdp", "sleeve": "heard"}),
        lambda: _wait_peer(h2, "fastdp, sleeve pending",
                           {"overlay": "fastdp", "sleeve": "pending"}))

    _drop(h2, "swivxlan", 6784)
    held = {"overlay": "fastdp", "reason": "heartbeats lost since ...",
            "sleeve_mtu": 0}
    for h in (h1, h2):
        entry = _wait_peer(h, "held on fastdp", held, timeout=15)
        assert str(entry["reason"]).endswith("; sleeve not established"), entry
    time.sleep(2 * TIMEOUT)  # still held: nowhere better to go
    for h in (h1, h2):
        assert _peer(h)["overlay"] == "fastdp", _peer(h)

    _allow(h2, "swisleeve")
    for h in (h1, h2):
        entry = _wait_peer(h, "sleeve once established",
                           {"overlay": "sleeve", "sleeve": "established"}, timeout=30)
        assert int(entry["sleeve_mtu"]) >= 1400, entry  # type: ignore[call-overload]
        assert re.fullmatch(r"heartbeats lost since \S+Z", str(entry["reason"])), entry
    _allow(h2, "swivxlan")
    for h in (h1, h2):
        _wait_peer(h, "fastdp again", {"overlay": "fastdp", "reason": "",
                                       "sleeve": "established"}, timeout=30)
