"""SQLite persistence of a fake-IP pool: implements :class:`tunkit.proxy.fakeip.PoolStore`.

One database file holds one pool: a ``meta`` table (prefix, cursor) and an ``entries`` table
(domain primary key, ip unique, last_used).  Every :meth:`SqlitePoolStore.write` is one
transaction, so a crash leaves either the old or the new state.  WAL journaling keeps writes
cheap.  Errors opening or reading the file become :class:`ConfigError` with the path; errors
writing it (disk full, file removed) become :class:`PoolStoreError`.

The connection may be used from any thread (``check_same_thread=False``; the sqlite3 module is
built in serialized mode), but not concurrently: a transaction must not interleave with
another call, so callers serialize their calls (the proxy service holds its state lock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from tunkit.errors import ConfigError, TunkitError
from tunkit.proxy.fakeip import PoolEntry, StoredPool

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    domain TEXT PRIMARY KEY,
    ip TEXT NOT NULL UNIQUE,
    last_used REAL NOT NULL
);
"""


class PoolStoreError(TunkitError):
    """The fake-IP state file could not be written."""


class SqlitePoolStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise ConfigError(f"{self.path}: cannot open fake-IP state: {err}") from None

    def close(self) -> None:
        self._db.close()

    def load(self) -> StoredPool | None:
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if "prefix" not in meta:
                return None
            rows = self._db.execute("SELECT domain, ip, last_used FROM entries").fetchall()
            cursor = int(meta.get("cursor", "0"))
        except (sqlite3.Error, ValueError) as err:
            raise ConfigError(f"{self.path}: unreadable fake-IP state: {err}") from None
        return StoredPool(str(meta["prefix"]), cursor,
                          [PoolEntry(str(d), str(i), float(t)) for d, i, t in rows])

    def reset(self, prefix: str) -> None:
        try:
            with self._transaction():
                self._db.execute("DELETE FROM entries")
                self._db.execute("DELETE FROM meta")
                self._db.execute("INSERT INTO meta VALUES ('prefix', ?), ('cursor', '0')",
                                 (prefix,))
        except sqlite3.Error as err:
            raise PoolStoreError(f"{self.path}: cannot reset fake-IP state: {err}") from None

    def write(self, upserts: Sequence[PoolEntry], deletes: Sequence[str], cursor: int) -> None:
        try:
            self._write(upserts, deletes, cursor)
        except sqlite3.Error as err:
            raise PoolStoreError(f"{self.path}: cannot write fake-IP state: {err}") from None

    def _write(self, upserts: Sequence[PoolEntry], deletes: Sequence[str], cursor: int) -> None:
        with self._transaction():
            self._db.executemany("DELETE FROM entries WHERE domain = ?", [(d,) for d in deletes])
            # An address may move to a new domain; drop its old row first (ip is UNIQUE).
            self._db.executemany("DELETE FROM entries WHERE ip = ? AND domain != ?",
                                 [(e.ip, e.domain) for e in upserts])
            self._db.executemany(
                "INSERT INTO entries (domain, ip, last_used) VALUES (?, ?, ?) "
                "ON CONFLICT(domain) DO UPDATE SET ip = excluded.ip, last_used = excluded.last_used",
                [(e.domain, e.ip, e.last_used) for e in upserts],
            )
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('cursor', ?)", (str(cursor),))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
