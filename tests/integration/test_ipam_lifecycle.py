"""IPAM life cycle end to end: real routers in host namespaces, driven as users drive them.

Each test builds its own small mesh (``make_mesh``, torn down even on failure) and reads
only what the CLI prints, the HTTP API answers and the router log says:

1. two routers that each formed a ring over a different ``--ipalloc-range``: ``connect``
   fails with Weave's ``Incompatible IP allocation ranges (received: ..., ours: ...)`` and
   both routers live on, allocating from their own range;
2. two rings seeded by different peers (same range): the connection fails with
   ``IP allocation was seeded by different peers (...)``; neither router crashes;
3. a changed ``--ipalloc-range`` or ``--name`` discards the persisted IPAM data (the log
   says so, the old ring and allocations are gone, new ones come from the new setup);
4. an observer: alone it cannot initialise (``priming``, its ``attach`` waits); once the
   two voters are up its pending ``attach`` triggers their election and it gets space by a
   space request, never being a seed itself.

Helpers for reading ``status ipam`` and the API come from :mod:`test_ipam_seeds`.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable

import pytest

from router.testing.netns import ConnectionLine, Host, Mesh, parse_status, run_parallel
from tests.integration.test_ipam_seeds import (
    UNIVERSE,
    UNIVERSE_SIZE,
    Share,
    api,
    attach,
    ip_of,
    ipam_status,
    shares,
    wait_ipam_status,
    wait_shares,
    whole_ring,
)

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]  # the make_mesh fixture: make_mesh(n_hosts, mtu=None)

# A connection dropped by an IPAM error is retried with backoff (2 s, 3 s, 4.5 s, ...); the
# side that reads the other's ring first names the error, the other may only see the
# close. Waiting over several attempts makes the named error on each side certain enough.
FAILED_TIMEOUT = 45.0


def wait_failed_with(host: Host, peer: Host, message: str) -> ConnectionLine:
    """Poll ``status connections`` on ``host`` until its connection to ``peer`` is shown
    ``failed`` with ``message``; return that line."""
    address = f"{peer.ip}:6783"

    def matching(lines: list[ConnectionLine]) -> list[ConnectionLine]:
        return [c for c in lines if c.outbound and c.address == address
                and c.state == "failed" and message in c.text]

    lines = host.wait_connections(lambda lines: bool(matching(lines)),
                                  f"connection to {address} failed with {message!r}",
                                  timeout=FAILED_TIMEOUT)
    return matching(lines)[0]


def in_net(address: str, net: str) -> bool:
    return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(net)


def only_us(host: Host, size: int) -> Callable[[dict[str, Share]], bool]:
    """Accept ``status ipam`` showing ``host`` alone, owning all ``size`` addresses."""
    def accept(seen: dict[str, Share]) -> bool:
        return set(seen) == {host.nickname} and seen[host.nickname].ips == size
    return accept


def logged_since_last_start(host: Host, *parts: str) -> bool:
    """Whether one line of ``host``'s router log since its supervisor last started the
    router contains every one of ``parts`` (case aside: Weave capitalises its log lines)."""
    text = host.log_file.read_text(errors="replace")
    lines = text[text.rfind("started router"):].lower().splitlines()
    return any(all(p.lower() in line for p in parts) for line in lines)


# --- 1. mismatched ranges -------------------------------------------------------------------


def test_mismatched_ranges_fail_the_connection_and_both_routers_live_on(
    make_mesh: MakeMesh,
) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    nets = {h1.nickname: "10.2.0.0/16", h2.nickname: "10.3.0.0/16"}
    run_parallel(*(lambda h=h: h.launch("--ipalloc-range", nets[h.nickname])
                   for h in mesh.hosts))
    first = {h.nickname: attach(mesh.add_bare_container(h)) for h in mesh.hosts}
    for host in mesh.hosts:  # each alone formed its own ring over its own range
        [address] = first[host.nickname]
        assert in_net(address, nets[host.nickname]), first
        wait_shares(host, "alone, owning its range", only_us(host, 65536))
    pids = {h.nickname: h.listener_pid() for h in mesh.hosts}

    h1.router("connect", h2.ip)
    h2.router("connect", h1.ip)

    for host, peer in ((h1, h2), (h2, h1)):
        line = wait_failed_with(
            host, peer, "Incompatible IP allocation ranges "
            f"(received: {nets[peer.nickname]}, ours: {nets[host.nickname]})")
        assert "retry: " in line.text, line
    for host in mesh.hosts:  # both live on: same process, status, own range, allocating
        assert host.listener_pid() == pids[host.nickname], host.diagnostics()
        ipam = parse_status(host.status())["ipam"]
        assert (ipam["Status"], ipam["Range"]) == ("ready", nets[host.nickname]), ipam
        assert set(shares(host)) == {host.nickname}, host.status("ipam")
        [address] = attach(mesh.add_bare_container(host))
        assert in_net(address, nets[host.nickname]) and [address] != first[host.nickname]
        assert shares(host)[host.nickname].active == 2, host.status("ipam")


# --- 2. rings seeded by different peers -----------------------------------------------------


def test_rings_seeded_by_different_peers_fail_the_connection(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    names = {h1.nickname: "00:00:00:00:00:01", h2.nickname: "00:00:00:00:00:02"}
    run_parallel(*(lambda h=h: h.launch("--name", f"::{h.index}") for h in mesh.hosts))
    for host in mesh.hosts:  # alone, consensus of one: each seeds its own ring
        [address] = attach(mesh.add_bare_container(host))
        assert ipaddress.IPv4Address(address) in UNIVERSE, address
        wait_shares(host, "alone, owning the range", only_us(host, UNIVERSE_SIZE))
    pids = {h.nickname: h.listener_pid() for h in mesh.hosts}

    h1.router("connect", h2.ip)
    h2.router("connect", h1.ip)

    def seeds(host: Host) -> str:
        return f"[{names[host.nickname]}({host.nickname})]"

    for host, peer in ((h1, h2), (h2, h1)):
        wait_failed_with(host, peer, "IP allocation was seeded by different peers "
                         f"(received: {seeds(peer)}, ours: {seeds(host)})")
    for host in mesh.hosts:  # neither crashed; each keeps its own ring and allocates
        assert host.listener_pid() == pids[host.nickname], host.diagnostics()
        assert ipam_status(host) == "ready"
        seen = shares(host)
        assert set(seen) == {host.nickname}, host.status("ipam")
        assert seen[host.nickname].name == names[host.nickname], seen
        assert len(attach(mesh.add_bare_container(host))) == 1


# --- 3. a changed range or name discards the persisted data ---------------------------------


def test_a_changed_range_discards_the_persisted_data(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    h1.launch("--ipalloc-range", "10.2.0.0/16")
    c1 = mesh.add_bare_container(h1)
    [old] = attach(c1)
    assert in_net(old, "10.2.0.0/16"), old
    h1.router("stop")

    h1.launch("--ipalloc-range", "10.3.0.0/16")
    assert logged_since_last_start(
        h1, "deleting persisted data for IPAM range 10.2.0.0/16; our range is 10.3.0.0/16"
    ), h1.log_tail()
    ipam = parse_status(h1.status())["ipam"]
    assert (ipam["Status"], ipam["Range"], ipam["DefaultSubnet"]) == (
        "idle", "10.3.0.0/16", "10.3.0.0/16"), ipam  # no ring: the old one is gone
    assert shares(h1) == {}, h1.status("ipam")
    assert ip_of(h1, c1)[0] == 404  # the old allocation went with it
    [new] = attach(mesh.add_bare_container(h1))
    assert in_net(new, "10.3.0.0/16"), new
    assert ipam_status(h1) == "ready"
    seen = wait_shares(h1, "the new range only", only_us(h1, 65536))
    assert seen[h1.nickname].active == 1, h1.status("ipam")


def test_a_changed_name_discards_the_persisted_data(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    h1.launch("--name", "::1")
    code, held = api(h1, "POST", "/ip/lifecycle-old")
    assert code == 200 and ipaddress.IPv4Interface(held).ip in UNIVERSE, (code, held)
    assert shares(h1)[h1.nickname].name == "00:00:00:00:00:01", h1.status("ipam")
    h1.router("stop")

    h1.launch("--name", "::2")
    assert logged_since_last_start(h1, "deleting persisted", "00:00:00:00:00:01"), h1.log_tail()
    assert parse_status(h1.status())["router"]["Name"] == "00:00:00:00:00:02(host1)"
    assert ipam_status(h1) == "idle"  # the old ring is not used
    assert shares(h1) == {}, h1.status("ipam")
    assert api(h1, "GET", "/ip/lifecycle-old")[0] == 404
    code, fresh = api(h1, "POST", "/ip/lifecycle-new")
    assert code == 200, (code, fresh)
    seen = wait_shares(h1, "a new ring of ::2 alone", only_us(h1, UNIVERSE_SIZE))
    assert seen[h1.nickname].name == "00:00:00:00:00:02", seen
    assert seen[h1.nickname].active == 1, h1.status("ipam")
    assert api(h1, "GET", "/ip/lifecycle-old")[0] == 404


# --- 4. an observer -------------------------------------------------------------------------


def test_an_observer_triggers_the_election_and_gets_space_by_request(
    make_mesh: MakeMesh,
) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    h3.launch("--ipalloc-init", "observer", h1.ip, h2.ip)  # the voters are not up yet
    assert ipam_status(h3) == "idle"
    c3 = mesh.add_bare_container(h3)
    pending = h3.popen(h3.router_argv("attach", c3.name))
    seen_statuses: set[str] = set()
    try:
        wait_ipam_status(h3, "priming")  # an observer never shows "awaiting consensus"
        with pytest.raises(subprocess.TimeoutExpired):
            pending.wait(timeout=3.0)  # alone, it cannot initialise: attach waits
        assert ipam_status(h3) == "priming" and shares(h3) == {}, h3.status()

        h1.launch("--ipalloc-init", "consensus=2")
        h2.launch("--ipalloc-init", "consensus=2", h1.ip)  # neither allocates anything

        def attached() -> tuple[bool, str]:
            seen_statuses.add(ipam_status(h3))
            return pending.poll() is not None, f"attach still waiting; saw {seen_statuses}"

        h3.wait("the observer's pending attach to finish", attached, timeout=40.0)
        out, err = pending.communicate(timeout=10)
    finally:
        if pending.poll() is None:
            pending.kill()
            pending.wait()
    assert pending.returncode == 0, err
    [address] = out.split()
    assert ipaddress.IPv4Address(address) in UNIVERSE, out
    assert not any(s.startswith("awaiting consensus") for s in seen_statuses), seen_statuses
    mesh.wait_full_mesh()

    names = {"host1", "host2", "host3"}
    for host in mesh.hosts:
        wait_ipam_status(host, "ready")
        wait_shares(host, "three peers own the range", whole_ring(names))
    seen = shares(h3)
    own = seen["host3"]
    assert own.ips > 0 and own.ips & (own.ips - 1) == 0, own  # a CIDR-aligned donation
    # A seed of three would own a third of the range; a donation is at most half of one
    # voter's half.
    assert own.ips <= UNIVERSE_SIZE // 4, seen
    assert shares(h3)["host3"].active == 1, h3.status("ipam")
    assert ip_of(h3, c3) == (200, f"{address}/12")
