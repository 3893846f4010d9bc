"""weaveDNS with real routers in network namespaces, asked from inside containers.

One mesh for the module: host1..host3 run routers whose ``--resolv-conf`` names host4,
where the test runs dnsmasq (the upstream server); host4's own router runs ``--no-dns``.
Containers are attached with no DNS set-up by the test: their resolver is what attach
wrote (``/etc/netns/NAME/resolv.conf``) and the route to weaveDNS is what attach added.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router.testing.netns import BareContainer, Host, Mesh, wait_until

pytestmark = pytest.mark.integration
DNS = "169.254.255.53"
CHECK = {"WEAVE_CONTAINER_CHECK_INTERVAL": "0.5"}  # seconds between vanished checks
UPSTREAM_NAME, UPSTREAM_ADDR = "upstream.test", "192.0.2.77"


class World:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.h1, self.h2, self.h3, self.h4 = mesh.hosts
        self.resolv = mesh.run_dir / "upstream.conf"
        self.resolv.write_text(f"nameserver {self.h4.ip}\n")
        self.dnsmasq: subprocess.Popen[str] | None = None

    def launch(self, host: Host, *peers: str) -> None:
        host.launch("--resolv-conf", str(self.resolv), *peers, env=CHECK)

    def start_upstream(self) -> None:
        self.dnsmasq = self.h4.popen([
            "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--bind-interfaces", f"--listen-address={self.h4.ip}", "--user=root",
            f"--pid-file={self.mesh.run_dir}/dnsmasq.pid",
            f"--address=/{UPSTREAM_NAME}/{UPSTREAM_ADDR}"])

    def stop_upstream(self) -> None:
        assert self.dnsmasq is not None
        self.dnsmasq.terminate()
        self.dnsmasq.wait(timeout=10)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with Mesh.build(n_hosts=4) as mesh:
        w = World(mesh)
        w.start_upstream()
        w.launch(w.h1)
        w.launch(w.h2, w.h1.ip)
        w.launch(w.h3, w.h1.ip)
        w.h4.launch("--no-dns", env=CHECK)
        mesh.wait_full_mesh(n=3)
        yield w


def dig(c: BareContainer, *args: str) -> subprocess.CompletedProcess[str]:
    return c.run(["dig", "+time=2", "+tries=1", f"@{DNS}", *args], check=False, timeout=15)


def dig_short(c: BareContainer, *args: str) -> list[str]:
    return dig(c, "+short", *args).stdout.split()


def getent(c: BareContainer, name: str) -> list[str]:
    proc = c.run(["getent", "hosts", name], check=False, timeout=15)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def wait_answer(c: BareContainer, name: str, want: list[str], timeout: float = 10.0) -> None:
    def probe() -> tuple[bool, str]:
        got = sorted(getent(c, name))
        return got == sorted(want), f"getent hosts {name} in {c.name}: {got}"
    wait_until(f"{name} to resolve to {want or 'nothing'}", probe, timeout=timeout)


def attach(c: BareContainer, *args: str) -> str:
    [ip] = c.host.router("attach", *args, c.name).stdout.split()
    return ip


def test_names_resolve_across_hosts_from_inside_containers(world: World) -> None:
    c1, c2, c3 = (world.mesh.add_bare_container(h) for h in (world.h1, world.h2, world.h3))
    ip1, ip2 = attach(c1), attach(c2)
    attach(c3)
    # Short name (search domain) and FQDN, through the resolver attach set up.
    wait_answer(c3, c1.name, [ip1])
    assert getent(c3, f"{c1.name}.weave.local") == [ip1]
    assert getent(c1, c2.name) == [ip2]
    assert dig_short(c1, f"{c2.name.upper()}.WEAVE.LOCAL") == [ip2]
    aaaa = dig(c1, f"{c2.name}.weave.local", "AAAA").stdout
    assert "status: NOERROR" in aaaa and "ANSWER: 0" in aaaa, aaaa
    assert "status: NXDOMAIN" in dig(c1, "nope.weave.local").stdout
    assert dig_short(c3, "-x", ip1) == [f"{c1.name}.weave.local."]
    assert dig_short(c3, "+tcp", f"{c1.name}.weave.local") == [ip1]  # TCP too
    status = world.h2.status("dns")
    assert {line.split()[0] for line in status.splitlines()} >= {c1.name, c2.name}
    # -h FQDN and --without-dns.
    c4 = world.mesh.add_bare_container(world.h2)
    ip4 = attach(c4, "-h", "db.weave.local")
    c5 = world.mesh.add_bare_container(world.h2)
    attach(c5, "--without-dns")
    wait_answer(c1, "db", [ip4])
    assert getent(c1, c5.name) == []


def test_round_robin_over_every_address(world: World) -> None:
    c = world.mesh.add_bare_container(world.h3)
    attach(c)
    addrs = [f"10.44.0.{i}" for i in range(1, 7)]
    world.h1.router("dns-add", *addrs, "-h", "rr.weave.local")
    wait_until("rr to have 6 addresses",
               lambda: (len(dig_short(c, "rr.weave.local")) == 6, "rr"), timeout=10)
    orders = {tuple(dig_short(c, "rr.weave.local")) for _ in range(6)}
    assert all(sorted(o) == sorted(addrs) for o in orders)
    assert len(orders) > 1, orders
    world.h1.router("dns-remove", *addrs[:3], "-h", "rr.weave.local")
    wait_until("rr to lose 3 addresses",
               lambda: (sorted(dig_short(c, "rr.weave.local")) == addrs[3:], "rr"), timeout=10)


def test_detach_and_vanished_namespace_remove_names(world: World) -> None:
    c1, c2 = world.mesh.add_bare_container(world.h1), world.mesh.add_bare_container(world.h2)
    ip1, ip2 = attach(c1), attach(c2)
    assert "nameserver 169.254.255.53" in Path(f"/etc/netns/{c1.name}/resolv.conf").read_text()
    watcher = world.mesh.add_bare_container(world.h3)
    attach(watcher)
    wait_answer(watcher, c1.name, [ip1])
    wait_answer(watcher, c2.name, [ip2])
    c1.host.router("detach", c1.name)
    wait_answer(watcher, c1.name, [])
    assert not Path(f"/etc/netns/{c1.name}").exists()  # its resolv.conf went with it
    subprocess.run(["ip", "netns", "del", c2.name], check=True, timeout=10)
    wait_answer(watcher, c2.name, [], timeout=20)


def test_stopped_peers_names_vanish_and_return(world: World) -> None:
    c3, watcher = world.mesh.add_bare_container(world.h3), world.mesh.add_bare_container(world.h1)
    ip3 = attach(c3)
    attach(watcher)
    wait_answer(watcher, c3.name, [ip3])
    world.h3.router("stop")
    world.h3.wait_stopped()
    wait_answer(watcher, c3.name, [], timeout=20)
    world.launch(world.h3, world.h1.ip)  # registers its containers again (from its store)
    wait_answer(watcher, c3.name, [ip3], timeout=30)
    world.h3.wait_routes(2)
    # Its own view holds the entry live: it re-registered it rather than tombstoning the
    # copy the others kept (which it would do for an entry it did not know).
    ours = [line.split() for line in world.h3.status("dns").splitlines()]
    assert [c3.name, ip3] in [line[:2] for line in ours], ours
    wait_answer(watcher, c3.name, [ip3])


def test_upstream_forwarding_and_servfail(world: World) -> None:
    c = world.mesh.add_bare_container(world.h1)
    attach(c)
    assert dig_short(c, UPSTREAM_NAME) == [UPSTREAM_ADDR]
    assert dig_short(c, "+tcp", UPSTREAM_NAME) == [UPSTREAM_ADDR]
    assert getent(c, UPSTREAM_NAME) == [UPSTREAM_ADDR]  # through the container's resolver
    world.stop_upstream()
    try:
        out = dig(c, UPSTREAM_NAME).stdout
        assert "status: SERVFAIL" in out, out
    finally:
        world.start_upstream()


def test_wrong_input_is_one_line_and_changes_nothing(world: World) -> None:
    h1 = world.h1
    before = h1.status("dns")
    loose = world.mesh.add_bare_container(h1)
    for argv, says in (
        (["dns-add", "10.32.9.300", "-h", "x.weave.local"], "is not an IPv4 address"),
        (["dns-add", "10.32.9.1", "-h", "x.example.com"], "not in the DNS domain"),
        (["dns-add", "10.32.9.1", loose.name], "is not attached"),
        (["attach", "-h", "x.example.com", loose.name], "not in the DNS domain"),
    ):
        proc = h1.router(*argv, check=False)
        assert proc.returncode != 0 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
    assert h1.status("dns") == before
    assert "ethwe" not in loose.links()
    assert h1.router("dns-args").stdout == f"--dns={DNS} --dns-search=weave.local.\n"


def test_no_dns(world: World) -> None:
    h4 = world.h4
    assert "Service: dns" not in h4.status()
    assert "DNS" not in h4.router("report").stdout
    c = world.mesh.add_bare_container(h4)
    attach(c)
    assert not Path(f"/etc/netns/{c.name}").exists()  # no resolver set up without DNS
    proc = h4.router("dns-add", "10.32.9.1", "-h", "x.weave.local", check=False)
    assert proc.returncode == 1 and "DNS is not running on this router" in proc.stderr
    assert DNS not in c.run(["ip", "route"]).stdout


def test_a_vanished_namespace_loses_its_name_without_ipam(make_mesh: Callable[..., Mesh]
                                                           ) -> None:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    h1.launch("--ipalloc-range", "", env=CHECK)
    c1 = mesh.add_bare_container(h1)
    h1.router("attach", "ip:10.32.9.9/12", c1.name)
    assert h1.router("dns-lookup", c1.name).stdout.split() == ["10.32.9.9"]
    subprocess.run(["ip", "netns", "del", c1.name], check=True, timeout=10)
    wait_until("the vanished container's name to go", lambda: (
        h1.router("dns-lookup", c1.name, check=False).stdout == "", "still answered"),
        timeout=15)
    assert c1.name not in h1.router("ps").stdout
