"""The mesh milestone as a user lives it: real routers on hosts in network namespaces.

Every command is the CLI as a user types it (``weave-router launch ...``) inside a host's
namespace; routers run detached, each with its own --db-path, --log-file and --nickname.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable

import pytest

from router.testing.netns import ConnectionLine, Host, Mesh, parse_peers, parse_status, run_parallel
from router.wire.constants import MAGIC, PROTOCOL_MAX_VERSION, PROTOCOL_MIN_VERSION

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]  # the make_mesh fixture: make_mesh(n_hosts, mtu=None)

PASSWORD_REASON = re.compile(r"password|encrypt|decrypt|authenticat", re.IGNORECASE)


def targets(host: Host) -> set[str]:
    """``status targets`` as a set of IPs (``:6783``, the default port, dropped)."""
    out = host.router("status", "targets").stdout
    return {line.strip().removesuffix(":6783") for line in out.splitlines() if line.strip()}


def router_section(host: Host) -> dict[str, str]:
    return parse_status(host.router("status").stdout)["router"]


def established(lines: list[ConnectionLine]) -> list[ConnectionLine]:
    return [c for c in lines if c.state == "established"]


def to(host: Host, lines: list[ConnectionLine]) -> list[ConnectionLine]:
    """The lines whose remote address is ``host``'s."""
    return [c for c in lines if c.address.split(":")[0] == host.ip]


def test_three_hosts_find_each_other(running_mesh: Mesh) -> None:
    h1, h2, h3, _ = running_mesh.hosts
    for host in (h1, h2, h3):
        lines = host.wait_established(2)
        others = {h.nickname for h in (h1, h2, h3)} - {host.nickname}
        for nick in others:
            assert any(f"({nick})" in c.text for c in lines), (nick, lines)
    # host2 and host3 were only told about host1: their link came from discovery
    assert targets(h2) == {h1.ip}
    assert targets(h3) == {h1.ip}
    assert targets(h1) == set()


def test_status_peers_lists_every_peer_with_its_connections(running_mesh: Mesh) -> None:
    hosts = running_mesh.hosts[:3]

    def full_view(host: Host) -> tuple[bool, str]:
        text = host.status("peers")
        peers = parse_peers(text)
        ok = len(peers) == 3 and all(
            len(conns) == 2 and all(c.endswith("established") for c in conns)
            for conns in peers.values()
        )
        return ok, text

    for host in hosts:
        text = host.wait("`status peers` to list 3 peers with 2 established connections each",
                         functools.partial(full_view, host))
        for other in hosts:
            assert f"({other.nickname})" in text


def test_garbage_on_the_mesh_port_loses_only_that_connection(running_mesh: Mesh) -> None:
    h1, _, _, h4 = running_mesh.hosts
    preamble = MAGIC + bytes([PROTOCOL_MIN_VERSION, PROTOCOL_MAX_VERSION])
    noise = bytes(range(256)) * 16
    payloads = {
        "noise": noise,
        "http": b"GET / HTTP/1.1\r\nHost: weave\r\n\r\n" * 64,
        "huge frame": preamble + b"\xff\xff\xff\xff" + noise,
        "bad frame": preamble + len(noise).to_bytes(4, "big") + noise,
    }
    results = run_parallel(*(lambda p=p: h4.run([sys.executable, "-c", GARBAGE_CLIENT, h1.ip],
                                                input=p.hex(), timeout=30)
                             for p in payloads.values()))
    for kind, proc in zip(payloads, results, strict=True):
        assert proc.stdout.strip() == "closed", f"{kind}: {proc.stdout}{proc.stderr}"
    h1.wait_established(2)  # the two real peers, and nothing else
    assert router_section(h1)["Connections"] == "2 (2 established)"


# Runs inside a host namespace: send the hex payload from stdin to IP:6783, keep sending
# noise (1 MiB at most) and then read; print "closed" once the router drops us, "open" if it
# still holds the connection after 5 s (well under the 10 s handshake timeout).
GARBAGE_CLIENT = r"""
import socket, sys
payload = bytes.fromhex(sys.stdin.read())
sock = socket.create_connection((sys.argv[1], 6783), timeout=5)
try:
    sock.sendall(payload)
    for _ in range(256):
        sock.sendall(bytes(range(256)) * 16)
    while sock.recv(65536):
        pass
    print("closed")
except (ConnectionResetError, BrokenPipeError):
    print("closed")
except TimeoutError:
    print("open")
"""


