"""The ``weave-router`` command as users type it: status layout, report, mistakes, supervision.

Real detached routers in host namespaces (see ``conftest.py``); every check reads what the
CLI prints, never the router's internals.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from router import __version__
from router.config import DEFAULT_DB_PATH
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
    assert router["Protocol"] == "weave-router 1..2"
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
        assert sock.recv(256).split(b"\n")[0] == b"READY=1"  # then STATUS=... (docs/host.md)
        assert host.router("status").returncode == 0  # serving when it said so
        proc.send_signal(signal.SIGTERM)
        message = sock.recv(256)
        while message.startswith(b"STATUS="):  # updated every 5 s while it runs
            message = sock.recv(256)
        assert message == b"STOPPING=1"
        assert proc.wait(timeout=15) == 0


# --- issue 10: what a new user tripped over ------------------------------------------------

@pytest.fixture(scope="module")
def pair() -> Iterator[Mesh]:
    """host1 runs a router (default range); host2 has none (failed launches, reset)."""
    with Mesh.build(n_hosts=2) as mesh:
        mesh.hosts[0].launch()
        yield mesh


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_attach_h_is_the_hostname_not_help(pair: Mesh) -> None:
    """Item 2: ``attach -h foo.weave.local c1`` printed the usage and attached nothing."""
    h1 = pair.hosts[0]
    c = pair.add_bare_container(h1)
    proc = h1.router("attach", "-h", "foo.weave.local", c.name)
    assert "usage" not in proc.stdout.lower()
    ip = proc.stdout.strip()
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.32.0.0/12"), proc.stdout
    assert proc.stderr == ""
    assert f"inet {ip}/12" in c.run(["ip", "-4", "addr", "show", "ethwe"]).stdout
    assert "foo.weave.local. -> " + ip in h1.log_tail(50)  # registered in weaveDNS
    assert "--help" in h1.router("attach", "--help").stdout


def test_silent_no_ops_say_there_was_nothing_to_do(pair: Mesh) -> None:
    """Item 13: detach twice, detach of a missing address, ps and forget of unknowns."""
    h1 = pair.hosts[0]
    c = pair.add_bare_container(h1)
    h1.router("attach", "ip:10.32.5.1/12", "ip:10.32.5.2/12", c.name)
    missing = h1.router("detach", "ip:10.32.5.9/12", c.name, check=False)
    assert one_line_error(missing) == (
        f"weave-router: error: {c.name} does not have 10.32.5.9/12 (it has 10.32.5.1/12 "
        "10.32.5.2/12): nothing detached")
    assert "10.32.5.2/12" in h1.router("ps", c.name).stdout  # all or nothing
    h1.router("detach", c.name)
    again = h1.router("detach", c.name, check=False)
    assert one_line_error(again) == f"weave-router: error: {c.name} is not attached: nothing " \
                                    "to detach"
    ps = h1.router("ps", c.name)  # it exists, but is not on the network
    assert (ps.stdout, ps.stderr) == ("", f"weave-router: {c.name} is not attached\n")
    ps = h1.router("ps", "no-such-container", check=False)
    assert (ps.returncode, ps.stdout) == (1, "")
    assert one_line_error(ps).startswith("weave-router: error: container no-such-container")
    forget = h1.router("forget", "192.0.2.99")
    assert forget.stderr == "weave-router: nothing to forget: 192.0.2.99 is not a target " \
                            "(targets: none)\n"
    rmpeer = h1.router("rmpeer", "", check=False)
    assert "no such path" not in rmpeer.stderr
    assert one_line_error(rmpeer) == "weave-router: error: rmpeer: empty PEER_ID (give a " \
                                     "peer name or nickname)"


def test_reset_without_a_router_says_what_it_removed(pair: Mesh) -> None:
    """Item 13: ``reset`` with no router worked silently (on the default path, too)."""
    h2 = pair.hosts[1]
    db = h2.dir / "reset.db"
    h2.run(["ip", "link", "add", "weave", "type", "bridge"])
    db.write_bytes(b"")
    proc = h2.router("reset", "--db-path", str(db))
    assert proc.stdout == (
        "weave-router is not running (no answer on 127.0.0.1:6784); reset: removed weave; "
        f"removed {db}\n")
    assert not db.exists()
    proc = h2.router("reset", "--db-path", str(db))
    assert proc.stdout.endswith(f"reset: no bridge or devices of ours; no database at {db}\n")
    if not DEFAULT_DB_PATH.exists():  # never remove a real database of this machine
        proc = h2.router("reset")
        assert proc.stdout.endswith(
            f"; no database at {DEFAULT_DB_PATH} (the default --db-path)\n"), proc.stdout


def test_routers_show_as_weave_router_in_pgrep(pair: Mesh) -> None:
    """Item 14: the daemon showed as ``python -m cli.main launch --foreground``."""
    h1 = pair.hosts[0]
    ours = set(h1.pids())
    found = subprocess.run(["pgrep", "-a", "weave-router"], capture_output=True, text=True,
                           check=False).stdout.splitlines()
    titles = sorted(" ".join(line.split()[1:]) for line in found if int(line.split()[0]) in ours)
    assert titles == ["weave-router: router host1", "weave-router: supervisor host1"], found


def test_status_ipam_is_weaves_layout(pair: Mesh) -> None:
    """Item 15: ``%-37v %8d IPs (%04.1f%% of total) %s``, our peer first."""
    h1 = pair.hosts[0]
    name = peer_name(h1)
    h1.router("prime")
    text = h1.router("status", "ipam").stdout
    peer = f"{name}(host1)"
    assert re.fullmatch(re.escape(f"{peer:<37} {1 << 20:8d} IPs (100.0% of total) (")
                        + r"\d+ active\)\n", text), text


def test_start_failures_say_what_failed_and_why(pair: Mesh) -> None:
    """Item 6: ``cannot start: Exceptions from Trio nursery (1 sub-exception)``."""
    h2 = pair.hosts[1]
    proc = h2.launch("--host", "10.99.99.99", check=False)
    line = one_line_error(proc)
    assert "cannot listen on 10.99.99.99:6783 (UDP): [Errno 99] Cannot assign requested " \
           "address" in line, line
    assert "Trio nursery" not in line
    listener = h2.popen([sys.executable, "-c", "import socket, time; s = socket.socket(); "
                         "s.bind(('0.0.0.0', 6783)); s.listen(); print('up', flush=True); "
                         "time.sleep(60)"])
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "up\n"
        line = one_line_error(h2.launch(check=False))
        assert "cannot listen on 0.0.0.0:6783 (TCP): [Errno 98] Address already in use" in line
    finally:
        listener.kill()
        listener.wait()
    h2.wait_stopped()


def test_a_range_overlapping_a_host_route_is_refused(pair: Mesh) -> None:
    """Item 3: a range over eth0's subnet was accepted; attach then gave out 192.168.X.1."""
    h2 = pair.hosts[1]
    h2.db_path.unlink(missing_ok=True)  # an earlier failed launch here may have made one
    lan = f"192.168.{pair.subnet}.0/24"
    for wanted in (lan, "0.0.0.0/0"):
        line = one_line_error(h2.launch("--ipalloc-range", wanted, check=False))
        assert f"--ipalloc-range {wanted} overlaps with the host's route {lan} dev eth0" \
            in line, line
    h2.run(["ip", "route", "add", "10.40.0.0/16", "via", pair.hosts[0].ip])
    try:
        line = one_line_error(h2.launch(check=False))  # the default range, 10.32.0.0/12
        assert "--ipalloc-range 10.32.0.0/12 overlaps with the host's route 10.40.0.0/16 " \
               "dev eth0" in line, line
    finally:
        h2.run(["ip", "route", "del", "10.40.0.0/16"])
    h2.wait_stopped()
    assert not h2.db_path.exists()


