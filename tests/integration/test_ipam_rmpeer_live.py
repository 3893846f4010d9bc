"""``rmpeer`` of a peer that is alive (issue 10 item 1): real routers in host namespaces.

Refused with a one-line reason, nothing changes; with ``--force`` the live peer keeps its
range (it re-asserts it, the taker gives it back), the connections stay up and no address
is given out twice.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.test_ipam_seeds import (
    MakeMesh,
    api,
    attach,
    ips,
    shares,
    wait_shares,
    whole_ring,
)

pytestmark = pytest.mark.integration


def test_rmpeer_of_a_live_peer_is_refused_and_forced_the_live_peer_wins(
    make_mesh: MakeMesh,
) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    mesh.launch_star()
    mesh.wait_full_mesh()
    held: dict[str, str] = {}
    for host in (h1, h2, h3):
        (addr,) = attach(mesh.add_bare_container(host))
        held[addr] = host.nickname
    all3 = whole_ring({"host1", "host2", "host3"})
    before = ips(wait_shares(h1, "3 peers", all3))

    refused = h1.router("rmpeer", "host2", check=False)
    assert refused.returncode != 0 and refused.stdout == "", refused
    reason = refused.stderr.strip()
    assert "\n" not in reason and re.search(
        r"rmpeer: peer \S+\(host2\) is reachable now: .*--force", reason), reason
    code, body = api(h1, "DELETE", "/peer/host2")
    assert code == 400 and "is reachable now" in body, (code, body)
    for host in (h1, h2, h3):
        assert ips(shares(host)) == before, host.status("ipam")

    forced = h1.router("rmpeer", "--force", "host2")
    assert re.fullmatch(r"\d+ IPs taken over from host2\n", forced.stdout), forced
    # however the news travels, host2 keeps (or gets back) its range everywhere
    for host in (h1, h2, h3):
        seen = wait_shares(host, "host2 keeps its range",
                           lambda s: all3(s) and ips(s) == before)
        assert ips(seen) == before
    mesh.wait_full_mesh()
    for _ in range(4):  # every host allocates; all addresses stay distinct
        for host in (h1, h2, h3):
            (addr,) = attach(mesh.add_bare_container(host))
            assert addr not in held, f"{addr} given to {held.get(addr)} and {host.nickname}"
            held[addr] = host.nickname
    for host in (h1, h2, h3):
        assert "Received update for IP range I own" not in host.log_tail(400)
        assert ips(shares(host)) == before
