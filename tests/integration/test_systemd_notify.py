"""The router as systemd runs it (``launch --foreground --no-restart``, ``Type=notify``),
with the test in systemd's place: it binds the notify socket, reads READY=1 and STATUS=,
sends SIGTERM, reads STOPPING=1. And ``stop`` clears the sleeve port's conntrack
entries (weave#1042) while the bridge stays for the containers. The router alone tracks
nothing until something is exposed (docs/host.md), so host1 gets a stateful table of its
own first, as any host with Docker or a stateful firewall has."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from router.testing.netns import Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]


def sleeve_entries(host: Host) -> str:
    return host.run(["conntrack", "-L", "-p", "udp", "--dport", "6783"], check=False).stdout


STATEFUL = """table inet wr-test-stateful {
  chain output { type filter hook output priority filter; policy accept; ct state new counter; }
}
"""


def test_ready_status_stopping_and_conntrack_cleared(make_mesh: MakeMesh,
                                                     tmp_path: Path) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    h1.run(["nft", "-f", "-"], input=STATEFUL)  # connection tracking on in host1
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))  # a path: reachable from any netns
        notify.settimeout(30)
        router = h1.popen(h1.router_argv("launch", "--foreground", "--no-restart"),
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        ready = notify.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=1 peer, 0 established, IPAM "), ready
        assert h1.status().startswith("        Version:")  # READY=1 came once it serves

        h2.launch(h1.ip)
        h1.wait_established(1)
        h2.stop_router()  # h1 keeps sending heartbeats to h2: entries to udp 6783 now
        h1.wait("conntrack entries of the sleeve port",
                lambda: ("dport=6783" in (out := sleeve_entries(h1)), out), timeout=10.0)

        router.send_signal(signal.SIGTERM)
        messages = [notify.recv(4096).decode()]
        while messages[-1].startswith("STATUS="):  # updates every 5 s while it runs
            messages.append(notify.recv(4096).decode())
        assert messages[-1] == "STOPPING=1", messages
        assert router.wait(timeout=20) == 0
    assert "dport=6783" not in sleeve_entries(h1), "stop left conntrack entries"
    assert "weave" in h1.links()  # the bridge stays: local containers keep talking
