"""A database that cannot be read back stops the start with one line naming the file and
``weave-router reset``, and nothing in it is changed (issue 9, item 4).

Each case corrupts a real database written by a real IPAM service (a ring, 40
allocations, a peer name and targets), then starts as the daemon does (open the store,
settle the peer name, start IPAM) and checks the error and the file, byte for byte.
"""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import trio

from router.daemon import settle_name
from router.ipam import AllocatorConfig, Seed
from router.ipam.service import IpamService
from router.mesh.gossip import GossipRouter
from router.mesh.names import PeerName
from router.store import CorruptDatabase, Store

A = PeerName(1)
UNIVERSE = IPv4Network("10.32.0.0/12")
ALLOCATIONS = 40


def _ipam(store: Store, name: PeerName = A) -> IpamService:
    gossip = GossipRouter(name, now=trio.current_time(), rng=random.Random(1))
    return IpamService(AllocatorConfig(name, UNIVERSE, mode=Seed((name,))), store,
                       register=gossip.register, rng=random.Random(1))


async def _good_database(path: Path) -> None:
    with Store.open(path) as store:
        settle_name(store, A)
        store.save_targets(["192.168.7.2", "192.168.7.3:6783"])
        ipam = _ipam(store)
        for i in range(ALLOCATIONS):
            await ipam.allocate(f"c{i}")


def _sql(*statements: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        db = sqlite3.connect(path)
        for statement in statements:
            db.execute(statement)
        db.commit()
        db.close()
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])  # the last page is gone


def _damage_a_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096 + 8: 4096 + 200] = b"\xa5" * 192  # the second page's cells
    path.write_bytes(bytes(data))


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "not a database": (lambda p: p.write_bytes(b"not sqlite at all " * 300),
                       r"not a readable weave-router database"),
    "truncated": (_truncate, r"not a readable weave-router database|damaged"),
    "damaged page": (_damage_a_page, r"not a readable weave-router database|damaged"),
    "peer identity": (_sql("UPDATE meta SET value = 'zz:zz' WHERE key = 'peer_name'"),
                      r"invalid peer name 'zz:zz'"),
    "peer identity as a blob": (_sql("UPDATE meta SET value = x'00ff' WHERE key = "
                                     "'peer_name'"), r"invalid peer name"),
    "targets": (_sql("INSERT INTO targets VALUES (7, 'no such host!')"),
                r"invalid peer address 'no such host!'"),
    "allocation rows": (_sql("UPDATE ipam_owned SET cidrs = '10.32.0.999/12' WHERE ident = "
                             "'c5'"), r"unreadable IPAM data"),
    "allocation row types": (_sql("UPDATE ipam_owned SET cidrs = x'0102' WHERE ident = 'c6'"),
                             r"unreadable IPAM data"),
    "ipam peer name": (_sql("UPDATE ipam_state SET value = x'ff' WHERE key = 'peer_name'"),
                       r"unreadable IPAM data"),
    "ring blob": (_sql("UPDATE ipam_state SET value = x'deadbeef' WHERE key = 'ring'"),
                  r"the stored IPAM ring state is unreadable"),
    "consensus blob": (_sql("INSERT INTO ipam_state VALUES ('paxos', x'a1')"),
                       r"the stored IPAM consensus state is unreadable"),
    "older schema version": (_sql("PRAGMA user_version = 1"),
                             r"not a weave-router database of schema version 1"),
    "missing table": (_sql("DROP TABLE ipam_owned"),
                      r"not a weave-router database of schema version 2"),
    "another program's database": (_sql("PRAGMA user_version = 0"),
                                   r"not a weave-router database of schema version 0"),
}


def _digest(path: Path) -> tuple[str, int]:
    """The database file's sha256, and the bytes its write-ahead log holds."""
    wal = Path(f"{path}-wal")
    return (hashlib.sha256(path.read_bytes()).hexdigest(),
            wal.stat().st_size if wal.exists() else 0)


async def _start(path: Path) -> None:
    """The daemon's start order: store, peer name, IPAM."""
    with Store.open(path) as store:
        name = settle_name(store, None)
        _ipam(store, name)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_corrupt_database_refuses_to_start_and_changes_nothing(
        tmp_path: Path, case: str) -> None:
    path = tmp_path / "weave.db"
    await _good_database(path)
    damage, says = CASES[case]
    damage(path)
    before = _digest(path)
    with pytest.raises(CorruptDatabase) as caught:
        await _start(path)
    line = str(caught.value)
    assert "\n" not in line, line
    assert line.startswith(f"--db-path {path}: "), line
    assert f"run `weave-router reset --db-path {path}`" in line, line
    assert re.search(says, line), line
    assert _digest(path) == before, "the corrupt database was changed"


async def test_the_good_database_starts_with_every_allocation(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    await _good_database(path)
    with Store.open(path) as store:
        assert settle_name(store, None) == A
        assert len(_ipam(store).idents()) == ALLOCATIONS
