"""The seeds' IPAM scenarios, as users run them: real routers in host namespaces.

Each test builds its own small mesh (``make_mesh``, torn down even on failure) and reads
only what the CLI prints or what the HTTP API (``127.0.0.1:6784`` inside the host) answers:

1. three ways to start: ``launch $H2 $H3``, ``--ipalloc-init consensus=3``, and
   ``seed=::1,::2,::3`` with ``--name`` (that one allocating while partitioned from the start);
2. ``prime`` blocks until the ring is known;
3. ``rmpeer`` after ``kill -9``: ``- unreachable!``, ``N IPs taken over from NAME``, reuse;
4. ``reset`` hands the space over;
5. a restart keeps the ring and the addresses;
6. subnets, isolation, claims, several addresses, ``detach`` frees;
7. ``kill -9`` during a burst of allocations loses or duplicates nothing.

A partition is the underlay port of a host taken down on the LAN bridge
(``ip -n <lan> link set hN down``): the hosts stay up, they just cannot reach each other.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from router.containers.service import ipam_ident
from router.testing.netns import BareContainer, Host, Mesh, parse_status, run_parallel

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]  # the make_mesh fixture: make_mesh(n_hosts, mtu=None)

UNIVERSE = ipaddress.IPv4Network("10.32.0.0/12")
UNIVERSE_SIZE = UNIVERSE.num_addresses
API = "http://127.0.0.1:6784"
SHARE_RE = re.compile(
    r"^(?P<name>\S+?)\((?P<nick>[^)]*)\)\s+(?P<ips>\d+) IPs \((?P<pct>[\d.]+)% of total\)"
    r"(?: \((?P<active>\d+) active\))?(?P<unreachable> - unreachable!)?$"
)


# --- reading what the CLI prints ----------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """One line of ``status ipam``."""

    name: str
    nick: str
    ips: int
    active: int | None
    unreachable: bool


def shares(host: Host) -> dict[str, Share]:
    """``status ipam`` of ``host`` by nickname (the peer name when it has none)."""
    found: dict[str, Share] = {}
    for line in host.status("ipam").splitlines():
        m = SHARE_RE.match(line.strip())
        if m is None:
            continue
        active = m["active"]
        share = Share(m["name"], m["nick"], int(m["ips"]),
                      None if active is None else int(active), bool(m["unreachable"]))
        found[share.nick or share.name] = share
    return found


def ips(seen: dict[str, Share]) -> dict[str, int]:
    """How many addresses each peer owns, from :func:`shares` (``active`` left out: each
    host knows it only for itself)."""
    return {peer: share.ips for peer, share in seen.items()}


def ipam_status(host: Host) -> str:
    """The ``Status:`` line of the ``Service: ipam`` section of ``status``."""
    return parse_status(host.status()).get("ipam", {}).get("Status", "(no ipam section)")


def wait_shares(host: Host, what: str, accept: Callable[[dict[str, Share]], bool],
                timeout: float = 20.0) -> dict[str, Share]:
    """Poll ``status ipam`` on ``host`` until ``accept(shares)``; return them."""
    def probe() -> tuple[bool, str]:
        seen = shares(host)
        return accept(seen), host.status("ipam")

    host.wait(f"status ipam: {what}", probe, timeout)
    return shares(host)


def whole_ring(peers: set[str]) -> Callable[[dict[str, Share]], bool]:
    """Accept ``status ipam`` showing exactly ``peers``, all reachable, owning everything."""
    def accept(seen: dict[str, Share]) -> bool:
        return (set(seen) == peers and not any(s.unreachable for s in seen.values())
                and sum(s.ips for s in seen.values()) == UNIVERSE_SIZE)
    return accept


def wait_ipam_status(host: Host, expected: str, timeout: float = 20.0) -> None:
    def probe() -> tuple[bool, str]:
        seen = ipam_status(host)
        return seen == expected, seen

    host.wait(f"IPAM status {expected!r}", probe, timeout)


def attach(container: BareContainer, *addrs: str) -> list[str]:
    """``weave-router attach ADDRS C`` on the container's host: the addresses it prints."""
    return container.attach(*addrs).stdout.split()


