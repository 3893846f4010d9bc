"""The sleeve data plane as a user lives it: containers on hosts in namespaces talk.

Every scenario runs on its own mesh (``router/testing/netns.py``): hosts on an underlay LAN,
``weave-router launch`` on each, bare container namespaces put on the network with
``weave-router attach ip:172.31.1.N/16 CONTAINER`` (container N on host N). The meshes of the
tests selected in this file are built in parallel, in the background, as soon as the first
of them is needed; each test then waits for its own. Every mesh is torn down at the end of
the module, also when a test or a build fails; a failing test gets its routers' logs.

Traffic is what users run: ``ping`` (with a recognisable ``-p`` pattern), a TCP transfer
whose SHA-256 is compared end to end, Python multicast/broadcast senders and receivers, and
``tcpdump`` on the underlay (host ``eth0``) and in containers (``ethwe``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import re
import select
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from router.crypto.ciphers import AES256GCM, SECRETBOX, hardware_aes
from router.testing.netns import (
    BareContainer,
    ConnectionLine,
    Host,
    Mesh,
    Namespace,
    parse_peers,
    run_parallel,
    wait_until,
)

pytestmark = pytest.mark.integration

# Containers are 172.31.1.N/16: outside IPAM's range (10.32.0.0/12), so these data-plane
# scenarios claim nothing from IPAM and do not depend on its view of reachable peers.
PREFIXLEN = 16
BROADCAST = "172.31.255.255"  # of 172.31.0.0/16
GROUP, GROUP_PORT = "239.1.2.3", 5007
TCP_PORT = 5201
PASSWORD = "sleeve-s3cret"
# what ping -p fills its payload with: "weave-plain-text", recognisable in a capture
PATTERN = b"weave-plain-text"
TRANSFER_BYTES = 20 << 20
BUILD_TIMEOUT = 60.0  # seconds a test waits for its mesh to be built
SLEEVE = ("--no-fastdp",)  # these scenarios test the sleeve (fastdp: test_fastdp_router.py)


def container_ip(n: int) -> str:
    return f"172.31.1.{n}"


# Outside IPAM's range (10.32.0.0/12), so attach claims nothing: on a split mesh (a wrong
# password) an address inside the range would wait for an IPAM consensus that never comes.
OUTSIDE_RANGE_PREFIXLEN = 24


def outside_ip(n: int) -> str:
    return f"172.30.1.{n}"


# --- scenarios: one mesh each, built in the background ------------------------------------


def _attach_one_per_host(mesh: Mesh, *, in_range: bool = True) -> None:
    """Container N on host N, attached at 172.31.1.N/16 (or, not ``in_range``, 172.30.1.N/24);
    the attaches run in parallel."""
    containers = [mesh.add_bare_container(host) for host in mesh.hosts]
    run_parallel(*(functools.partial(c.attach, f"ip:{container_ip(n)}/{PREFIXLEN}" if in_range
                                     else f"ip:{outside_ip(n)}/{OUTSIDE_RANGE_PREFIXLEN}")
                   for n, c in enumerate(containers, 1)))


def _full_mesh(*launch_args: str) -> Callable[[Mesh], None]:
    def setup(mesh: Mesh) -> None:
        mesh.launch_star(*SLEEVE, *launch_args)
        mesh.wait_full_mesh(timeout=30)
        mesh.wait_routes(timeout=30)
        _attach_one_per_host(mesh)
    return setup


def _wrong_password(mesh: Mesh) -> None:
    h1, h2 = mesh.hosts
    h1.launch("--password", PASSWORD)
    h2.launch("--password", "not-" + PASSWORD, h1.ip)
    _attach_one_per_host(mesh, in_range=False)


def _chain(mesh: Mesh) -> None:
    """host1 <- host2 <- host3, without discovery: host3 only knows host2."""
    h1, h2, h3 = mesh.hosts
    h1.launch(*SLEEVE, "--no-discovery")
    run_parallel(lambda: h2.launch(*SLEEVE, "--no-discovery", h1.ip),
                 lambda: h3.launch(*SLEEVE, "--no-discovery", h2.ip))
    run_parallel(lambda: h1.wait_established(1, timeout=30),
                 lambda: h2.wait_established(2, timeout=30),
                 lambda: h3.wait_established(1, timeout=30))
    mesh.wait_routes(timeout=30)  # host1 and host3 route to each other via host2
    _attach_one_per_host(mesh)


def _lone_router(mesh: Mesh) -> None:
    mesh.hosts[0].launch()


# fixture name -> (hosts, underlay MTU, setup)
SCENARIOS: dict[str, tuple[int, int | None, Callable[[Mesh], None]]] = {
    "plain_pair": (2, None, _full_mesh()),
    "encrypted_pair": (2, None, _full_mesh("--password", PASSWORD)),
    "wrong_password_pair": (2, None, _wrong_password),
    "multicast_trio": (3, None, _full_mesh()),
    "relay_chain": (3, None, _chain),
    "small_mtu_pair": (2, 1280, _full_mesh()),
    "lone_router": (1, None, _lone_router),
}


def _build(name: str) -> Mesh:
    n_hosts, mtu, setup = SCENARIOS[name]
    mesh = Mesh.build(n_hosts=n_hosts, mtu=mtu)
    try:
        setup(mesh)
    except BaseException:
        mesh.close()
        raise
    return mesh


class Scenarios:
    """The meshes of this module, built in parallel on first use and closed at the end."""

    def __init__(self, names: set[str]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(names)))
        self._futures: dict[str, Future[Mesh]] = {
            name: self._pool.submit(_build, name) for name in sorted(names)
        }

    def get(self, name: str) -> Mesh:
        return self._futures[name].result(timeout=BUILD_TIMEOUT)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        meshes = [f.result() for f in self._futures.values() if f.exception() is None]
        errors = [e for e in run_parallel(*(functools.partial(_close, m) for m in meshes)) if e]
        if errors:
            raise errors[0]


def _close(mesh: Mesh) -> Exception | None:
    try:
        mesh.close()
    except Exception as exc:  # close every mesh, then report
        return exc
    return None


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest) -> Iterator[Scenarios]:
    selected = {name for item in request.session.items
                if getattr(item, "module", None) is request.module
                for name in getattr(item, "fixturenames", ()) if name in SCENARIOS}
    built = Scenarios(selected)
    try:
        yield built
    finally:
        built.close()


def _scenario(name: str) -> Callable[[Scenarios], Mesh]:
    def fixture(scenarios: Scenarios) -> Mesh:
        return scenarios.get(name)
    fixture.__name__ = name
    return pytest.fixture(name=name)(fixture)


plain_pair = _scenario("plain_pair")
encrypted_pair = _scenario("encrypted_pair")
wrong_password_pair = _scenario("wrong_password_pair")
multicast_trio = _scenario("multicast_trio")
relay_chain = _scenario("relay_chain")
small_mtu_pair = _scenario("small_mtu_pair")
lone_router = _scenario("lone_router")


# --- traffic and captures -------------------------------------------------------------------


def ping(src: Namespace, dst_ip: str, *options: str, count: int = 3,
         deadline: int = 15) -> subprocess.CompletedProcess[str]:
    """``ping -c COUNT -w DEADLINE``: exit 0 only if all COUNT replies came in time."""
    return src.run(["ping", "-n", "-i", "0.2", "-c", str(count), "-w", str(deadline),
                    *options, dst_ip], check=False, timeout=deadline + 10)


def assert_pings(src: Namespace, dst_ip: str, *options: str, mesh: Mesh, count: int = 3,
                 deadline: int = 15) -> None:
    proc = ping(src, dst_ip, *options, count=count, deadline=deadline)
    assert proc.returncode == 0, (
        f"ping {' '.join(options)} {dst_ip} from {src.name} failed:\n{proc.stdout}{proc.stderr}"
        f"\n{mesh.diagnostics()}")


def read_pcap(data: bytes) -> list[bytes]:
    """The packets of a pcap file (classic format, either byte order)."""
    if len(data) < 24:
        return []
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    packets, offset = [], 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack_from(order + "I", data, offset + 8)[0]
        packets.append(data[offset + 16:offset + 16 + incl_len])
        offset += 16 + incl_len
    return packets


@contextlib.contextmanager
def capture(ns: Namespace, dev: str, bpf: str, path: Path) -> Iterator[list[bytes]]:
    """tcpdump on ``dev`` in ``ns`` while the body runs; the list fills with the packets."""
    proc = ns.popen(["tcpdump", "-i", dev, "-n", "-U", "--immediate-mode", "-w", str(path), bpf],
                    stdout=subprocess.DEVNULL)
    try:
        _wait_listening(proc, f"tcpdump -i {dev} in {ns.name}")
        packets: list[bytes] = []
        yield packets
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, f"tcpdump -i {dev} in {ns.name} exited {proc.returncode}: {err}"
    packets.extend(read_pcap(path.read_bytes()))


def _wait_listening(proc: subprocess.Popen[str], what: str, timeout: float = 10.0) -> None:
    """Wait for tcpdump's ``listening on`` line: from then on it captures."""
    stderr = proc.stderr
    assert stderr is not None
    seen: list[str] = []

    def probe() -> tuple[bool, str]:
        if select.select([stderr], [], [], 0.1)[0]:
            seen.append(stderr.readline())
        ok = any("listening on" in line for line in seen)
        return ok or proc.poll() is not None, "".join(seen)

    text = wait_until(f"{what} to listen", probe, timeout=timeout, interval=0.0)
    assert "listening on" in text, f"{what} did not start: {text}"


