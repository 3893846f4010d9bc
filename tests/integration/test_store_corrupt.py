"""``launch`` on a corrupt database prints one line naming the file and ``weave-router
reset``, exits non-zero and changes nothing (issue 9, item 4). A real router wrote the
database (a ring and allocations); then its ring blob, or a peer name, is damaged."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from router.testing.netns import Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]


def _allocate(host: Host, ident: str) -> str:
    proc = host.run(["curl", "-sS", "-f", "-X", "POST", "-d", "",
                     f"http://127.0.0.1:6784/ip/{ident}"], timeout=30.0)
    return proc.stdout.strip()


def _damage(path: Path, statement: str) -> None:
    db = sqlite3.connect(path)
    db.execute(statement)
    db.commit()
    db.close()


@pytest.mark.parametrize("statement, says", [
    ("UPDATE ipam_state SET value = x'deadbeef' WHERE key = 'ring'",
     "the stored IPAM ring state is unreadable"),
    ("UPDATE meta SET value = 'not-a-name' WHERE key = 'peer_name'",
     "invalid peer name 'not-a-name'"),
])
def test_launch_on_a_corrupt_database_is_one_line_and_changes_nothing(
        make_mesh: MakeMesh, statement: str, says: str) -> None:
    mesh = make_mesh(1)
    (h1,) = mesh.hosts
    h1.launch()
    addresses = [_allocate(h1, f"c{i}") for i in range(5)]
    assert len(set(addresses)) == 5, addresses
    h1.router("stop")
    h1.wait_stopped()
    _damage(h1.db_path, statement)
    before = hashlib.sha256(h1.db_path.read_bytes()).hexdigest()
    proc = h1.launch(check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert says in lines[0] and f"--db-path {h1.db_path}" in lines[0], lines[0]
    assert f"run `weave-router reset --db-path {h1.db_path}`" in lines[0], lines[0]
    h1.wait_stopped()
    assert hashlib.sha256(h1.db_path.read_bytes()).hexdigest() == before
    with closing(sqlite3.connect(h1.db_path)) as db:
        rows = db.execute("SELECT count(*) FROM ipam_owned").fetchone()
    assert rows == (5,), "allocations were deleted"
    h1.router("reset", "--db-path", str(h1.db_path))  # what the line says to do
    assert not h1.db_path.exists()
    h1.launch()
    h1.router("stop")
    h1.wait_stopped()
