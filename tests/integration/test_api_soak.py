"""The CLI and ``/status`` keep working while 200 slow clients hold connections to a real
router and a reconnect storm runs (issue 9 item 9 and "how it will be checked"). This
checks that they work; ``bench/api_soak.py`` measures how fast."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from router.testing import as_user
from router.testing.netns import Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]
DAEMON = ["setpriv", "--reuid", "daemon", "--regid", "daemon", "--clear-groups"]


def _holder(host: Host, *, as_nobody: bool, slow: int, storm: int) -> subprocess.Popen[str]:
    args = ("hold", "--slow", str(slow), "--storm", str(storm), "--trickle", "1",
            "--seconds", "120")
    argv = (as_user.argv("nobody", "router.testing.slow_clients", *args) if as_nobody
            else [sys.executable, "-m", "router.testing.slow_clients", *args])
    proc = host.popen(argv, stdin=subprocess.PIPE, env={"PYTHONPATH": os.getcwd()})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert json.loads(line or "{}").get("ready") is True, (line, proc.stderr)
    return proc


def _finish(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, err = proc.communicate("", timeout=30)
    return dict(json.loads(out.strip().splitlines()[-1])) if out.strip() else {"error": err}


@pytest.fixture
def soaked(make_mesh: MakeMesh) -> Iterator[tuple[Host, list[subprocess.Popen[str]]]]:
    mesh = make_mesh(1)
    host = mesh.hosts[0]
    host.launch()
    holders = [_holder(host, as_nobody=True, slow=100, storm=4),
               _holder(host, as_nobody=False, slow=100, storm=0)]
    try:
        yield host, holders
    finally:
        for proc in holders:
            if proc.poll() is None:
                proc.kill()


def test_cli_and_status_answer_while_200_slow_clients_hold_connections(
        soaked: tuple[Host, list[subprocess.Popen[str]]]) -> None:
    host, holders = soaked
    sock = host.db_path.with_suffix(".sock")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    for _ in range(5):
        over_tcp = host.router("status", check=False, timeout=30)  # root: lane "root"
        assert over_tcp.returncode == 0 and "Service: router" in over_tcp.stdout, over_tcp
        over_unix = host.router("status", "--socket", str(sock), check=False, timeout=30)
        assert over_unix.returncode == 0 and "Service: router" in over_unix.stdout, over_unix
        report = host.router("report", "--socket", str(sock), check=False, timeout=30)
        assert report.returncode == 0 and json.loads(report.stdout)["Router"]["Name"], report
        # Another local user (not root, not the attacker) is served over TCP too.
        curl = host.run([*DAEMON, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                         "127.0.0.1:6784/status"], check=False, timeout=30)
        assert curl.stdout == "200", curl
    denied = host.run(as_user.argv("nobody", "cli.main", "status", "--socket", str(sock)),
                      check=False, timeout=30, env={"PYTHONPATH": os.getcwd()})
    assert denied.returncode == 1 and "permission denied" in denied.stderr, denied
    counts = [_finish(proc) for proc in holders]
    # The slow clients were really there: dropped or answered 408, and back again.
    assert all(c.get("opened", 0) > 100 for c in counts), counts
    assert counts[0].get("storm_connections", 0) > 0, counts
    assert "Traceback" not in host.log_file.read_text(errors="replace")
