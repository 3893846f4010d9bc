"""``expose``/``hide`` and the router's own nftables table, with real routers, nft and
namespaces: host1 runs a router, c1 is attached to it, ``out`` is a namespace routed
through host1 (10.99.0.0/24 on a veth), standing for the world outside.

1. the table ``inet weave-router`` is there from the start; host1 cannot reach c1;
2. ``expose``: host1 reaches c1 and c1 reaches host1, but not the router's ports (6783
   TCP, 6783-6784 UDP: another UDP port is reached, the router's are not);
   ``ps`` lists ``weave:expose``; c1's traffic to ``out`` arrives masqueraded as host1,
   and ``out`` reaches c1 through host1 (routing to the subnet through an exposing host);
3. ``nft flush ruleset``: the table is back within seconds;
4. ``hide``: host1 cannot reach c1 any more; ``expose --without-masquerade``: ``out``
   sees c1's own address;
5. ``reset``: no table, no bridge, no address left.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from router.dns.config import DEFAULT_ADDRESS as DNS_ADDRESS
from router.testing.namespace import Namespace, wait_until
from router.testing.netns import Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]

TABLE = ["inet", "weave-router"]
SERVER = ("import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
          "socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); "
          "print('up', flush=True); c, a = s.accept(); print(a[0], flush=True)")
SEND_UDP = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind(('', int(sys.argv[3]))); s.sendto(b'x' * 64, (sys.argv[1], int(sys.argv[2])))")
CONNECT = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), "
           "timeout=float(sys.argv[3])); print('connected')")


def table(host: Host) -> dict[str, object] | None:
    proc = host.run(["nft", "-j", "list", "table", *TABLE], check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def pings(src: Namespace, ip: str) -> bool:
    return src.run(["ping", "-c", "1", "-W", "1", ip], check=False).returncode == 0


def connects(src: Namespace, ip: str, port: int, timeout: float = 1.0) -> bool:
    proc = src.run(["python3", "-c", CONNECT, ip, str(port), str(timeout)], check=False)
    return proc.returncode == 0


def udp_accepted(host: Host, src: Namespace, src_ip: str, ip: str, port: int) -> bool:
    """Whether ``host`` took a UDP datagram from ``src`` to ``ip:port``: a datagram the
    input hook drops never has its conntrack entry confirmed, so it is not listed."""
    sport = 40000 + port % 1000
    src.run(["python3", "-c", SEND_UDP, ip, str(port), str(sport)])
    proc = host.run(["conntrack", "-L", "-p", "udp", "--orig-src", src_ip, "--orig-dst", ip,
                     "--dport", str(port), "--sport", str(sport)], check=False)
    return f"dport={port}" in proc.stdout


def peer_seen(server_ns: Namespace, client_ns: Namespace, ip: str, port: int) -> str:
    """Connect from ``client_ns`` to a server in ``server_ns``: the address it saw."""
    server = server_ns.popen(["python3", "-c", SERVER, ip, str(port)])
    assert server.stdout is not None and server.stdout.readline() == "up\n"
    assert connects(client_ns, ip, port, 5.0), f"{client_ns} cannot reach {ip}:{port}"
    seen = server.stdout.readline().strip()
    server.wait(timeout=5)
    return seen


def make_outside(mesh: Mesh, host: Host) -> Namespace:
    """A namespace routed through ``host``: host eth1 10.99.0.1/24 <-> out eth0 10.99.0.2/24."""
    out = mesh.add_bare_container(host)  # a namespace the mesh deletes on teardown
    host.run(["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth0",
              "netns", out.name])
    host.run(["ip", "addr", "add", "10.99.0.1/24", "dev", "eth1"])
    host.run(["ip", "link", "set", "eth1", "up"])
    host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    out.run(["ip", "addr", "add", "10.99.0.2/24", "dev", "eth0"])
    out.run(["ip", "link", "set", "eth0", "up"])
    return out


def exposed_addresses(host: Host) -> list[str]:
    """The bridge's addresses but weaveDNS's own (docs/dns.md)."""
    return [a for a in host.addresses("weave") if a != f"{DNS_ADDRESS}/32"]


def test_expose_hide_masquerade_flush_and_reset(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    h1.launch()
    c1 = mesh.add_bare_container(h1)
    [c1_ip] = c1.attach().stdout.split()
    assert table(h1) is not None, "the router's table is installed at launch"
    assert not pings(h1, c1_ip)
    c2 = mesh.add_bare_container(h1)
    [c2_ip] = c2.attach().stdout.split()
    assert pings(c1, c2_ip.split("/")[0])
    tracked = h1.run(["conntrack", "-L"], check=False)
    assert tracked.stdout == "", f"nothing is exposed, yet the bridge was tracked:\n{tracked}"

    [exposed] = h1.router("expose").stdout.split()
    assert f"{exposed}/12" in h1.addresses("weave")
    assert pings(h1, c1_ip) and pings(c1, exposed)
    assert not connects(c1, exposed, 6783), "a container opened the router's port"
    c1_addr = c1_ip.split("/")[0]
    assert udp_accepted(h1, c1, c1_addr, exposed, 6790), "the conntrack check sees nothing"
    for port in (6783, 6784):
        assert not udp_accepted(h1, c1, c1_addr, exposed, port), f"a container reached UDP {port}"
    assert any(line.startswith("weave:expose ") and f"{exposed}/12" in line
               for line in h1.router("ps").stdout.splitlines())

    out = make_outside(mesh, h1)
    c1.run(["ip", "route", "add", "10.99.0.0/24", "via", exposed])
    assert peer_seen(out, c1, "10.99.0.2", 8000) == "10.99.0.1"  # masqueraded as host1
    out.run(["ip", "route", "add", "10.32.0.0/12", "via", "10.99.0.1"])
    assert peer_seen(c1, out, c1_ip, 8001) == exposed  # routed through host1, masqueraded

    h1.run(["nft", "flush", "ruleset"])
    wait_until("the router to put its table back", lambda: (table(h1) is not None, "gone"),
               timeout=5.0)
    assert peer_seen(out, c1, "10.99.0.2", 8002) == "10.99.0.1"

    assert h1.router("hide").stdout.split() == [exposed]
    assert not pings(h1, c1_ip)
    assert exposed_addresses(h1) == []
    assert not any(line.startswith("weave:expose") for line in h1.router("ps").stdout.splitlines())

    outside = h1.router("expose", "-h", "host1.example.com", check=False)
    assert (outside.returncode, outside.stdout) == (2, ""), outside
    assert "not in the DNS domain weave.local." in outside.stderr
    assert exposed_addresses(h1) == [], "a refused expose changed nothing"
    [again] = h1.router("expose", "--without-masquerade", "-h", "host1.weave.local",
                        "ip:10.32.200.1/12").stdout.split()
    assert again == "10.32.200.1"
    assert h1.router("dns-lookup", "host1").stdout.split() == [again]
    c1.run(["ip", "route", "replace", "10.99.0.0/24", "via", again])
    assert peer_seen(out, c1, "10.99.0.2", 8003) == c1_ip.split("/")[0]  # not masqueraded

    assert h1.router("hide").stdout.split() == [again]
    assert h1.router("dns-lookup", "host1", check=False).stdout == "", "hide kept the name"

    h1.router("reset")
    h1.wait_stopped()
    assert table(h1) is None
    assert "weave" not in h1.links()
    proc = h1.run(["nft", "list", "ruleset"], check=False)
    assert "weave" not in proc.stdout


def test_expose_and_hide_with_wrong_arguments(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    not_running = h1.router("expose", check=False)
    assert (not_running.returncode, not_running.stdout) == (1, "")
    assert not_running.stderr.startswith("weave-router is not running (no answer on ")
    h1.launch()
    for argv, says in [(["expose", "10.32.0.9"], "needs a prefix length"),
                       (["expose", "net:10.32.0.1/12"], "net:10.32.0.1/12"),
                       (["hide", "net:10.32.0.0/12"], "hide takes the exposed addresses"),
                       (["hide", "10.32.0.9/12"], "not exposed")]:
        proc = h1.router(*argv, check=False)
        assert proc.returncode != 0 and proc.stdout == "", (argv, proc)
        assert proc.stderr.count("\n") == 1 and says in proc.stderr, (argv, proc.stderr)
    assert exposed_addresses(h1) == []
