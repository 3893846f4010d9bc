"""Persistent state of one router in sqlite (stdlib ``sqlite3``): what must survive a restart.

What it keeps:

* the peer identity and other small facts (``meta``: key -> text);
* the connection targets given by ``launch PEER...`` / ``connect`` / ``forget``
  (``targets``, in order), so ``launch --resume`` can use them;
* IPAM (migration 2): ``ipam_state`` (key -> blob: ``peer_name`` as UTF-8 text, ``ring``,
  ``paxos`` and ``custody`` as the allocator's own bytes) and ``ipam_owned`` (one row per container
  or other ident: its addresses as space-separated ``IP/PREFIXLEN`` and whether it is a
  container). :meth:`Store.apply_ipam` writes one
  :class:`~router.ipam.PersistBatch` in ONE transaction (all of it or nothing);
  :meth:`Store.load_ipam` gives back the :class:`~router.ipam.PersistedState` they sum to.

Later milestones add the DNS entries as further migrations.

Layout and rules:

* One file (``--db-path``, default ``/var/lib/weave-router/weave.db``), WAL journal, so a
  crash never leaves half a transaction behind.
* The schema version is sqlite's ``PRAGMA user_version``; :data:`MIGRATIONS` lists the
  steps, step ``i`` moves version ``i`` to ``i + 1``. Opening applies the missing steps in
  one transaction; opening an up-to-date file changes nothing. A file written by a newer
  weave-router (higher version than we know) is refused rather than misread.
* Every write is a short transaction. :meth:`Store.transaction` groups several writes into
  one (nested uses become savepoints).
* Problems opening the file (permissions, a directory, not a database, a newer schema) are
  :class:`~router.errors.ConfigError` naming ``--db-path``. A write refused after opening
  (disk full, I/O error) is a :class:`StoreError` naming the file, with the transaction
  rolled back: nothing of it is stored, and whoever wrote must not act as if it were
  (the IPAM service refuses requests until a write succeeds, ``docs/persistence.md``).

Synchronous and single-threaded: the daemon calls it from the trio thread between awaits;
every call is a few milliseconds at most.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from ipaddress import IPv4Interface
from pathlib import Path

from router.config import DEFAULT_PORT
from router.errors import ClosedError, ConfigError, LocalProtocolError
from router.ipam import OwnedRecord, PersistBatch, PersistedState
from router.mesh.names import PeerName

# Step i upgrades a database at user_version i to user_version i + 1. Append only: a
# released step is never edited, a fix is a new step.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE targets (position INTEGER PRIMARY KEY, address TEXT NOT NULL UNIQUE)",
    ),
    (
        "CREATE TABLE ipam_state (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
        "CREATE TABLE ipam_owned (ident TEXT PRIMARY KEY, cidrs TEXT NOT NULL, "
        "is_container INTEGER NOT NULL)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

BUSY_TIMEOUT_MS = 5000  # wait this long for another process holding the write lock
MAX_TARGETS = 10_000  # same bound as the connection maker's target list
MAX_META_VALUE = 64 * 1024  # bytes of one meta value
MAX_IPAM_BLOB = 16 * 1024 * 1024  # bytes of a stored ring or consensus state


class CorruptDatabase(ConfigError):
    """The file is not a weave-router database, or part of it cannot be read back. The
    router refuses to start (exit 2) and changes nothing; the message names the file and
    ``weave-router reset``."""


def corrupt(path: Path, what: str) -> CorruptDatabase:
    """The one-line error for a database that cannot be read back."""
    return CorruptDatabase(
        f"--db-path {path}: {what}. Nothing was changed; to start afresh (this peer then "
        f"forgets its name, targets and addresses) run `weave-router reset --db-path {path}`"
    )


def _tables(step: tuple[str, ...]) -> set[str]:
    return {m.group(1) for text in step if (m := re.match(r"CREATE TABLE (\w+)", text))}


class StoreError(ClosedError):
    """The database refused a write (disk full, I/O error): the data it held is not
    durable. Whoever needed it is unavailable until a write succeeds (API: 503)."""


SQLITE_IOERR, SQLITE_FULL = 10, 13  # primary result codes: the disk, not the user


def _disk_trouble(exc: BaseException) -> bool:
    """Whether opening failed for want of space or an I/O error (retrying may work), as
    opposed to a path or permission the user must fix."""
    if isinstance(exc, StoreError):
        return True
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (SQLITE_IOERR, SQLITE_FULL)


def _rollback(db: sqlite3.Connection) -> None:
    """End the failed transaction; sqlite may have rolled it back itself (disk full)."""
    if db.in_transaction:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")


class Store:
    """An open weave-router database. Create with :meth:`open`; :meth:`close` when done."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        """Wrap an already migrated connection; use :meth:`open` instead."""
        self._db: sqlite3.Connection | None = db
        self._path = path
        self._depth = 0  # transaction nesting

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating it and its parent directories if needed) and migrate the database."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--db-path: cannot create {path.parent}: {exc.strerror}") from exc
        if path.is_dir():
            raise ConfigError(f"--db-path: {path} is a directory")
        try:
            db = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"--db-path: cannot open {path}: {exc}") from exc
        store = cls(db, path)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            store._check_file()
            db.execute("PRAGMA journal_mode = WAL").fetchone()
            db.execute("PRAGMA synchronous = NORMAL")
            store._migrate()
            store.check_contents()
        except (sqlite3.OperationalError, StoreError) as exc:  # permissions, locks, I/O
            db.close()
            if _disk_trouble(exc):
                raise StoreError(f"cannot open {path}: {exc} (is the disk full?)") from exc
            raise ConfigError(f"--db-path: cannot use {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # not a database, damaged pages
            db.close()
            raise corrupt(path, f"not a readable weave-router database ({exc})") from exc
        except sqlite3.Error as exc:
            db.close()
            raise ConfigError(f"--db-path: cannot use {path}: {exc}") from exc
        except ConfigError:
            db.close()
            raise
        return store

    def _check_file(self) -> None:
        """CorruptDatabase unless the file is an intact sqlite database whose tables are
        those of its schema version (a newer version is a ConfigError: upgrade)."""
        db = self._conn()
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            text = " ".join(" ".join(problems).split())  # one line
            raise corrupt(self._path, f"the database is damaged ({text})")
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"--db-path: {self._path} has schema version {version}, newer than this "
                f"weave-router understands ({SCHEMA_VERSION}); upgrade weave-router"
            )
        found = {str(row[0]) for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        expected = set().union(*(_tables(step) for step in MIGRATIONS[:version]))
        if found != expected:
            have = ", ".join(sorted(found)) or "none"
            raise corrupt(self._path, f"not a weave-router database of schema version "
                                      f"{version} (its tables: {have})")

    def check_contents(self) -> None:
        """CorruptDatabase unless every stored record can be read back (peer name,
        targets, IPAM rows; the ring and consensus blobs are the IPAM service's to check,
        before it writes anything). Never changes anything."""
        from router.mesh.targets import parse_address  # only here: it pulls in the mesh

        raw = self._conn().execute("SELECT value FROM meta WHERE key = 'peer_name'").fetchone()
        try:
            if raw is not None:
                if not isinstance(raw[0], str):
                    raise ConfigError(f"invalid peer name {raw[0]!r}")
                PeerName.parse(raw[0])
            for position, address in self._conn().execute("SELECT * FROM targets"):
                if not isinstance(address, str):
                    raise ConfigError(f"invalid peer address {address!r} at {position}")
                parse_address(address, default_port=DEFAULT_PORT)
        except ConfigError as exc:
            raise corrupt(self._path, f"a stored record is unreadable: {exc}") from exc
        if self.schema_version() >= 2:  # the IPAM tables (read-only opens do not migrate)
            self.load_ipam()

    @classmethod
    def open_readonly(cls, path: Path) -> Store | None:
        """Open the database to read it, changing nothing (no migration); None if there is
        no file. CorruptDatabase (or ConfigError) as :meth:`open` if it is unreadable."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                 isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"--db-path: cannot open {path}: {exc}") from exc
        store = cls(db, path)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            store._check_file()
            store.check_contents()
        except sqlite3.OperationalError as exc:
            db.close()
            if _disk_trouble(exc):
                raise StoreError(f"cannot open {path}: {exc} (is the disk full?)") from exc
            raise ConfigError(f"--db-path: cannot read {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            db.close()
            raise corrupt(path, f"not a readable weave-router database ({exc})") from exc
        except ConfigError:
            db.close()
            raise
        return store

    @property
    def path(self) -> Path:
        """Where the database lives."""
        return self._path

    def schema_version(self) -> int:
        """The schema version of the open file (``PRAGMA user_version``)."""
        row = self._conn().execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        with self.transaction():
            current = self.schema_version()
            for step in MIGRATIONS[current:]:
                for statement in step:
                    self._conn().execute(statement)
            if current != SCHEMA_VERSION:
                self._conn().execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedError("the store is closed")
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them land, or none (an exception rolls back).

        A write sqlite refuses (disk full, I/O error, read-only file) is a
        :class:`StoreError` naming the file, after everything of the outermost
        transaction was rolled back.
        """
        db = self._conn()
        outer = self._depth == 0
        try:
            with self._nested(db):
                yield
        except sqlite3.Error as exc:
            if not outer:
                raise
            raise StoreError(f"cannot write {self._path}: {exc}") from exc

    @contextmanager
    def _nested(self, db: sqlite3.Connection) -> Iterator[None]:
        savepoint = f"sp{self._depth}"
        db.execute("BEGIN IMMEDIATE" if self._depth == 0 else f"SAVEPOINT {savepoint}")
        self._depth += 1
        try:
            yield
            if self._depth == 1:
                db.execute("COMMIT")
            else:
                db.execute(f"RELEASE {savepoint}")
        except BaseException:
            if self._depth == 1:
                _rollback(db)
            else:
                db.execute(f"ROLLBACK TO {savepoint}")
                db.execute(f"RELEASE {savepoint}")
            raise
        finally:
            self._depth -= 1

    def get_meta(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing any previous value)."""
        if len(value.encode()) > MAX_META_VALUE:
            raise LocalProtocolError(f"meta value for {key!r} is over {MAX_META_VALUE} bytes")
        if self.get_meta(key) == value:
            return  # nothing to write (a restart on a nearly full disk needs no space)
        with self.transaction():
            self._conn().execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def load_targets(self) -> list[str]:
        """The persisted connection targets, in the order they were saved."""
        rows = self._conn().execute("SELECT address FROM targets ORDER BY position").fetchall()
        return [str(row[0]) for row in rows]

    def save_targets(self, targets: Sequence[str]) -> None:
        """Replace the persisted targets with ``targets`` (duplicates keep the first)."""
        unique = list(dict.fromkeys(targets))
        if len(unique) > MAX_TARGETS:
            raise LocalProtocolError(f"{len(unique)} targets is over the limit of {MAX_TARGETS}")
        if self.load_targets() == unique:
            return
        with self.transaction():
            db = self._conn()
            db.execute("DELETE FROM targets")
            db.executemany(
                "INSERT INTO targets (position, address) VALUES (?, ?)", enumerate(unique)
            )

    def load_ipam(self) -> PersistedState | None:
        """The stored IPAM state; None if none was ever written (or it was reset away).

        A row that cannot be read back is a ConfigError naming ``--db-path``.
        """
        db = self._conn()
        state = dict(db.execute("SELECT key, value FROM ipam_state").fetchall())
        raw_name = state.get("peer_name")
        if raw_name is None:
            return None
        try:
            name = PeerName.parse(bytes(raw_name).decode())
            owned = {
                str(ident): OwnedRecord(
                    tuple(IPv4Interface(text) for text in str(cidrs).split()), bool(flag)
                )
                for ident, cidrs, flag in db.execute(
                    "SELECT ident, cidrs, is_container FROM ipam_owned ORDER BY ident"
                ).fetchall()
            }
        except (ValueError, UnicodeDecodeError, TypeError, ConfigError) as exc:
            raise corrupt(self._path, f"unreadable IPAM data ({exc})") from exc
        ring, paxos, custody = state.get("ring"), state.get("paxos"), state.get("custody")
        return PersistedState(
            peer_name=name,
            ring=None if ring is None else bytes(ring),
            paxos=None if paxos is None else bytes(paxos),
            owned=owned,
            custody=None if custody is None else bytes(custody),
        )

    def apply_ipam(self, batch: PersistBatch) -> None:
        """Write ``batch`` in one transaction: after a crash, all of it is there or none."""
        for blob in (batch.ring, batch.paxos, batch.custody):
            if blob is not None and len(blob) > MAX_IPAM_BLOB:
                raise LocalProtocolError(f"IPAM state of {len(blob)} bytes is over the limit")
        with self.transaction():
            db = self._conn()
            if batch.reset:
                db.execute("DELETE FROM ipam_state")
                db.execute("DELETE FROM ipam_owned")
            rows = [("peer_name", str(batch.peer_name).encode())]
            rows += [(key, blob) for key, blob in (("ring", batch.ring), ("paxos", batch.paxos),
                                                   ("custody", batch.custody))
                     if blob is not None]
            db.executemany(
                "INSERT INTO ipam_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rows,
            )
            gone = [(ident,) for ident, record in batch.owned.items() if record is None]
            db.executemany("DELETE FROM ipam_owned WHERE ident = ?", gone)
            db.executemany(
                "INSERT INTO ipam_owned (ident, cidrs, is_container) VALUES (?, ?, ?) "
                "ON CONFLICT (ident) DO UPDATE SET cidrs = excluded.cidrs, "
                "is_container = excluded.is_container",
                [
                    (ident, " ".join(str(c) for c in record.cidrs), int(record.is_container))
                    for ident, record in batch.owned.items()
                    if record is not None
                ],
            )

    def close(self) -> None:
        """Close the database; later calls raise ClosedError. Closing twice is fine."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
