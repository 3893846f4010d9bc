"""IPAM through the CLI as users type it: attach without an address, status ipam, prime,
rmpeer, and mistakes. Real routers in host namespaces."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator

import pytest

from router.testing.netns import Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]


@pytest.fixture
def mesh3(make_mesh: MakeMesh) -> Iterator[tuple[Mesh, list[str]]]:
    mesh = make_mesh(3)
    containers = [f"{mesh.prefix}-a{i}" for i in (1, 2)]
    for name in containers:
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        mesh.launch_star()
        mesh.wait_full_mesh()
        yield mesh, containers
    finally:
        for name in containers:
            subprocess.run(["ip", "netns", "del", name], timeout=10)


def test_attach_without_an_address_allocates_from_the_range(
    mesh3: tuple[Mesh, list[str]],
) -> None:
    mesh, (c1, c2) = mesh3
    h1, h2, h3 = mesh.hosts
    a1 = h1.router("attach", c1).stdout.strip()
    a2 = h2.router("attach", c2).stdout.strip()
    assert a1 != a2 and all(a.startswith(("10.3", "10.4")) for a in (a1, a2)), (a1, a2)
    ping = subprocess.run(["ip", "netns", "exec", c1, "ping", "-c", "2", "-W", "2", a2],
                          capture_output=True, text=True, timeout=30)
    assert ping.returncode == 0, ping.stdout
    assert "Status: ready" in h3.status()
    shares = h3.status("ipam").splitlines()
    assert len(shares) == 3, shares
    percent = sum(float(m) for m in re.findall(r"\(([\d.]+)% of total\)", "\n".join(shares)))
    assert abs(percent - 100) < 0.5, shares
    assert h3.router("prime").returncode == 0
    h2.router("detach", c2)
    assert c2 not in h2.router("ps").stdout


def test_ipam_mistakes_are_one_line_errors(mesh3: tuple[Mesh, list[str]]) -> None:
    mesh, (c1, _) = mesh3
    h1 = mesh.hosts[0]
    for args, says in ((["attach", "net:10.2.3.2/30", c1], "10.2.3.2/30"),
                       (["attach", "10.32.5.1/31", c1], "10.32.5.1/31"),
                       (["attach", "net:10.99.0.0/24", c1], "out of bounds"),
                       (["rmpeer", "no-such-peer"], "no-such-peer")):
        result = h1.router(*args, check=False)
        assert result.returncode != 0, args
        assert result.stderr.count("\n") == 1, (args, result.stderr)
        assert says in result.stderr, (args, result.stderr)
    assert h1.router("ps").stdout == ""