def mac_of(container: BareContainer) -> str:
    """The container's MAC as ``weave-router ps`` lists it."""
    for line in container.host.router("ps").stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == container.name:
            return fields[1]
    raise AssertionError(f"{container.name} not in ps on {container.host.nickname}")


SERVER = """
import hashlib, socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
conn, _ = srv.accept()
conn.settimeout(30)
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest())
"""

CLIENT = """
import random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as conn:
    conn.sendall(data)
"""


def assert_tcp_transfer(src: Namespace, dst: Namespace, dst_ip: str, size: int) -> None:
    """``size`` random bytes from ``src`` to ``dst`` over TCP arrive whole and intact."""
    seed = random.randrange(1 << 30)
    server = dst.popen([sys.executable, "-c", SERVER, str(TCP_PORT)])
    try:
        wait_until(f"the TCP server in {dst.name} to listen", functools.partial(
            _listening, dst, TCP_PORT), timeout=10)
        client = src.run([sys.executable, "-c", CLIENT, dst_ip, str(TCP_PORT), str(seed),
                          str(size)], check=False, timeout=60)
        assert client.returncode == 0, f"TCP client failed: {client.stderr}"
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    expected = hashlib.sha256(random.Random(seed).randbytes(size)).hexdigest()
    assert out.split() == [str(size), expected], f"server saw: {out!r} {err}"


