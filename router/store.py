"""Persistent state of one router in sqlite (stdlib ``sqlite3``): what must survive a restart.

Now: the peer identity and other small facts (``meta``: key -> text) and the connection
targets given by ``launch PEER...`` / ``connect`` / ``forget`` (``targets``, in order), so
``launch --resume`` can use them. Later milestones add the IPAM ring and allocations and
the DNS entries as further migrations.

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
  :class:`~router.errors.ConfigError` naming ``--db-path``. Failures after opening (disk
  full, I/O error) propagate as ``sqlite3.Error``: they are not the user's fault and the
  daemon treats them as a crash.

Synchronous and single-threaded: the daemon calls it from the trio thread between awaits;
every call is a few milliseconds at most.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from router.errors import ClosedError, ConfigError, LocalProtocolError

# Step i upgrades a database at user_version i to user_version i + 1. Append only: a
# released step is never edited, a fix is a new step.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE targets (position INTEGER PRIMARY KEY, address TEXT NOT NULL UNIQUE)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

BUSY_TIMEOUT_MS = 5000  # wait this long for another process holding the write lock
MAX_TARGETS = 10_000  # same bound as the connection maker's target list
MAX_META_VALUE = 64 * 1024  # bytes of one meta value


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
            db.execute("PRAGMA journal_mode = WAL").fetchone()
            db.execute("PRAGMA synchronous = NORMAL")
            store._migrate()
        except sqlite3.Error as exc:
            db.close()
            raise ConfigError(f"--db-path: cannot use {path}: {exc}") from exc
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
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"--db-path: {self._path} has schema version {current}, newer than this "
                    f"weave-router understands ({SCHEMA_VERSION}); upgrade weave-router"
                )
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
        """Group writes: all of them land, or none (an exception rolls back)."""
        db = self._conn()
        savepoint = f"sp{self._depth}"
        db.execute("BEGIN IMMEDIATE" if self._depth == 0 else f"SAVEPOINT {savepoint}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                db.execute("ROLLBACK")
            else:
                db.execute(f"ROLLBACK TO {savepoint}")
                db.execute(f"RELEASE {savepoint}")
            raise
        self._depth -= 1
        db.execute("COMMIT" if self._depth == 0 else f"RELEASE {savepoint}")

    def get_meta(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing any previous value)."""
        if len(value.encode()) > MAX_META_VALUE:
            raise LocalProtocolError(f"meta value for {key!r} is over {MAX_META_VALUE} bytes")
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
        with self.transaction():
            db = self._conn()
            db.execute("DELETE FROM targets")
            db.executemany(
                "INSERT INTO targets (position, address) VALUES (?, ?)", enumerate(unique)
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
