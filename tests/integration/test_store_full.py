"""A real router whose ``--db-path`` is on a 1 MiB tmpfs that fills (issue 9, item 3).

While the disk is full, allocations are refused (503, one line) and so is a retry for the
same container; ``status`` says why. Once there is room again allocations are answered,
and after a restart every address that was answered is still held by its container and
nothing is given out twice.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from router.testing.netns import Host, Mesh
from router.testing.tmpfs import tiny_tmpfs

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]
DISK_SIZE = 1024 * 1024  # bytes
MAX_TRIES = 300  # allocations until the full disk must have refused one


def _api(host: Host, method: str, path: str) -> tuple[int, str]:
    """``curl`` the control API in ``host``: (HTTP status, body)."""
    proc = host.run(["curl", "-sS", "-X", method, "-d", "", "-w", "\n%{http_code}",
                     f"http://127.0.0.1:6784{path}"], check=False, timeout=30.0)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def _allocate(host: Host, ident: str) -> tuple[int, str]:
    return _api(host, "POST", f"/ip/{ident}")


def test_full_disk_never_answers_what_a_restart_forgets(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(1)
    (h1,) = mesh.hosts
    with tiny_tmpfs(DISK_SIZE) as disk:
        db = str(disk.path / "weave.db")
        h1.launch("--db-path", db)
        answered: dict[str, str] = {}
        for i in range(3):
            code, body = _allocate(h1, f"before-{i}")
            assert code == 200, (code, body)
            answered[f"before-{i}"] = body
        disk.fill()
        refused = None
        for i in range(MAX_TRIES):
            code, body = _allocate(h1, f"full-{i}")
            if code == 200:
                answered[f"full-{i}"] = body
                continue
            refused = f"full-{i}"
            assert code == 503 and "\n" not in body and db in body, (code, body)
            break
        assert refused is not None, f"{MAX_TRIES} allocations on a full disk all answered 200"
        code, body = _allocate(h1, refused)  # the same container tries again
        assert code == 503, (code, body)
        container = mesh.add_bare_container(h1)
        attach = container.attach(check=False)  # as a user types it: one line, non-zero
        assert attach.returncode != 0, attach.stdout
        assert attach.stderr.strip().count("\n") == 0 and db in attach.stderr, attach.stderr
        assert f"Status: suspended: cannot write {db}" in h1.status("ipam") + h1.status()
        code, body = _api(h1, "GET", f"/ip/{refused}")
        assert code != 200, "a refused allocation is looked up as held"
        h1.router("stop")  # stopped while suspended: what was not durable was never answered
        h1.wait_stopped()
        disk.fill()  # what the stop freed (its write-ahead log) too
        # A restart on the full disk: it runs and refuses (its files are still there), or,
        # with no room even to open the database, fails in one line and exit 1 (retried).
        full = h1.launch("--db-path", db, check=False)
        if full.returncode == 0:
            assert _allocate(h1, refused)[0] == 503
            h1.router("stop")
        else:
            lines = full.stderr.strip().splitlines()
            assert full.returncode == 1 and len(lines) == 1 and db in lines[0], full.stderr
        h1.wait_stopped()
        disk.release()
        h1.launch("--db-path", db)
        code, body = _allocate(h1, refused)
        assert code == 200, (code, body)
        answered[refused] = body
        for i in range(3):
            code, body = _allocate(h1, f"after-{i}")
            assert code == 200, (code, body)
            answered[f"after-{i}"] = body
        h1.router("stop")
        h1.wait_stopped()
        h1.launch("--db-path", db)
        for ident, cidr in answered.items():
            assert _api(h1, "GET", f"/ip/{ident}") == (200, cidr), ident
        fresh = []
        for i in range(10):
            code, body = _allocate(h1, f"new-{i}")
            assert code == 200, (code, body)
            fresh.append(body)
        given = [*answered.values(), *fresh]
        assert len(set(given)) == len(given), f"an address was given twice: {given}"
        h1.router("stop")
        h1.wait_stopped()