def _listening(ns: Namespace, port: int) -> tuple[bool, str]:
    out = ns.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout
    return bool(out.strip()), out or "(no listener)"


def the_line_to(host: Host, peer: Host) -> ConnectionLine:
    """The one established connection line of ``host``, which must be to ``peer``."""
    established = [c for c in host.wait_established(1, only=False) if c.state == "established"]
    line, = established
    assert f"({peer.nickname})" in line.text, line.text
    return line


# --- 1. ping and TCP across two hosts, plain and encrypted ----------------------------------


def check_pair(mesh: Mesh, *, encrypted: bool) -> None:
    h1, h2 = mesh.hosts
    c1, c2 = mesh.bare_containers
    for host, peer in ((h1, h2), (h2, h1)):
        words = the_line_to(host, peer).text.split()
        assert "sleeve" in words, words
        assert ("encrypted" in words) == encrypted, words
        assert any(w.startswith("mtu=") for w in words), words

    c1_mac = mac_of(c1)
    hex_pattern = PATTERN.hex()
    with capture(h1, "eth0", "udp port 6783", mesh.run_dir / "underlay.pcap") as underlay, \
            capture(c2, "ethwe", f"icmp and ether src {c1_mac}", mesh.run_dir / "c2.pcap") as rx:
        assert_pings(c1, container_ip(2), "-p", hex_pattern, "-s", "200", count=5, mesh=mesh)
    # the captures saw the pings: five requests delivered to c2, ten big datagrams on eth0
    assert len(rx) >= 5, f"c2 captured {len(rx)} ICMP frames from {c1_mac}"
    assert len([p for p in underlay if len(p) > 200]) >= 10, [len(p) for p in underlay]
    assert any(PATTERN * 4 in p for p in rx), "the ping pattern is not in the delivered frames"
    leaked = [p for p in underlay if PATTERN * 2 in p]
    if encrypted:
        assert not leaked, f"{len(leaked)} underlay datagrams carry the ping pattern in clear"
    else:
        assert len(leaked) >= 10, f"only {len(leaked)} unencrypted datagrams carry the pattern"

    assert_pings(c2, container_ip(1), mesh=mesh)
    assert_tcp_transfer(c1, c2, container_ip(2), TRANSFER_BYTES)


