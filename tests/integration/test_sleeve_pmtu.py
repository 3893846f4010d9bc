"""Path MTU verified by probes, through a black hole on the underlay.

Three hosts on one LAN bridge. host2's port on the bridge carries at most 1280 bytes while
host2's ``eth0`` (and everyone's routes) still say 1500: bigger frames vanish without an
ICMP, which is what a misconfigured middle box does. The kernel's estimate for host1 ->
host2 is 1500; only probes find 1280. host1 -> host3 is clean: the comparison.

A container on host1 and one on host2 (attached with ``ip:`` addresses outside IPAM's
10.32.0.0/12) then ping with 10,000-byte packets (fragmented by the container, every
fragment a full-size frame) and move 20 MiB over TCP.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from router.overlay.sleeve.pmtu import overlay_mtu
from router.testing.netns import Host, Mesh, Namespace, run_parallel
from tests.integration.test_sleeve import assert_pings, assert_tcp_transfer

pytestmark = pytest.mark.integration

MakeMesh = Callable[..., Mesh]  # the make_mesh fixture: make_mesh(n_hosts, mtu=None)
BLACK_HOLE = 1280  # bytes: what host2's port on the LAN bridge carries
PREFIXLEN = 24


def container_ip(n: int) -> str:
    return f"10.99.1.{n}"


def mtu_to(host: Host, peer: Host) -> tuple[int, str]:
    """The ``mtu=N`` of ``host``'s established connection to ``peer`` (0 if none yet)."""
    text = host.status("connections")
    for line in host.connections():
        words = line.text.split()
        if line.state == "established" and f"({peer.nickname})" in line.text:
            for word in words:
                if word.startswith("mtu=") and word[4:].isdigit():
                    return int(word[4:]), text
    return 0, text


def test_probes_find_a_black_hole_the_route_does_not_show(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    # the black hole: host2's bridge port only; host2's eth0 and every route stay at 1500
    Namespace(mesh.lan, mesh.env).run(["ip", "link", "set", "h2", "mtu", str(BLACK_HOLE)])
    assert h2.run(["cat", "/sys/class/net/eth0/mtu"]).stdout.strip() == "1500"
    mesh.launch_star("--no-fastdp")  # the sleeve's path MTU (fastdp has its own)
    mesh.wait_full_mesh(timeout=30)
    mesh.wait_routes(timeout=30)

    # Out of host2, the port is a veth's receiving end, which (Linux) lets frames of MTU + 4
    # bytes through (room for a VLAN tag): the probes find exactly that, so up to 4 more.
    clean, holed = overlay_mtu(1500, encrypted=False), overlay_mtu(BLACK_HOLE, encrypted=False)
    for host, peer, low, high in ((h1, h2, holed, holed), (h2, h1, holed, holed + 4),
                                  (h1, h3, clean, clean)):
        def verified(host: Host = host, peer: Host = peer, low: int = low, high: int = high
                     ) -> tuple[bool, str]:
            mtu, text = mtu_to(host, peer)
            return low <= mtu <= high, text
        host.wait(f"mtu={low}..{high} to {peer.nickname}", verified, timeout=30)
    assert holed + 4 < clean

    c1, c2 = (mesh.add_bare_container(h) for h in (h1, h2))
    run_parallel(lambda: c1.attach(f"ip:{container_ip(1)}/{PREFIXLEN}"),
                 lambda: c2.attach(f"ip:{container_ip(2)}/{PREFIXLEN}"))
    assert_pings(c1, container_ip(2), "-s", "10000", count=3, mesh=mesh)
    assert_pings(c2, container_ip(1), "-s", "10000", count=3, mesh=mesh)
    assert_tcp_transfer(c1, c2, container_ip(2), 20 << 20)
    assert_tcp_transfer(c2, c1, container_ip(1), 4 << 20)
    # still verified, still connected
    assert mtu_to(h1, h2)[0] == holed, h1.status("connections")
