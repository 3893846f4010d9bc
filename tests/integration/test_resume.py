"""``launch --resume`` resumes the recorded settings, and a relaunch says in one line
what it discards or changes (issue 10, item 5). Real routers in host namespaces."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable

import pytest

from router.testing.netns import Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]
PASSWORD = "resume-test-secret"


def _api(host: Host, method: str, path: str) -> tuple[int, str]:
    proc = host.run(["curl", "-sS", "-X", method, "-d", "", "-w", "\n%{http_code}",
                     f"http://127.0.0.1:6784{path}"], check=False, timeout=30.0)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def _allocate(host: Host, ident: str) -> str:
    code, body = _api(host, "POST", f"/ip/{ident}")
    assert code == 200, (code, body)
    return body


def _stop(host: Host) -> None:
    host.router("stop")
    host.wait_stopped()


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_another_range_says_in_one_line_that_it_discards_the_ipam_data(
        make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    (h1,) = mesh.hosts
    first = h1.launch("--ipalloc-range", "10.40.0.0/16")
    assert _warnings(first.stderr) == [], first.stderr
    for i in range(3):
        _allocate(h1, f"c{i}")
    _stop(h1)
    proc = h1.launch()  # the default range, 10.32.0.0/12
    lines = _warnings(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert re.fullmatch(
        r"weave-router: warning: --ipalloc-range 10\.32\.0\.0/12 differs from the stored "
        r"IPAM data's range 10\.40\.0\.0/16: discarding the stored IPAM data \(3 addresses "
        r"of 3 containers: .*\)", lines[0]), lines[0]
    assert "Range: 10.32.0.0/12" in h1.status()
    assert _api(h1, "GET", "/ip/c0")[0] == 404
    _stop(h1)


def test_resume_keeps_the_recorded_range_and_default_subnet(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    (h1,) = mesh.hosts
    h1.launch("--ipalloc-range", "10.40.0.0/16", "--ipalloc-default-subnet", "10.40.7.0/24")
    held = {f"c{i}": _allocate(h1, f"c{i}") for i in range(3)}
    assert all(cidr.startswith("10.40.7.") for cidr in held.values()), held
    _stop(h1)
    proc = h1.launch("--resume")
    assert _warnings(proc.stderr) == [], proc.stderr
    status = h1.status()
    assert "Range: 10.40.0.0/16" in status and "DefaultSubnet: 10.40.7.0/24" in status, status
    for ident, cidr in held.items():
        assert _api(h1, "GET", f"/ip/{ident}") == (200, cidr)
    assert _allocate(h1, "new").startswith("10.40.7.")
    _stop(h1)


def test_resume_of_an_encrypted_router_needs_the_password_again(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    (h1,) = mesh.hosts
    h1.launch(env={"WEAVE_PASSWORD": PASSWORD})
    assert "Encryption: enabled" in h1.status()
    _stop(h1)
    assert PASSWORD.encode() not in h1.db_path.read_bytes()
    refused = h1.launch("--resume", check=False)
    lines = _warnings(refused.stderr)
    assert refused.returncode != 0 and len(lines) == 1, (refused.returncode, refused.stderr)
    assert "--resume: this router ran encrypted; give its password again" in lines[0], lines[0]
    assert not h1.pids(), "a router started unencrypted"
    resumed = h1.launch("--resume", env={"WEAVE_PASSWORD": PASSWORD})
    assert _warnings(resumed.stderr) == [], resumed.stderr
    assert "Encryption: enabled" in h1.status()
    _stop(h1)
    plain = h1.launch()  # no --resume, no password: unencrypted, and it says so
    lines = _warnings(plain.stderr)
    assert lines == ["weave-router: warning: this router ran encrypted before; it now runs "
                     "WITHOUT encryption (no --password or WEAVE_PASSWORD)"], plain.stderr
    assert "Encryption: disabled" in h1.status()
    _stop(h1)


def test_a_crashed_encrypted_router_is_restarted_encrypted_with_its_range(
        make_mesh: MakeMesh) -> None:
    """The supervisor's restart is a --resume: it must pass the new checks and keep both."""
    mesh = make_mesh(1)
    (h1,) = mesh.hosts
    h1.launch("--ipalloc-range", "10.40.0.0/16", env={"WEAVE_PASSWORD": PASSWORD})
    held = _allocate(h1, "c1")
    pid = h1.listener_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def restarted() -> tuple[bool, str]:
        new = h1.listener_pid()
        return new is not None and new != pid, f"listener pid {new}"

    h1.wait("the supervisor to restart the router", restarted, timeout=30.0)
    h1.wait_ready()
    status = h1.status()
    assert "Encryption: enabled" in status and "Range: 10.40.0.0/16" in status, status
    assert _api(h1, "GET", "/ip/c1") == (200, held)
    _stop(h1)
