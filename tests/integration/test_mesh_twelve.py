"""Twelve real routers on one LAN, each in its own namespace, every one told only host1:
discovery makes a full mesh (12 x 11 established connections), each pair on fastdp, and
every router's last fastdp pass succeeded. In 2- and 3-router meshes a peer's heartbeat
rarely reaches the bridge before its MAC is pinned; at 8 and 20 routers it did, and every
pass of the router that saw it failed with EEXIST (retried each second, the rest of the
pass undone). The 20-router figures (time to a full mesh, RSS, idle CPU):
``make bench-processes``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from router.testing.netns import Host, Mesh, run_parallel

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]
ROUTERS = 12
BATCH = 4  # launched at once: each launch starts a Python process, on 2 cores


def _fastdp(host: Host) -> dict[str, object]:
    out = host.router("report", "-f", "{{json .Router.OverlayDiagnostics.fastdp}}",
                      timeout=30.0).stdout
    diagnostics = json.loads(out)
    assert isinstance(diagnostics, dict), out
    return diagnostics


@pytest.mark.timeout(600)
def test_twelve_routers_form_a_full_mesh_on_fastdp(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(ROUTERS)
    hub, *rest = mesh.hosts
    hub.launch(timeout=120.0)
    for i in range(0, len(rest), BATCH):
        run_parallel(*(lambda h=h: h.launch(hub.ip, timeout=120.0)
                       for h in rest[i:i + BATCH]))
    mesh.wait_full_mesh(timeout=300.0)

    def on_fastdp(host: Host) -> tuple[bool, str]:
        diagnostics = _fastdp(host)
        return diagnostics.get("peers_on_fastdp") == ROUTERS - 1, str(
            {k: v for k, v in diagnostics.items() if k != "peers"})

    run_parallel(*(lambda h=h: h.wait(f"{ROUTERS - 1} peers on fastdp", lambda: on_fastdp(h),
                                      timeout=120.0) for h in mesh.hosts))
    first, last = mesh.add_bare_container(hub), mesh.add_bare_container(mesh.hosts[-1])
    first.attach()
    [far] = last.attach().stdout.split()
    ping = first.run(["ping", "-c", "3", "-W", "2", far], check=False, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # every router's last kernel pass succeeded (one refused op fails a whole pass)
    errors = {h.name: (d.get("kernel_errors"), d.get("kernel_last_error"))
              for h in mesh.hosts for d in [_fastdp(h)]}
    assert all(last == "" for _, last in errors.values()), errors
