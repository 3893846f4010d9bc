"""deploy/systemd/weave-router.service under a real systemd as PID 1: a Debian rootfs
(debootstrap, cached under ``build/systemd-rootfs/<digest>/``; cold about 3-5 minutes)
booted by podman (runc, cgroupfs, explicit ulimits in CONTAINERS_CONF, storage under
``build/podman-host/``), with this tree bind-mounted read-only so the container runs the
tree's own ``weave-router`` (its venv and the Python it was made from are mounted too).

1. ``systemctl start`` returns once the router serves (Type=notify: READY=1), and
   ``StatusText`` is the router's STATUS= line;
2. ``$PEERS`` from ``/etc/sysconfig/weave`` arrive as separate arguments (and targets);
3. ``kill -9`` of the router: systemd starts a new one (Restart=on-failure);
4. ``systemctl stop``: a clean stop (Result=success), the bridge stays;
5. without ``/etc/sysconfig/weave`` the unit starts with no peers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.testing.namespace import wait_until
from router.testing.podman import no_new_netavark_chains

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
UNIT = ROOT / "deploy/systemd/weave-router.service"
PACKAGES = ("systemd,systemd-sysv,python3,iproute2,nftables,conntrack,libsodium23,libssl3,"
            "procps,curl,iputils-ping")
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
PYTHON = Path(sys.base_prefix)  # the installation the tree's .venv was made from
PEERS = "192.0.2.1 192.0.2.2:6790"  # documentation addresses: targets that never answer


def rootfs() -> Path:
    """The cached rootfs (built now if missing; an interrupted build leaves nothing)."""
    key = hashlib.sha256(f"{PACKAGES} {SUITE} {MIRROR}".encode()).hexdigest()[:16]
    base = BUILD / "systemd-rootfs"
    entry = base / key
    if (entry / "rootfs/sbin/init").exists():
        return entry / "rootfs"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
    try:
        subprocess.run(["nice", "debootstrap", "--variant=minbase", f"--include={PACKAGES}",
                        SUITE, str(work / "rootfs"), MIRROR], check=True, timeout=1800,
                       capture_output=True)
        link = work / "rootfs/usr/local/bin/weave-router"
        link.symlink_to(ROOT / ".venv/bin/weave-router")
        work.rename(entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return entry / "rootfs"


class Podman:
    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.conf = base / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF)

    def run(self, *args: str, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        argv = ["podman", "--root", str(self.base / "root"), "--runroot",
                str(self.base / "runroot"), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "CONTAINERS_CONF": str(self.conf)})
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc



@pytest.fixture(scope="module", autouse=True)
def _root_namespace_gains_no_netavark_chains() -> Iterator[None]:
    """Every podman here names its network: netavark's firewall never runs in the root
    namespace (:func:`router.testing.podman.no_new_netavark_chains`)."""
    with no_new_netavark_chains("tests/integration/test_systemd_podman.py"):
        yield

@pytest.fixture
def booted(tmp_path: Path) -> Iterator[tuple[Podman, str, Path]]:
    podman = Podman(BUILD / "podman-host")
    name = f"wr{os.getpid()}-systemd"
    sysconfig = tmp_path / "sysconfig"
    sysconfig.mkdir()
    (sysconfig / "weave").write_text(f'PEERS="{PEERS}"\n')
    podman.run("rm", "-f", name, check=False)
    podman.run("run", "-d", "--name", name, "--privileged", "--systemd=always",
               "--network", "none", "-v", f"{ROOT}:{ROOT}:ro",
               "-v", f"{PYTHON}:{PYTHON}:ro",  # the venv's interpreter (outside the tree)
               "-v", f"{UNIT}:/etc/systemd/system/weave-router.service:ro",
               "-v", f"{sysconfig}:/etc/sysconfig",
               "--rootfs", f"{rootfs()}:O", "/sbin/init", timeout=120)
    try:
        def booted() -> tuple[bool, str]:
            out = podman.run("exec", name, "systemctl", "is-system-running", check=False)
            return out.stdout.strip() in ("running", "degraded"), out.stdout + out.stderr

        wait_until("systemd to boot in the container", booted, timeout=60.0)
        yield podman, name, sysconfig
    finally:
        podman.run("rm", "-f", "-t", "5", name, check=False, timeout=120)


def _show(podman: Podman, name: str, prop: str) -> str:
    return podman.run("exec", name, "systemctl", "show", "-P", prop,
                      "weave-router").stdout.strip()


def test_the_unit_under_systemd(booted: tuple[Podman, str, Path]) -> None:
    podman, name, sysconfig = booted
    exe = ["exec", name]
    started = time.monotonic()
    podman.run(*exe, "systemctl", "start", "weave-router", timeout=120)
    took = time.monotonic() - started
    status = podman.run(*exe, "weave-router", "status", check=False)
    assert status.returncode == 0, (took, status.stderr)  # start blocked until READY=1
    assert "peer" in _show(podman, name, "StatusText")

    pid = _show(podman, name, "MainPID")
    # two targets: one argument "192.0.2.1 192.0.2.2:6790" would have been refused (exit 2)
    targets = podman.run(*exe, "weave-router", "status", "targets").stdout.split()
    assert sorted(targets) == ["192.0.2.1:6783", "192.0.2.2:6790"]

    podman.run(*exe, "kill", "-9", pid)

    def restarted() -> tuple[bool, str]:
        now = _show(podman, name, "MainPID")
        state = _show(podman, name, "ActiveState")
        return now not in ("0", pid) and state == "active", f"{state} pid {now}"

    wait_until("systemd to restart the killed router", restarted, timeout=30.0)
    podman.run(*exe, "systemctl", "stop", "weave-router", timeout=60)
    assert (_show(podman, name, "ActiveState"), _show(podman, name, "Result")) == (
        "inactive", "success")
    assert "weave" in podman.run(*exe, "ip", "-br", "link").stdout  # the bridge stays

    (sysconfig / "weave").unlink()  # a unit with a missing sysconfig file
    podman.run(*exe, "systemctl", "start", "weave-router", timeout=120)
    assert podman.run(*exe, "weave-router", "status", "targets").stdout.strip() == ""
    podman.run(*exe, "systemctl", "stop", "weave-router", timeout=60)