def api(host: Host, method: str, path: str) -> tuple[int, str]:
    """One request to the router's HTTP API from inside ``host``: (status code, body)."""
    out = host.run(["curl", "-s", "-X", method, "-w", "\n%{http_code}", f"{API}{path}"],
                   timeout=15.0).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body.strip()


def ip_of(host: Host, container: BareContainer) -> tuple[int, str]:
    """``GET /ip/<id>`` of ``container``: what IPAM on ``host`` records for it."""
    return api(host, "GET", f"/ip/{ipam_ident(f'/run/netns/{container.name}')}")


def partition(mesh: Mesh, *hosts: Host, up: bool = False) -> None:
    """Take the hosts' ports on the underlay LAN down (or ``up`` again)."""
    for host in hosts:
        subprocess.run(["ip", "-n", mesh.lan, "link", "set", f"h{host.index}",
                        "up" if up else "down"], check=True, timeout=10)


def kill_router(host: Host) -> int:
    """``kill -9`` the router process of ``host`` (not its supervisor); return its PID."""
    pid = host.listener_pid()
    assert pid is not None, f"no router listens in {host.name}:\n{host.diagnostics()}"
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_restarted(host: Host, killed: int, timeout: float = 30.0) -> None:
    """Wait until the supervisor has started a new router that answers ``status``."""
    def probe() -> tuple[bool, str]:
        pid = host.listener_pid()
        up = host.router("status", check=False, timeout=10)
        ok = pid is not None and pid != killed and up.returncode == 0
        return ok, f"listener pid {pid} (killed {killed}); status: {up.stdout}{up.stderr}"

    host.wait("the router to be restarted after kill -9", probe, timeout)


# --- 1. three ways to start ---------------------------------------------------------------


def launch_mode(mesh: Mesh, mode: str) -> None:
    """Launch the three hosts as the seed shows for ``mode``."""
    h1, h2, h3 = mesh.hosts
    ips = [h.ip for h in mesh.hosts]
    others = {h.index: [ip for ip in ips if ip != h.ip] for h in mesh.hosts}
    if mode == "peers":  # host1$ weave launch $HOST2 $HOST3 ...
        run_parallel(*(lambda h=h: h.launch(*others[h.index]) for h in mesh.hosts))
    elif mode == "consensus=3":
        h1.launch("--ipalloc-init", "consensus=3")
        run_parallel(lambda: h2.launch("--ipalloc-init", "consensus=3", h1.ip),
                     lambda: h3.launch("--ipalloc-init", "consensus=3", h1.ip))
    else:  # seed: partitioned from the start, every peer given the others all the same
        partition(mesh, *mesh.hosts)
        run_parallel(*(lambda h=h: h.launch("--name", f"::{h.index}", "--ipalloc-init",
                                            "seed=::1,::2,::3", *others[h.index])
                       for h in mesh.hosts))