def test_containers_ping_and_stream_tcp_over_a_plain_sleeve(plain_pair: Mesh) -> None:
    check_pair(plain_pair, encrypted=False)


def test_a_password_encrypts_the_sleeve_on_the_underlay(encrypted_pair: Mesh) -> None:
    check_pair(encrypted_pair, encrypted=True)
    cipher = AES256GCM if hardware_aes() else SECRETBOX  # both ends offer the same here
    for host in encrypted_pair.hosts:
        assert f"frames sealed with {cipher}" in host.log_tail(1000), host.log_tail()


# --- 2. broadcast and multicast reach every host ---------------------------------------------

RECEIVER = """
import socket, struct, sys
group, port = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("", port))
mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 lacks the name
sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
sock.settimeout(20)
seen = {}
while len(seen) < 2:
    data, ancdata, _, source = sock.recvmsg(2048, socket.CMSG_SPACE(12))
    for level, kind, info in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            seen[socket.inet_ntoa(info[8:12])] = f"{data.decode()} {source[0]}"
for dest, what in sorted(seen.items()):
    print(dest, what)
"""

SENDER = """
import socket, sys, time
group, broadcast, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(300):  # paced: receivers that join late still get some
    sock.sendto(b"multicast", (group, port))
    sock.sendto(b"broadcast", (broadcast, port))
    time.sleep(0.05)
"""


