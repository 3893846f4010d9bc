"""router/store.py: persistence across reopen, migrations, transactions, bad paths."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import ClosedError, ConfigError
from router.store import SCHEMA_VERSION, CorruptDatabase, Store


def test_open_creates_parent_directories_and_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "weave.db"
    with Store.open(path) as store:
        store.set_meta("peer_name", "5a:b7:04:1c:2d:8e")
        store.save_targets(["192.168.48.14", "host2:6783"])
    assert path.is_file()
    with Store.open(path) as store:
        assert store.get_meta("peer_name") == "5a:b7:04:1c:2d:8e"
        assert store.get_meta("missing") is None
        assert store.load_targets() == ["192.168.48.14", "host2:6783"]


def test_set_meta_replaces_the_value(tmp_path: Path) -> None:
    with Store.open(tmp_path / "weave.db") as store:
        store.set_meta("k", "one")
        store.set_meta("k", "two")
        assert store.get_meta("k") == "two"


def test_save_targets_replaces_keeps_order_and_drops_duplicates(tmp_path: Path) -> None:
    with Store.open(tmp_path / "weave.db") as store:
        store.save_targets(["c", "a", "b", "a"])
        assert store.load_targets() == ["c", "a", "b"]
        store.save_targets(["z"])
        assert store.load_targets() == ["z"]
        store.save_targets([])
        assert store.load_targets() == []


def test_migrations_are_idempotent_and_the_file_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    for _ in range(3):
        with Store.open(path) as store:
            assert store.schema_version() == SCHEMA_VERSION
            store.save_targets([*store.load_targets(), f"h{len(store.load_targets())}"])
    with Store.open(path) as store:
        assert store.load_targets() == ["h0", "h1", "h2"]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(ConfigError, match=r"^--db-path: .*newer"):
        Store.open(path)


def test_transaction_rolls_back_everything_on_error(tmp_path: Path) -> None:
    with Store.open(tmp_path / "weave.db") as store:
        store.set_meta("k", "before")
        with pytest.raises(RuntimeError), store.transaction():
            store.set_meta("k", "after")
            store.save_targets(["x"])
            raise RuntimeError("boom")
        assert store.get_meta("k") == "before"
        assert store.load_targets() == []


def test_nested_transaction_rolls_back_only_the_inner_part(tmp_path: Path) -> None:
    with Store.open(tmp_path / "weave.db") as store:
        with store.transaction():
            store.set_meta("outer", "1")
            with pytest.raises(RuntimeError), store.transaction():
                store.set_meta("inner", "1")
                raise RuntimeError("boom")
            store.set_meta("outer2", "1")
        assert store.get_meta("outer") == "1"
        assert store.get_meta("outer2") == "1"
        assert store.get_meta("inner") is None


def test_committed_transaction_is_visible_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    with Store.open(path) as store, store.transaction():
        store.set_meta("a", "1")
        store.save_targets(["t"])
    with Store.open(path) as store:
        assert (store.get_meta("a"), store.load_targets()) == ("1", ["t"])


def test_parent_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"^--db-path: cannot create"):
        Store.open(blocker / "weave.db")


def test_directory_as_db_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--db-path: .* is a directory"):
        Store.open(tmp_path)


def test_corrupt_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    path.write_bytes(b"this is not an sqlite database, just some bytes" * 100)
    with pytest.raises(CorruptDatabase, match=r"^--db-path .*: not a readable weave-router "
                       r"database \(file is not a database\)\. Nothing was changed.*reset"):
        Store.open(path)


def test_use_after_close_raises_closed_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "weave.db")
    store.close()
    store.close()  # twice is fine
    with pytest.raises(ClosedError):
        store.get_meta("k")
    with pytest.raises(ClosedError):
        store.save_targets([])


_targets = st.builds(
    lambda host, port: host if port is None else f"{host}:{port}",
    st.ip_addresses(v=4).map(str) | st.from_regex(r"\A[a-z][a-z0-9]{0,20}(\.[a-z]{2,5})?\Z"),
    st.none() | st.integers(1, 65535),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(_targets, min_size=1, max_size=20))
def test_targets_roundtrip(tmp_path_factory: pytest.TempPathFactory, targets: list[str]) -> None:
    path = tmp_path_factory.mktemp("db") / "weave.db"
    with Store.open(path) as store:
        store.save_targets(targets)
    with Store.open(path) as store:
        assert store.load_targets() == list(dict.fromkeys(targets))