@pytest.mark.parametrize("mode", ["peers", "consensus=3", "seed"])
def test_three_init_modes_allocate_on_every_host(make_mesh: MakeMesh, mode: str) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    launch_mode(mesh, mode)
    if mode == "seed":
        assert all(ipam_status(h) == "ready" for h in mesh.hosts)  # no consensus needed
    else:
        mesh.wait_full_mesh()
        statuses = [ipam_status(h) for h in mesh.hosts]
        assert statuses == ["idle"] * 3, f"consensus before any allocation: {statuses}"
        assert all(shares(h) == {} for h in mesh.hosts), "a ring before any allocation"
    c1, c2, c3 = (mesh.add_bare_container(h) for h in (h2, h1, h3))  # first attach on host2
    first = attach(c1)
    rest = run_parallel(lambda: attach(c2), lambda: attach(c3))
    addresses = [ipaddress.IPv4Address(a) for [a] in [first, *rest]]
    assert len(set(addresses)) == 3 and all(a in UNIVERSE for a in addresses), addresses
    if mode == "seed":
        for host in mesh.hosts:
            own = shares(host)[host.nickname]
            assert own.active == 1 and not own.unreachable, host.status("ipam")
            assert sum(s.unreachable for s in shares(host).values()) == 2, host.status("ipam")
        partition(mesh, *mesh.hosts, up=True)
        mesh.wait_full_mesh()
    names = {h.nickname for h in mesh.hosts}
    for host in mesh.hosts:
        wait_ipam_status(host, "ready")
        seen = wait_shares(host, "3 peers, all reachable, owning the range", whole_ring(names))
        assert seen[host.nickname].active == 1, host.status("ipam")
    ping = c2.run(["ping", "-c", "1", "-W", "5", str(addresses[2])], check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr


# --- 2. prime ---------------------------------------------------------------------------


def test_prime_blocks_until_the_ring_is_known(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    h1.launch("--ipalloc-init", "consensus=2")
    assert ipam_status(h1) == "idle"
    prime = h1.popen(h1.router_argv("prime"))
    try:
        wait_ipam_status(h1, "awaiting consensus (quorum: 2, known: 1)")
        with pytest.raises(subprocess.TimeoutExpired):
            prime.wait(timeout=3.0)  # a lone peer of two: no quorum, prime keeps waiting
        h2.launch("--ipalloc-init", "consensus=2", h1.ip)
        assert prime.wait(timeout=20.0) == 0, prime.communicate()
    finally:
        if prime.poll() is None:
            prime.kill()
            prime.wait()
    assert h2.router("prime", timeout=10.0).returncode == 0  # the ring is known there too
    for host in mesh.hosts:
        assert ipam_status(host) == "ready"
        wait_shares(host, "both peers own the range", whole_ring({"host1", "host2"}))


# --- 3. rmpeer after kill -9 ----------------------------------------------------------------


def test_rmpeer_takes_over_the_space_of_a_peer_killed_9(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    h1.launch()
    run_parallel(lambda: h2.launch(h1.ip), lambda: h3.launch("--no-restart", h1.ip))
    mesh.wait_full_mesh()
    c1, c3, c4 = (mesh.add_bare_container(h) for h in (h1, h3, h1))
    attach(c1)
    [dead_addr] = attach(c3)
    lost = wait_shares(h1, "3 peers", whole_ring({"host1", "host2", "host3"}))
    before, taken = lost["host1"].ips, lost["host3"].ips

    kill_router(h3)
    h3.wait_stopped()  # --no-restart: the supervisor leaves with it
    wait_shares(h1, "host3 unreachable", lambda s: "host3" in s and s["host3"].unreachable)
    inside = f"{ipaddress.IPv4Address(dead_addr) + 1}/12"  # in host3's space, never given
    refused = c4.attach(f"ip:{inside}", check=False)
    assert refused.returncode != 0 and "host3" in refused.stderr, refused

    out = h1.router("rmpeer", "host3").stdout
    assert out == f"{taken} IPs taken over from host3\n", out
    seen = wait_shares(h1, "host3's space is ours", whole_ring({"host1", "host2"}))
    assert seen["host1"].ips == before + taken, h1.status("ipam")
    wait_shares(h2, "host3 gone, no unreachable", whole_ring({"host1", "host2"}))
    assert attach(c4, f"ip:{inside}") == [inside.split("/")[0]]
    assert ipam_status(h1) == "ready"


# --- 4. reset hands the space over ----------------------------------------------------------


def test_reset_hands_the_space_to_another_peer(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    mesh.launch_star()
    mesh.wait_full_mesh()
    c1, c3 = mesh.add_bare_container(h1), mesh.add_bare_container(h3)
    attach(c1)
    attach(c3)
    all3 = whole_ring({"host1", "host2", "host3"})
    old = wait_shares(h1, "3 peers", all3)
    assert ips(wait_shares(h2, "3 peers", all3)) == ips(old)

    h3.router("reset")

    assert h3.router("status", check=False).returncode != 0
    survivors = whole_ring({"host1", "host2"})
    after = {h.nickname: wait_shares(h, "host3's space handed over", survivors)
             for h in (h1, h2)}
    for view in after.values():
        gained = {n: view[n].ips - old[n].ips for n in ("host1", "host2")}
        assert sorted(gained.values()) == [0, old["host3"].ips], (gained, view)
    assert ips(after["host1"]) == ips(after["host2"])
    c2 = mesh.add_bare_container(h2)
    assert len(attach(c2)) == 1


# --- 5. a restart keeps the ring and the addresses ------------------------------------------


def test_restart_keeps_ring_and_addresses(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    mesh.launch_star("--ipalloc-init", "consensus=2")
    mesh.wait_full_mesh()
    c1, c2, c3 = (mesh.add_bare_container(h) for h in (h1, h1, h2))
    held = {c.name: attach(c)[0] for c in (c1, c2, c3)}
    ps_before = h1.router("ps").stdout
    run_parallel(lambda: h1.router("stop"), lambda: h2.router("stop"))

    # host1 alone: with a fresh ring it would wait for a quorum of 2 forever.
    h1.launch("--ipalloc-init", "consensus=2", "--resume")
    assert ipam_status(h1) == "ready"
    assert h1.router("ps").stdout == ps_before
    assert ip_of(h1, c1) == (200, f"{held[c1.name]}/12")
    assert shares(h1)["host1"].active == 2, h1.status("ipam")
    c4 = mesh.add_bare_container(h1)
    [new] = attach(c4)
    assert new not in held.values(), (new, held)

    h2.launch("--ipalloc-init", "consensus=2", "--resume")
    mesh.wait_full_mesh()
    assert f"{held[c3.name]}/12" in h2.router("ps").stdout
    c5 = mesh.add_bare_container(h2)
    [other] = attach(c5)
    assert len({*held.values(), new, other}) == 5, (held, new, other)
    for host in mesh.hosts:
        wait_shares(host, "the same two peers", whole_ring({"host1", "host2"}))


# --- 6. subnets, isolation, claims ----------------------------------------------------------


def test_subnets_are_isolated_claims_and_detach_frees(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    mesh.launch_star("--ipalloc-range", "10.2.0.0/16", "--ipalloc-default-subnet",
                     "10.2.1.0/24")
    mesh.wait_full_mesh()
    ipam = parse_status(h1.status())["ipam"]
    assert (ipam["Range"], ipam["DefaultSubnet"]) == ("10.2.0.0/16", "10.2.1.0/24"), ipam
    c1, c2, c3, c4, c5 = (mesh.add_bare_container(h) for h in (h1, h2, h1, h2, h1))
    [a1] = attach(c1)
    [a2] = attach(c2, "net:10.2.2.0/24")
    [a4] = attach(c4)
    assert ipaddress.IPv4Address(a1) in ipaddress.IPv4Network("10.2.1.0/24"), a1
    assert ipaddress.IPv4Address(a4) in ipaddress.IPv4Network("10.2.1.0/24"), a4
    assert ipaddress.IPv4Address(a2) in ipaddress.IPv4Network("10.2.2.0/24"), a2
    same = c1.run(["ping", "-c", "1", "-W", "5", a4], check=False)
    assert same.returncode == 0, same.stdout + same.stderr  # same subnet, across hosts
    route = c1.run(["ip", "route", "get", a2], check=False)
    assert route.returncode != 0 and "unreachable" in route.stderr, route  # no route
    assert c1.run(["ping", "-c", "1", "-W", "1", a2], check=False).returncode != 0

    assert attach(c3, "ip:10.2.3.7/24") == ["10.2.3.7"]  # claimed
    taken = c5.attach("ip:10.2.3.7/24", check=False)
    assert taken.returncode != 0 and len(taken.stderr.splitlines()) == 1, taken
    first, second = attach(c1, "net:10.2.2.0/24")  # a second address, in another subnet
    assert first == a1 and second != a2, (first, second, a2)
    assert ipaddress.IPv4Address(second) in ipaddress.IPv4Network("10.2.2.0/24"), second
    ps = h1.router("ps", c1.name).stdout.split()
    assert ps[2:] == [f"{a1}/24", f"{second}/24"], ps
    assert ip_of(h1, c1) == (200, f"{a1}/24 {second}/24")
    both = c1.run(["ping", "-c", "1", "-W", "5", a2], check=False)
    assert both.returncode == 0, both.stdout + both.stderr  # now it has a 10.2.2.0/24 leg

    active = shares(h1)["host1"].active
    c1.detach()
    assert h1.router("ps", c1.name).stdout == ""
    assert ip_of(h1, c1)[0] == 404
    assert shares(h1)["host1"].active == (active or 0) - 2, h1.status("ipam")
    c3.detach("ip:10.2.3.7/24")
    assert attach(c5, "ip:10.2.3.7/24") == ["10.2.3.7"]  # freed, so it can be claimed again


# --- 7. kill -9 during a burst of allocations -----------------------------------------------

BURST = r"""
import http.client, json, os, sys, time
stop, progress, prefix = sys.argv[1:4]
answered, freed, failures = {}, [], 0
deadline = time.monotonic() + 60

def call(method, path, ok):
    global failures
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", 6784, timeout=15)
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read().decode().strip()
            conn.close()
        except (OSError, http.client.HTTPException):
            failures += 1
            time.sleep(0.02)  # the router is down: poll until its supervisor restarts it
            continue
        if response.status in ok:
            return body
        if response.status != 503:  # 503: still starting
            sys.exit(f"{method} {path}: {response.status} {body}")
        time.sleep(0.02)
    sys.exit(f"{method} {path}: no answer before the deadline")

i = 0
with open(progress, "a") as out:
    while not os.path.exists(stop):
        cid = f"{prefix}{i}"
        answered[cid] = call("POST", f"/ip/{cid}", (200,))
        if i % 4 == 3:
            call("DELETE", f"/ip/{cid}", (200, 404))  # 404: a lost answer, freed already
            freed.append(cid)
        out.write(cid + "\n")
        out.flush()
        i += 1
print(json.dumps({"answered": answered, "freed": freed, "failures": failures}))
"""


def test_kill_9_during_a_burst_of_allocations_loses_and_duplicates_nothing(
    make_mesh: MakeMesh,
) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    mesh.launch_star()
    mesh.wait_full_mesh()
    stop, progress = h1.dir / "burst.stop", h1.dir / "burst.progress"
    progress.touch()
    burst = h1.popen([sys.executable, "-c", BURST, str(stop), str(progress), "burst-"])

    def answers() -> int:
        return len(progress.read_text().splitlines())

    def advance(by: int) -> None:
        want = answers() + by

        def probe() -> tuple[bool, str]:
            if burst.poll() is not None:
                return True, "burst exited"
            return answers() >= want, f"{answers()} answers"

        h1.wait(f"{want} answered allocations", probe, timeout=30)
        assert burst.poll() is None, burst.communicate()

    advance(30)
    for _ in range(2):  # kill -9 twice, each time with allocations in flight
        wait_restarted(h1, kill_router(h1))
        advance(30)
    stop.touch()
    out, err = burst.communicate(timeout=60)
    assert burst.returncode == 0, err
    result = json.loads(out)
    assert result["failures"] >= 2, result["failures"]  # the kills really cut requests

    freed = set(result["freed"])
    held = {cid: cidr for cid, cidr in result["answered"].items() if cid not in freed}
    assert len(set(held.values())) == len(held), "an address answered twice"
    for cid, cidr in result["answered"].items():
        now = api(h1, "GET", f"/ip/{cid}")
        expected = (404 if cid in freed else 200, "" if cid in freed else cidr)
        assert (now[0], now[1] if now[0] == 200 else "") == expected, (cid, cidr, now)
    assert shares(h1)["host1"].active == len(held), (len(held), h1.status("ipam"))
    wait_shares(h2, "host1 back, nothing lost", whole_ring({"host1", "host2"}))
    c = mesh.add_bare_container(h2)
    [other] = attach(c)
    assert f"{other}/12" not in held.values(), other
