"""The data plane by name: ``--dataplane reference`` runs the pure-Python twin end to end
(slow, but the same wire format), so the two backends are interchangeable on the wire."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from router.testing.netns import Mesh, run_parallel

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]


@pytest.mark.parametrize("second", ["reference", "native"])
def test_a_reference_router_talks_to_a_router_of_either_backend(
    make_mesh: MakeMesh, second: str
) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    containers = [f"{mesh.prefix}-r1", f"{mesh.prefix}-r2"]
    for name in containers:
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        run_parallel(lambda: h1.launch("--dataplane", "reference"),
                     lambda: h2.launch("--dataplane", second, h1.ip))
        h1.wait_established(1)
        h1.router("attach", "ip:172.31.7.1/24", containers[0])
        h2.router("attach", "ip:172.31.7.2/24", containers[1])
        ping = subprocess.run(["ip", "netns", "exec", containers[0], "ping", "-c", "3", "-i",
                               "0.2", "-W", "2", "-s", "3000", "172.31.7.2"],
                              capture_output=True, text=True, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        for name in containers:
            subprocess.run(["ip", "netns", "del", name], timeout=10)


def test_an_unknown_backend_is_refused_with_one_line(make_mesh: MakeMesh) -> None:
    host = make_mesh(1).hosts[0]
    result = host.launch("--dataplane", "turbo", check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--dataplane" in result.stderr, result.stderr