def test_multicast_and_broadcast_reach_containers_on_every_host(multicast_trio: Mesh) -> None:
    c1, c2, c3 = multicast_trio.bare_containers
    receivers = [c.popen([sys.executable, "-c", RECEIVER, GROUP, str(GROUP_PORT)])
                 for c in (c2, c3)]
    sender = c1.popen([sys.executable, "-c", SENDER, GROUP, BROADCAST, str(GROUP_PORT)])
    try:
        results = [r.communicate(timeout=30) for r in receivers]
    finally:
        for proc in (sender, *receivers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    expected = [f"{BROADCAST} broadcast {container_ip(1)}",
                f"{GROUP} multicast {container_ip(1)}"]
    for container, proc, (out, err) in zip((c2, c3), receivers, results, strict=True):
        assert proc.returncode == 0 and out.splitlines() == expected, (
            f"{container.name} received {out!r} (exit {proc.returncode}) {err}\n"
            f"{multicast_trio.diagnostics()}")


# --- 3. relay through the middle host --------------------------------------------------------


def test_a_chain_without_discovery_relays_through_the_middle_host(relay_chain: Mesh) -> None:
    h1, h2, h3 = relay_chain.hosts
    c1, _, c3 = relay_chain.bare_containers
    assert any("(host3)" in peer for peer in parse_peers(h1.status("peers")))
    assert_pings(c1, container_ip(3), mesh=relay_chain)
    assert_pings(c3, container_ip(1), mesh=relay_chain)
    assert_tcp_transfer(c3, c1, container_ip(1), 2 << 20)
    # host1 and host3 never connected: every frame went through host2
    for end in (h1, h3):
        assert f"({h2.nickname})" in the_line_to(end, h2).text
        assert len(end.connections()) == 1, end.status("connections")


# --- 4. an underlay with a small MTU ---------------------------------------------------------


def test_big_frames_cross_an_underlay_with_mtu_1280(small_mtu_pair: Mesh) -> None:
    h1, h2 = small_mtu_pair.hosts
    c1, c2 = small_mtu_pair.bare_containers

    def path_mtu_fits() -> tuple[bool, str]:
        text = h1.status("connections")
        mtus = [int(w[4:]) for w in text.split() if w.startswith("mtu=") and w[4:].isdigit()]
        return bool(mtus) and max(mtus) <= 1280, text

    h1.wait("`status connections` to show mtu=N with N <= 1280", path_mtu_fits)
    assert_pings(c1, container_ip(2), "-s", "10000", count=2, mesh=small_mtu_pair)
    assert_pings(c2, container_ip(1), "-s", "10000", count=2, mesh=small_mtu_pair)
    # a DF packet of the container's MTU does not fit the path: ICMP "fragmentation needed"
    # names the path's MTU, and DF packets of that size then go through
    mtu = int(c1.run(["cat", "/sys/class/net/ethwe/mtu"]).stdout)
    assert mtu > 1280 - 28, mtu
    refused = c1.run(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 28),
                      container_ip(2)], check=False)
    found = re.search(r"Frag needed and DF set \(mtu = (\d+)\)", refused.stdout)
    assert found, f"no ICMP fragmentation needed:\n{refused.stdout}{refused.stderr}"
    path_mtu = int(found[1])
    assert 1100 < path_mtu < 1280 - 28, path_mtu
    assert_pings(c1, container_ip(2), "-M", "do", "-s", str(path_mtu - 28), count=2,
                 mesh=small_mtu_pair)
    stats = json.loads(h1.router("report", "-f", "{{json .Router.OverlayDiagnostics.sleeve}}"
                                 ).stdout)
    assert stats["icmp_frag_needed"] >= 1, stats
    assert_tcp_transfer(c1, c2, container_ip(2), 5 << 20)
    assert h2.connections(), h2.status("connections")


# --- 5. a wrong password delivers nothing ----------------------------------------------------


def test_a_wrong_password_delivers_no_frame(wrong_password_pair: Mesh) -> None:
    h1, h2 = wrong_password_pair.hosts
    c1, c2 = wrong_password_pair.bare_containers

    def failed_to_h1() -> tuple[bool, str]:
        text = h2.status("connections")
        lines = [c for c in h2.connections() if c.address.startswith(h1.ip + ":")]
        return any(c.state == "failed" for c in lines), text

    line = h2.wait(f"a failed connection to {h1.ip}", failed_to_h1)
    assert "password" in line, line
    c1_mac = mac_of(c1)
    with capture(c2, "ethwe", f"ether src {c1_mac}", wrong_password_pair.run_dir / "c2.pcap") \
            as rx:
        proc = ping(c1, outside_ip(2), count=3, deadline=3)
    assert proc.returncode != 0, f"ping crossed a mesh with mismatched passwords:\n{proc.stdout}"
    assert rx == [], f"c2 received {len(rx)} frames from c1 ({c1_mac})"
    for host in (h1, h2):
        assert not [c for c in host.connections() if c.state == "established"], (
            host.status("connections"))


# --- 6. detach, ps, and attach mistakes ------------------------------------------------------


