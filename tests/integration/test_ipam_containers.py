"""Addresses of containers that vanish come back to IPAM: real routers in host namespaces.

1. a container's namespace deleted while the router is stopped: the relaunched router
   releases its address before it answers (``GET /ip/<id>`` 404, the next attach gets it);
2. deleted while the router runs: released by the periodic check (shortened here with
   ``WEAVE_CONTAINER_CHECK_INTERVAL``) without anyone running ``ps``;
3. never the address of a namespace that still exists (even with its veth gone and
   ``ps`` forgetting it), nor of an ident the HTTP API's users own.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable

import pytest

from router.containers.service import ipam_ident
from router.kernel.plumbing import host_veth_name
from router.kernel.port import netns_inode
from router.testing.netns import BareContainer, Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]

API = "http://127.0.0.1:6784"
CHECK = {"WEAVE_CONTAINER_CHECK_INTERVAL": "0.5"}  # seconds between checks


def api(host: Host, method: str, path: str) -> tuple[int, str]:
    """One request to the router's HTTP API from inside ``host``: (status code, body)."""
    out = host.run(["curl", "-s", "-X", method, "-w", "\n%{http_code}", f"{API}{path}"],
                   timeout=15.0).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body.strip()


def ident(container: BareContainer) -> str:
    return ipam_ident(f"/run/netns/{container.name}")


def attach(container: BareContainer, *addrs: str) -> str:
    [addr] = container.attach(*addrs).stdout.split()
    return addr


def delete_namespace(container: BareContainer) -> None:
    """``ip netns del``, then wait for the kernel to finish (it destroys the namespace and
    its veth in the background; until then the router rightly keeps the address)."""
    veth = host_veth_name(netns_inode(f"/run/netns/{container.name}"))
    subprocess.run(["ip", "netns", "del", container.name], check=True, timeout=10)

    def probe() -> tuple[bool, str]:
        links = container.host.links()
        return veth not in links, f"links of {container.host.name}: {links}"

    container.host.wait(f"{veth} to go with its namespace", probe, timeout=15.0)


def wait_released(host: Host, who: str, timeout: float = 15.0) -> None:
    def probe() -> tuple[bool, str]:
        code, body = api(host, "GET", f"/ip/{who}")
        return code == 404, f"GET /ip/{who}: {code} {body}"

    host.wait(f"the address of {who} to be released", probe, timeout)


def test_a_container_deleted_while_the_router_is_stopped_is_released_at_start(
    make_mesh: MakeMesh,
) -> None:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    h1.launch()
    gone, kept = mesh.add_bare_container(h1), mesh.add_bare_container(h1)
    gone_ident, kept_ident = ident(gone), ident(kept)
    first, second = attach(gone), attach(kept)
    assert api(h1, "POST", "/ip/web-1")[0] == 200  # an HTTP API user's address
    web = api(h1, "GET", "/ip/web-1")
    h1.router("stop")
    h1.wait_stopped()

    delete_namespace(gone)
    h1.launch()

    assert api(h1, "GET", f"/ip/{gone_ident}")[0] == 404  # released before the API answered
    assert api(h1, "GET", f"/ip/{kept_ident}") == (200, f"{second}/12")
    assert api(h1, "GET", "/ip/web-1") == web
    assert gone.name not in h1.router("ps").stdout
    assert kept.name in h1.router("ps").stdout
    again = mesh.add_bare_container(h1)
    assert attach(again) == first  # the lowest free address: the one given back
    assert "released" in h1.log_tail(200)


def test_a_container_deleted_while_the_router_runs_is_released_within_the_period(
    make_mesh: MakeMesh,
) -> None:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    h1.launch(env=CHECK)
    gone, kept = mesh.add_bare_container(h1), mesh.add_bare_container(h1)
    gone_ident = ident(gone)
    addr = attach(gone, "net:10.32.4.0/24")
    attach(kept)
    assert ipaddress.IPv4Address(addr) in ipaddress.IPv4Network("10.32.4.0/24")

    delete_namespace(gone)
    wait_released(h1, gone_ident)  # nobody ran ps

    assert api(h1, "GET", f"/ip/{ident(kept)}")[0] == 200
    again = mesh.add_bare_container(h1)
    assert attach(again, "net:10.32.4.0/24") == addr


def test_a_namespace_that_still_exists_keeps_its_address(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    h1.launch(env=CHECK)
    alive, marker = mesh.add_bare_container(h1), mesh.add_bare_container(h1)
    alive_ident, marker_ident = ident(alive), ident(marker)
    held = attach(alive)
    attach(marker)
    # the veth is gone (so `ps` forgets the container), the namespace is not
    alive.run(["ip", "link", "del", "ethwe"])
    assert alive.name not in h1.router("ps").stdout
    # a later check has certainly run once a namespace deleted now is released
    delete_namespace(marker)
    wait_released(h1, marker_ident)
    h1.router("ps")
    assert api(h1, "GET", f"/ip/{alive_ident}") == (200, f"{held}/12")
