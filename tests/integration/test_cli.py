"""The ``weave-router`` command as users type it: status layout, report, mistakes, supervision.

Real detached routers in host namespaces (see ``conftest.py``); every check reads what the
CLI prints, never the router's internals.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable

import pytest

from router import __version__
from router.testing.netns import Host, Mesh, parse_status, run_parallel

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]  # the make_mesh fixture: make_mesh(n_hosts, mtu=None)

NAME = r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}"


def router_section(host: Host) -> dict[str, str]:
    return parse_status(host.router("status").stdout)["router"]


def peer_name(host: Host) -> str:
    """The peer name (``aa:bb:cc:dd:ee:ff``) from the ``Name:`` line of ``status``."""
    return router_section(host)["Name"].split("(")[0]


def test_status_prints_the_router_section_in_weaves_layout(running_mesh: Mesh) -> None:
    h1, h2 = running_mesh.hosts[:2]
    text = h1.router("status").stdout
    for line in text.splitlines():
        if line.strip():
            assert line.index(":") == 15, f"label not right-aligned to 15 columns: {line!r}"
    router = parse_status(text)["router"]
    assert re.fullmatch(rf"{NAME}\(host1\)", router["Name"]), router["Name"]
    assert router["Version"] == __version__
    assert router["Protocol"] == "weave-router 1..1"
    assert router["Encryption"] == "disabled"
    assert router["PeerDiscovery"] == "enabled"
    assert router["Targets"] == "0"
    assert router["Connections"] == "2 (2 established)"
    assert router["Peers"] == "3 (with 6 established connections)"
    assert router["TrustedSubnets"] == "none"
    assert router_section(h2)["Targets"] == "1"


def test_report_is_json_and_format_renders_fields(running_mesh: Mesh) -> None:
    h1 = running_mesh.hosts[0]
    name = peer_name(h1)
    report = json.loads(h1.router("report").stdout)
    assert report["Router"]["Name"] == name
    assert h1.router("report", "-f", "{{.Router.Name}}").stdout.strip() == name
    assert h1.router("report", "-f", "{{len .Router.Peers}}").stdout.strip() == "3"


def test_launching_twice_fails_with_one_line(running_mesh: Mesh) -> None:
    h1 = running_mesh.hosts[0]
    name = peer_name(h1)
    again = h1.launch(check=False)
    assert again.returncode != 0
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert re.search(r"already|running", again.stderr, re.IGNORECASE), again.stderr
    assert peer_name(h1) == name  # the running router is untouched
    h1.wait_established(2)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["launch", "--no-such-flag"], "--no-such-flag"),
        (["launch", "--port", "99999"], "--port"),
        (["launch", "--conn-limit", "many"], "--conn-limit"),
        (["launch", "192.168.1.1:notaport"], "192.168.1.1:notaport"),
        (["status", "nonsense"], "nonsense"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_user_mistakes_exit_nonzero_with_one_line(
    running_mesh: Mesh, args: list[str], named: str
) -> None:
    bystander = running_mesh.hosts[3]  # no router runs here
    proc = bystander.router(*args, check=False, timeout=15)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert named in lines[0], lines[0]
    assert bystander.pids() == [], "a failed command left processes behind"
    assert not bystander.db_path.exists(), "a failed launch created the database"


def test_a_killed_router_is_restarted_unless_no_restart(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(2)
    supervised, unsupervised = mesh.hosts
    run_parallel(lambda: supervised.launch(unsupervised.ip),
                 lambda: unsupervised.launch("--no-restart"))
    supervised.router("connect", "192.0.2.7")  # TEST-NET: a target that never answers
    name = peer_name(supervised)
    pids = [host.listener_pid() for host in mesh.hosts]
    assert all(pids), f"no process listens on TCP 6783: {pids}"
    for pid in pids:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def restarted() -> tuple[bool, str]:
        pid = supervised.listener_pid()
        up = supervised.router("status", check=False, timeout=10)
        ok = pid is not None and pid != pids[0] and up.returncode == 0
        return ok, f"listener pid {pid} (killed {pids[0]}); status: {up.stdout}{up.stderr}"

    supervised.wait("the router to be restarted after kill -9", restarted, timeout=30)
    assert peer_name(supervised) == name
    # Restarted with --resume: the launch PEER and the connected target both survive.
    targets = supervised.status("targets").split()
    assert sorted(targets) == sorted([f"{unsupervised.ip}:6783", "192.0.2.7:6783"]), targets
    unsupervised.wait_stopped()
    assert unsupervised.router("status", check=False).returncode != 0


def test_foreground_tells_systemd_it_is_ready_once_serving(make_mesh: MakeMesh) -> None:
    """``launch --foreground`` under systemd (``Type=notify``): READY=1 once /status answers,
    STOPPING=1 on SIGTERM, then exit 0."""
    import socket

    host = make_mesh(1).hosts[0]
    path = host.dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20.0)
        proc = host.popen(host.router_argv("launch", "--foreground"),
                          env={"NOTIFY_SOCKET": str(path)})
        assert sock.recv(256) == b"READY=1"
        assert host.router("status").returncode == 0  # serving when it said so
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert proc.wait(timeout=15) == 0