def test_passwords_encrypt_and_a_mismatch_fails_with_reason(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(4)
    h1, h2, h3, h4 = mesh.hosts
    h1.launch("--password", "s3cret")
    run_parallel(
        lambda: h2.launch(h1.ip, env={"WEAVE_PASSWORD": "s3cret"}),
        lambda: h3.launch("--password", "other", h1.ip),
        lambda: h4.launch(h1.ip),
    )
    for host, peer in ((h1, h2), (h2, h1)):
        line, = established(host.wait_established(1, only=False))
        assert f"({peer.nickname})" in line.text
        assert " encrypted " in f" {line.text} ", line.text
    assert router_section(h1)["Encryption"] == "enabled"
    assert router_section(h4)["Encryption"] == "disabled"

    def failed_to_h1(host: Host, not_retry: str = "") -> str:
        def accept(lines: list[ConnectionLine]) -> bool:
            return any(c.state == "failed" and retry_of(c) not in ("", not_retry)
                       for c in to(h1, lines))
        lines = host.wait_connections(accept, f"a failed connection to {h1.ip}")
        assert not established(lines), lines
        return next(retry_of(c) for c in to(h1, lines) if c.state == "failed")

    first = {}
    for host in (h3, h4):
        first[host.nickname] = failed_to_h1(host)
        line = next(c for c in to(h1, host.connections()) if c.state == "failed")
        reason = line.text.split("failed", 1)[1].split("retry:")[0].strip(" ,")
        assert PASSWORD_REASON.search(reason), f"unclear reason on {host.nickname}: {line.text}"
    # the failed target is retried: a later attempt fails again with a new retry time
    failed_to_h1(h3, not_retry=first[h3.nickname])


def retry_of(line: ConnectionLine) -> str:
    """The ``retry: <time>`` part of a failed line, or ``""``."""
    _, sep, when = line.text.partition("retry:")
    return when.strip() if sep else ""


def test_connect_replace_and_forget(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    run_parallel(h1.launch, h2.launch, h3.launch)
    assert targets(h2) == set()

    h2.router("connect", h1.ip)
    assert targets(h2) == {h1.ip}
    h2.wait_established(1)
    h1.wait_established(1)

    h2.router("connect", "--replace", h3.ip)
    assert targets(h2) == {h3.ip}
    mesh.wait_full_mesh()  # host2-host3 by target, host1-host3 by discovery

    h2.router("forget", h3.ip)
    assert targets(h2) == set()
    assert len(h2.wait_established(2)) == 2  # live connections stay until lost


def test_resume_uses_the_persisted_targets(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    run_parallel(h1.launch, h3.launch)
    h2.launch(h1.ip)
    h2.router("connect", h3.ip)
    mesh.wait_full_mesh()

    h2.router("stop")
    h2.wait_stopped()
    run_parallel(lambda: h1.wait_established(1, only=False),
                 lambda: h3.wait_established(1, only=False))

    h2.launch("--resume")
    assert targets(h2) == {h1.ip, h3.ip}
    mesh.wait_full_mesh()


def test_no_discovery_connects_only_to_the_targets(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    mesh.launch_star("--no-discovery")
    h1.wait_established(2)
    for host in (h2, h3):
        # once the host knows all three peers, a discovering router would be dialling
        host.wait("`status peers` to list 3 peers", functools.partial(knows_three, host))
        lines = host.connections()
        assert len(lines) == 1 and lines[0].state == "established", lines
        assert to(h1, lines), lines
        assert router_section(host)["PeerDiscovery"] == "disabled"


def knows_three(host: Host) -> tuple[bool, str]:
    text = host.status("peers")
    return len(parse_peers(text)) == 3, text


def test_stop_ends_the_router_and_launch_heals_the_mesh(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    mesh.launch_star()
    mesh.wait_full_mesh()
    name = router_section(h3)["Name"]

    h3.router("stop")
    h3.wait_stopped()
    down = h3.router("status", check=False)
    assert down.returncode != 0
    assert len(down.stderr.strip().splitlines()) == 1, down.stderr
    run_parallel(lambda: h1.wait_established(1, only=False),
                 lambda: h2.wait_established(1, only=False))

    h3.launch(h1.ip)
    mesh.wait_full_mesh()
    assert router_section(h3)["Name"] == name  # the persisted identity came back
