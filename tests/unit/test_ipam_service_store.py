"""router/store.py's IPAM tables: batches round-trip, a batch is all-or-nothing (also
across kill -9), migration from a pre-IPAM file, unreadable data is a ConfigError."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import ConfigError
from router.ipam import OwnedRecord, PersistBatch, PersistedState
from router.mesh.names import PeerName
from router.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError

A, B = PeerName(1), PeerName(2)


def _record(*cidrs: str, container: bool = True) -> OwnedRecord:
    return OwnedRecord(tuple(IPv4Interface(c) for c in cidrs), container)


def test_a_fresh_database_has_no_ipam_state(tmp_path: Path) -> None:
    with Store.open(tmp_path / "weave.db") as store:
        assert store.load_ipam() is None


def test_batches_roundtrip_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    batches = [
        PersistBatch(A, reset=True, ring=b"ring-1", owned={"c1": _record("10.32.0.1/12")}),
        PersistBatch(A, paxos=b"paxos-1", owned={"c2": _record("10.32.0.2/12", "10.2.1.1/24")}),
        PersistBatch(A, ring=b"ring-2", owned={"c1": None, "10.9.9.9": _record(
            "10.9.9.9/24", container=False)}),
    ]
    model = PersistedState(A)
    with Store.open(path) as store:
        for batch in batches:
            store.apply_ipam(batch)
            model = model.apply(batch)
            assert store.load_ipam() == model
    with Store.open(path) as store:
        assert store.load_ipam() == model
    assert model.ring == b"ring-2" and model.paxos == b"paxos-1"
    assert set(model.owned) == {"c2", "10.9.9.9"}


def test_a_reset_batch_replaces_everything(tmp_path: Path) -> None:
    with Store.open(tmp_path / "weave.db") as store:
        store.apply_ipam(PersistBatch(A, ring=b"old", paxos=b"p", owned={"c": _record(
            "10.32.0.1/12")}))
        store.apply_ipam(PersistBatch(B, reset=True, owned={"d": _record("10.32.0.9/12")}))
        assert store.load_ipam() == PersistedState(B, owned={"d": _record("10.32.0.9/12")})


def test_a_failing_batch_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    with Store.open(path) as store:
        store.apply_ipam(PersistBatch(A, reset=True, ring=b"before", owned={
            "c1": _record("10.32.0.1/12")}))
        before = store.load_ipam()
    # Make the last write of the next batch fail, after its reset and ring were written.
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON ipam_owned WHEN NEW.ident = 'poison' "
               "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    db.commit()
    db.close()
    with Store.open(path) as store:
        batch = PersistBatch(A, reset=True, ring=b"after", paxos=b"p", owned={
            "c2": _record("10.32.0.2/12"), "poison": _record("10.32.0.3/12")})
        with pytest.raises(StoreError, match=r"^cannot write .*weave\.db: disk trouble$"):
            store.apply_ipam(batch)
        assert store.load_ipam() == before
        store.apply_ipam(PersistBatch(A, owned={"c3": _record("10.32.0.4/12")}))
        assert before is not None
        assert store.load_ipam() == before.apply(
            PersistBatch(A, owned={"c3": _record("10.32.0.4/12")}))


_WRITER = textwrap.dedent("""
    import sys
    from ipaddress import IPv4Interface
    from pathlib import Path
    from router.ipam import OwnedRecord, PersistBatch
    from router.mesh.names import PeerName
    from router.store import Store

    store = Store.open(Path(sys.argv[1]))
    i = 0
    while True:
        i += 1
        owned = {f"c{i}": OwnedRecord((IPv4Interface(f"10.32.{i // 250}.{i % 250 + 1}/12"),))}
        if i > 3:
            owned[f"c{i - 3}"] = None
        store.apply_ipam(PersistBatch(PeerName(1), ring=str(i).encode(), owned=owned))
        if i == 50:
            print("ready", flush=True)
""")


def _expected_after(n: int) -> PersistedState:
    state = PersistedState(A)
    for i in range(1, n + 1):
        owned: dict[str, OwnedRecord | None] = {
            f"c{i}": _record(f"10.32.{i // 250}.{i % 250 + 1}/12")}
        if i > 3:
            owned[f"c{i - 3}"] = None
        state = state.apply(PersistBatch(A, ring=str(i).encode(), owned=owned))
    return state


def test_kill_9_during_a_burst_of_batches_leaves_a_whole_prefix(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    Store.open(path).close()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                            env=env, cwd=root)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Store.open(path) as store:
        state = store.load_ipam()
    assert state is not None and state.ring is not None
    written = int(state.ring)
    assert written >= 50
    assert state == _expected_after(written)


def test_migration_from_a_pre_ipam_file_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO targets (position, address) VALUES (0, 'host2')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.load_targets() == ["host2"]
        assert store.load_ipam() is None
        store.apply_ipam(PersistBatch(A, reset=True))
        assert store.load_ipam() == PersistedState(A)


def test_unreadable_ipam_rows_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    with Store.open(path) as store:
        store.apply_ipam(PersistBatch(A, reset=True, owned={"c": _record("10.32.0.1/12")}))
    db = sqlite3.connect(path)
    db.execute("UPDATE ipam_owned SET cidrs = 'not-an-address'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"^--db-path .*: unreadable IPAM data .*reset"):
        Store.open(path)


_idents = st.sampled_from(["c1", "c2", "c3", "_x", "10.32.0.7"])
_cidrs = st.builds(lambda i, p: IPv4Interface((0x0A200000 + i, p)),
                   st.integers(0, 4095), st.sampled_from([12, 16, 24]))
_records = st.none() | st.builds(lambda cs, c: OwnedRecord(tuple(cs), c),
                                 st.lists(_cidrs, min_size=1, max_size=3), st.booleans())
_batches = st.builds(
    PersistBatch,
    peer_name=st.sampled_from([A, B]),
    reset=st.booleans(),
    ring=st.none() | st.binary(max_size=40),
    paxos=st.none() | st.binary(max_size=40),
    owned=st.dictionaries(_idents, _records, max_size=4),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_batches, min_size=1, max_size=8))
def test_store_matches_the_model_for_any_batches(
    tmp_path_factory: pytest.TempPathFactory, batches: list[PersistBatch]
) -> None:
    path = tmp_path_factory.mktemp("db") / "weave.db"
    model = PersistedState(batches[0].peer_name)
    with Store.open(path) as store:
        for batch in batches:
            store.apply_ipam(batch)
            model = model.apply(batch)
    with Store.open(path) as store:
        assert store.load_ipam() == model
