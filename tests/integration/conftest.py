"""Fixtures of the integration tests: hosts in network namespaces running real routers.

* ``make_mesh(n_hosts, mtu=None, router_bin=None)`` builds a fresh
  :class:`~router.testing.netns.Mesh` (of the ``weave-router`` at ``router_bin``, default
  this venv's) for one test (torn down after it, even when it fails);
* ``running_mesh`` is one shared 4-host mesh for tests that only look: routers on
  host1..host3 (host2 and host3 launched with host1's address) in a full mesh, host4 without
  a router (a bystander for bad launches and misbehaving clients).

When a test fails, the router log of every host it used is attached to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from router.testing.netns import Mesh


class MeshFactory:
    """Builds meshes for one test and remembers them for teardown and failure reports."""

    def __init__(self) -> None:
        self.meshes: list[Mesh] = []

    def __call__(self, n_hosts: int = 3, mtu: int | None = None, *,
                 router_bin: Path | None = None) -> Mesh:
        mesh = Mesh.build(n_hosts=n_hosts, mtu=mtu, router_bin=router_bin)
        self.meshes.append(mesh)
        return mesh

    def close(self) -> None:
        errors: list[Exception] = []
        for mesh in self.meshes:
            try:
                mesh.close()
            except Exception as exc:  # close every mesh, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def make_mesh() -> Iterator[MeshFactory]:
    factory = MeshFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def running_mesh() -> Iterator[Mesh]:
    with Mesh.build(n_hosts=4) as mesh:
        mesh.launch_star(n=3)
        mesh.wait_full_mesh(n=3)
        yield mesh


def _meshes(item: pytest.Item) -> list[Mesh]:
    found: list[Mesh] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Mesh):
            found.append(value)
        elif isinstance(value, MeshFactory):
            found.extend(value.meshes)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for mesh in _meshes(item):
        for host in mesh.hosts:
            if host.log_file.exists():
                report.sections.append(
                    (f"router log {host.nickname} ({host.name})", host.log_tail(200))
                )