def ps_names(host: Host) -> list[str]:
    return [line.split()[0] for line in host.router("ps").stdout.splitlines() if line.strip()]


def test_the_sleeve_socket_buffers_pass_the_hosts_rmem_max(lone_router: Mesh) -> None:
    """16 MiB asked past net.core.[rw]mem_max (root may): the kernel shows twice that."""
    host, = lone_router.hosts
    shown = host.run(["ss", "-u", "-a", "-m", "-n", "sport = :6783"]).stdout
    assert "rb33554432" in shown and "tb33554432" in shown, shown


def test_detach_removes_addresses_then_the_veth(lone_router: Mesh) -> None:
    host, = lone_router.hosts
    c1 = lone_router.add_bare_container(host)
    before = set(host.links())
    assert c1.attach("ip:10.32.1.1/12", "ip:10.32.2.1/12").stdout.split() == [
        "10.32.1.1", "10.32.2.1"]
    veth, = set(host.links()) - before
    assert veth.startswith("vethwe"), veth
    assert sorted(c1.addresses("ethwe")) == ["10.32.1.1/12", "10.32.2.1/12"]
    ps_line, = host.router("ps", c1.name).stdout.splitlines()
    assert ps_line.split()[2:] == ["10.32.1.1/12", "10.32.2.1/12"], ps_line

    c1.detach("ip:10.32.2.1/12")
    assert c1.addresses("ethwe") == ["10.32.1.1/12"]
    assert veth in host.links()
    assert host.router("ps", c1.name).stdout.split()[2:] == ["10.32.1.1/12"]

    c1.detach()
    assert c1.links() == ["lo"]
    assert veth not in host.links()
    assert set(host.links()) == before
    assert c1.name not in ps_names(host)


@pytest.mark.parametrize(
    ("addrs", "named"),
    [
        (["ip:10.32.3.2"], "ip:10.32.3.2"),
        (["net:10.32.3.2/30"], "net:10.32.3.2/30"),
        (["ip:10.32.3.2/31"], "ip:10.32.3.2/31"),
        (["ip:10.32.3.1/12", "MISSING"], "MISSING"),
    ],
    ids=["no-prefix-length", "net-with-host-bits", "slash-31", "missing-namespace"],
)
def test_attach_mistakes_fail_with_one_line_and_create_nothing(
    lone_router: Mesh, addrs: list[str], named: str
) -> None:
    host, = lone_router.hosts
    container = lone_router.add_bare_container(host)
    missing = f"{lone_router.prefix}-nosuch"
    args = [missing if a == "MISSING" else a for a in addrs]
    named = missing if named == "MISSING" else named
    before, listed = set(host.links()), ps_names(host)
    target = [] if args and args[-1] == missing else [container.name]
    proc = host.router("attach", *args, *target, check=False)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert named in lines[0], lines[0]
    assert set(host.links()) == before
    assert container.links() == ["lo"]
    assert ps_names(host) == listed
    assert not Path("/run/netns", missing).exists()


def test_attach_by_path_and_by_pid(lone_router: Mesh) -> None:
    host, = lone_router.hosts
    by_path, by_pid = lone_router.add_bare_container(host), lone_router.add_bare_container(host)
    path = f"/run/netns/{by_path.name}"
    holder = by_pid.popen(["sleep", "120"])  # a process whose PID names the namespace
    pid = str(holder.pid)
    host.router("attach", "ip:10.32.4.1/12", path)
    host.router("attach", "ip:10.32.4.2/12", pid)
    assert by_path.addresses("ethwe") == ["10.32.4.1/12"]
    assert by_pid.addresses("ethwe") == ["10.32.4.2/12"]
    assert {path, pid} <= set(ps_names(host))
    assert_pings(by_path, "10.32.4.2", mesh=lone_router)  # through the local bridge
    host.router("detach", path)
    host.router("detach", pid)
    assert by_path.links() == ["lo"] and by_pid.links() == ["lo"]
    assert not {path, pid} & set(ps_names(host))