def test_routes_of_the_weave_bridge_do_not_count(make_mesh: MakeMesh) -> None:
    host = make_mesh(1).hosts[0]
    host.run(["ip", "link", "add", "weave", "type", "bridge"])
    host.run(["ip", "addr", "add", "10.40.0.1/16", "dev", "weave"])
    host.run(["ip", "link", "set", "weave", "up"])
    host.launch("--ipalloc-range", "10.40.0.0/16")
    assert parse_status(host.router("status").stdout)["ipam"]["Range"] == "10.40.0.0/16"


def test_an_empty_range_disables_ipam(make_mesh: MakeMesh) -> None:
    """Item 12: ``--ipalloc-range ''`` fell back to the default range."""
    mesh = make_mesh(1)
    host = mesh.hosts[0]
    host.launch("--ipalloc-range", "")
    status = host.router("status").stdout
    assert "Service: ipam" not in status, status
    assert host.router("status", "ipam").stdout == ""
    c = mesh.add_bare_container(host)
    line = one_line_error(c.attach(check=False))
    assert line == "weave-router: error: IPAM is disabled (launched with --ipalloc-range ''): " \
                   "give the address, like ip:10.32.1.1/12"
    assert c.attach("ip:10.32.1.1/12").stdout == "10.32.1.1\n"
    assert host.router("ps", c.name).stdout.split()[2:] == ["10.32.1.1/12"]
