"""One container, one entry, whatever form names it (issue 10 item 10): a real router in
a host namespace attaches a container namespace by PID and by name; ``ps``, ``ps PATH``,
``ps NAME``, ``ps PID`` and ``detach PATH`` all see the one container, across a restart
and across a registry written before (several forms of one namespace).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from router.containers.service import REGISTRY_KEY, ipam_ident
from router.store import Store
from router.testing.netns import BareContainer, Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]
RANGE = "10.47.0.0/16"


def _sleeper(container: BareContainer) -> subprocess.Popen[str]:
    """A process in the container's namespace, for attach by PID (killed on teardown)."""
    return container.popen(["sleep", "600"])


def _ps(host: Host, *containers: str) -> list[list[str]]:
    return [line.split() for line in host.router("ps", *containers).stdout.splitlines()]


def _ip_of(host: Host, ident: str) -> str:
    return host.run(["curl", "-s", f"http://127.0.0.1:6784/ip/{ident}"], timeout=15).stdout


def _one_router(make_mesh: MakeMesh) -> tuple[Host, BareContainer, str]:
    mesh = make_mesh(1)
    host = mesh.hosts[0]
    host.launch("--ipalloc-range", RANGE)
    container = mesh.add_bare_container(host)
    return host, container, str(_sleeper(container).pid)


def test_attach_by_pid_then_name_is_one_container(make_mesh: MakeMesh) -> None:
    host, container, pid = _one_router(make_mesh)
    path = f"/run/netns/{container.name}"
    by_pid = host.router("attach", pid).stdout.split()
    by_name = host.router("attach", container.name).stdout.split()
    assert by_pid == by_name and len(by_pid) == 1  # one namespace, one address
    listed = _ps(host)
    assert len(listed) == 1, listed
    name, mac, cidr = listed[0]
    assert name == container.name and cidr.split("/")[0] == by_pid[0]
    for form in (path, container.name, pid):
        assert _ps(host, form) == [[form, mac, cidr]], form  # named as the user named it
    host.router("detach", path)
    assert _ps(host) == [] and _ps(host, container.name) == []
    assert "ethwe" not in container.links()


def test_conflicts_name_the_container_not_its_ident(make_mesh: MakeMesh) -> None:
    host, _, pid = _one_router(make_mesh)
    [addr] = host.router("attach", pid).stdout.split()
    second = host.mesh.add_bare_container(host)
    failed = host.router("attach", f"ip:{addr}/16", second.name, check=False)
    assert failed.returncode != 0
    assert pid in failed.stderr and "netns-" not in failed.stderr, failed.stderr


def test_one_entry_survives_a_restart_and_an_old_registry(make_mesh: MakeMesh) -> None:
    host, container, pid = _one_router(make_mesh)
    [addr] = host.router("attach", pid).stdout.split()
    host.router("attach", container.name)
    ident = ipam_ident(f"/run/netns/{container.name}")
    assert addr in _ip_of(host, ident)
    host.router("stop")
    host.wait_stopped()
    # As the version before one-entry-per-namespace wrote it: both forms, one ident.
    store = Store.open(host.db_path)
    try:
        registry = json.loads(store.get_meta(REGISTRY_KEY) or "{}")
        assert list(registry) == [container.name]
        registry = {pid: {"path": f"/proc/{pid}/ns/net", "ident": ident}, **registry}
        store.set_meta(REGISTRY_KEY, json.dumps(registry))
    finally:
        store.close()
    host.launch("--ipalloc-range", RANGE)
    listed = _ps(host)
    assert [row[0] for row in listed] == [container.name], listed
    assert listed[0][2].split("/")[0] == addr  # the allocation kept its address
    assert addr in _ip_of(host, ident)
    assert host.router("attach", pid).stdout.split() == [addr]
    assert [row[0] for row in _ps(host)] == [pid]  # the latest form names it now
    assert _ps(host, container.name)[0][2].split("/")[0] == addr
