"""deploy/systemd/weave-router.service through ``systemd-analyze verify``, and the
router's sd_notify: the STATUS= line from a snapshot, and the datagram as a socket the
test binds (a path and an abstract name, as systemd uses both) receives it."""

from __future__ import annotations

import configparser
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from router.daemon import notify_systemd
from router.host.notify import notify_message, status_line
from router.status import ConnectionStatus
from tests.unit.test_layouts import sample_status
from tests.unit.test_metrics import _ipam

UNIT = Path(__file__).resolve().parents[2] / "deploy/systemd/weave-router.service"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "weave-router.service"
    broken.write_text(UNIT.read_text().replace("Type=notify", "Type=notfiy"))
    proc = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert "Failed to parse service type" in proc.stderr  # the check above sees mistakes


def test_the_unit_runs_the_router_as_the_seeds_do() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["EnvironmentFile"] == "-/etc/sysconfig/weave"  # "-": may be missing
    assert service["ExecStart"].endswith("weave-router launch --foreground --no-restart $PEERS")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"  # graceful: the bridge stays


def test_status_line() -> None:
    status = replace(sample_status(), ipam=_ipam())
    assert status_line(status) == "3 peers, 2 established, IPAM ready"
    failed = ConnectionStatus(outbound=True, address="192.0.2.9:6783", state="failed")
    status = replace(status, router=replace(
        status.router, connections=(*status.router.connections, failed)), ipam=None)
    assert status_line(status) == "3 peers, 2 established, 1 failed"
    lone = replace(status, router=replace(status.router, peers=(), connections=()))
    assert status_line(lone) == "1 peer, 0 established"


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_reaches_the_socket(tmp_path: Path, abstract: bool,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"\0weave-router-test-{id(tmp_path)}" if abstract else str(tmp_path / "notify")
        sock.bind(name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name[1:] if abstract else name)
        notify_systemd(notify_message(replace(sample_status(), ipam=_ipam()), ready=True))
        assert sock.recv(4096) == b"READY=1\nSTATUS=3 peers, 2 established, IPAM ready"


def test_notify_without_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notify_systemd("READY=1")  # no socket: nothing to do, nothing raised
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    notify_systemd("READY=1")  # a dead socket: logged, not raised
