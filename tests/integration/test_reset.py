"""``weave-router reset``: the bridge, every device of ours and the data go; containers
lose ``ethwe``. Real routers in host namespaces, checked with ``ip`` as a user would."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from router.testing.netns import Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]


@pytest.fixture
def bare_container(make_mesh: MakeMesh) -> Iterator[tuple[Host, str]]:
    mesh = make_mesh(1)
    name = f"{mesh.prefix}-bare"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield mesh.hosts[0], name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def links(where: list[str]) -> str:
    return subprocess.run(["ip", *where, "-o", "link"], capture_output=True, text=True,
                          check=True, timeout=10).stdout


def test_reset_removes_bridge_devices_containers_ethwe_and_data(
    bare_container: tuple[Host, str],
) -> None:
    host, container = bare_container
    host.launch()
    host.router("attach", "ip:10.32.9.1/12", container)
    assert "ethwe" in links(["-n", container])
    assert " weave:" in links(["-n", host.name]) and "vethwe-pcap" in links(["-n", host.name])

    host.router("reset")

    assert host.router("status", check=False).returncode != 0
    host_links = links(["-n", host.name])
    assert " weave:" not in host_links and "vethwe" not in host_links, host_links
    assert "ethwe" not in links(["-n", container])
    assert not host.db_path.exists()


def test_reset_after_stop_removes_what_the_stopped_router_left(make_mesh: MakeMesh) -> None:
    host = make_mesh(1).hosts[0]
    host.launch()
    host.router("stop")
    assert " weave:" in links(["-n", host.name])  # stop leaves the bridge: containers talk on

    host.router("reset", "--db-path", str(host.db_path))

    assert " weave:" not in links(["-n", host.name])
    assert not host.db_path.exists()
