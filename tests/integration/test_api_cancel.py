"""An ``attach`` whose client gives up while IPAM awaits consensus leaves nothing behind
(issue 10 item 4): the control API notices the connection closing, the pending
allocation is cancelled, and no address goes to the container later."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from router.testing.netns import Mesh, wait_until

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]


def _report(host: object) -> dict[str, object]:
    proc = host.router("report")  # type: ignore[attr-defined]
    return dict(json.loads(proc.stdout))


def _pending(host: object) -> int:
    ipam = _report(host)["IPAM"]
    assert isinstance(ipam, dict)
    pending = ipam["PendingAllocates"]  # a list, null when empty (as Go Weave's report)
    assert pending is None or isinstance(pending, list)
    return len(pending or [])


def test_attach_aborted_by_its_client_allocates_nothing(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    h1.launch("--ipalloc-init", "consensus=2")
    c1 = mesh.add_bare_container(h1)
    ident = f"netns-{os.stat(f'/run/netns/{c1.name}').st_ino:x}"
    aborted = h1.run(["timeout", "5", *h1.router_argv("attach", c1.name)], check=False,
                     timeout=30)
    assert aborted.returncode == 124, (aborted.returncode, aborted.stdout, aborted.stderr)
    # The router notices the closed connection and drops the pending request.
    wait_until("PendingAllocates 0 on host1", lambda: (_pending(h1) == 0, str(_report(h1))),
               timeout=10)
    h2.launch("--ipalloc-init", "consensus=2", h1.ip)
    mesh.wait_full_mesh()
    assert h2.router("prime", timeout=30).returncode == 0
    assert h1.router("prime", timeout=30).returncode == 0
    report = _report(h1)
    ipam = report["IPAM"]
    assert isinstance(ipam, dict) and not ipam["PendingAllocates"], ipam
    owned = h1.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                    f"http://127.0.0.1:6784/ip/{ident}"], check=False).stdout
    assert owned == "404", f"{ident} holds an address: HTTP {owned}"
    assert "ethwe" not in c1.links(), c1.links()
    assert not [link for link in h1.links() if link.startswith("vethwepl")], h1.links()
    assert h1.router("ps").stdout == ""
