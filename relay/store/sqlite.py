"""The embedded default store: one SQLite file in WAL mode with ``synchronous=FULL``.

FULL makes every commit reach the disk before ingest answers Clerk, which is the
promise "nothing acknowledged is ever lost". Each thread gets its own connection
(sqlite3 connections are not shareable across threads); writes that read first use
``BEGIN IMMEDIATE`` so two workers never claim the same event.

Writers queue on a per-file ``flock`` and the worker is woken through a local socket
(both in :mod:`relay.store.local`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from relay.errors import StoreError
from relay.models import (
    Event,
    NewEvent,
    Status,
)
from relay.store import ordering, sql
from relay.store.base import SQLStoreBase
from relay.store.committer import CommitClient, Committer
from relay.store.local import WakeSocket, WriterLock
from relay.store.sqlite_schema import apply_migrations

#: Free pages handed back to the file system after each purge batch.
VACUUM_PAGES = 2000

log = structlog.get_logger("relay.store")

#: Mode of the database file, and so of its -wal and -shm files (SQLite copies it).
PRIVATE_FILE_MODE = 0o600
_SIDE_FILES = ("-wal", "-shm")

#: WAL size (pages of 4 KiB) at which a ``sync_commits=False`` connection checkpoints.
RELAXED_CHECKPOINT_PAGES = 10_000


class SQLiteStore(SQLStoreBase):
    """Store on one SQLite file; safe for several threads and processes on one machine."""

    PH = "?"

    def __init__(self, path: str | os.PathLike[str], *, sync_commits: bool = True) -> None:
        self.path = Path(path)
        self.url_for_display = f"sqlite:///{self.path}"
        self._local = threading.local()
        self._wake = WakeSocket(self.path)
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writer = WriterLock(self.path.with_name(self.path.name + ".lock"))
        self._committer = CommitClient(self.path)
        self._synchronous = "FULL" if sync_commits else "NORMAL"

    @classmethod
    def from_url(cls, url: str, *, sync_commits: bool = True) -> SQLiteStore:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
        path = url.removeprefix("sqlite:///")
        if not path:
            raise ValueError("sqlite URL names no file")
        return cls(path, sync_commits=sync_commits)

    # -- connections -----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Created 0600 whatever the umask: SQLite gives the -wal and -shm files
                # the database file's mode, and all three hold users' data. Only when it
                # does not exist yet (O_EXCL): closing any descriptor of an open database
                # file drops every POSIX lock this process holds on it, including the
                # locks of other threads' connections, and their commits are then lost.
                with contextlib.suppress(FileExistsError):
                    os.close(
                        os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
                    )
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
                # Only on a new, empty file (it takes effect before the first table, and
                # setting it needs the write lock): purged space then goes back to the
                # file system (see _reclaim_space).
                if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                if self._synchronous == "NORMAL":
                    # Checkpoints are left to ingest's commits, which come far more often
                    # (SQLite's default is every 1,000 pages): the delivery worker runs at a
                    # low CPU priority and must not copy the WAL back while holding the
                    # writer lock ingest waits on. Measured +6 % ingest under relay serve.
                    conn.execute(f"PRAGMA wal_autocheckpoint={RELAXED_CHECKPOINT_PAGES}")
                conn.execute("PRAGMA busy_timeout=10000")
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._writer.held():
            yield from self._in_tx(conn, immediate)

    @staticmethod
    def _in_tx(conn: sqlite3.Connection, immediate: bool) -> Iterator[sqlite3.Connection]:
        try:
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _query(self, statement: str, params: Any = ()) -> list[Any]:
        try:
            return self._conn().execute(statement, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def group_committer(self) -> Committer:
        """The committer ``relay serve`` runs for this file (group commit for ingest)."""
        return Committer(self)

    def committer_lost(self) -> bool:
        """See :meth:`CommitClient.lost` (readiness reports it)."""
        return self._committer.lost()

    # -- verbs -------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._tx() as conn:
            apply_migrations(conn)
        self.warn_on_open_modes()

    def warn_on_open_modes(self) -> list[Path]:
        """Log a warning for each database file others may read (made before the relay
        created its files 0600, or copied in); returns them."""
        wide = []
        for path in (self.path, *(self.path.with_name(self.path.name + s) for s in _SIDE_FILES)):
            with contextlib.suppress(OSError):
                if path.stat().st_mode & 0o077:
                    wide.append(path)
                    log.warning(
                        "database_file_mode",
                        path=str(path),
                        mode=oct(path.stat().st_mode & 0o777),
                        fix=f"chmod 600 {path}",
                    )
        return wide

    def insert(self, event: NewEvent) -> bool:
        # Through the committer when one runs (it shares one fsync among concurrent
        # requests, and one wake-up); by ourselves when it does not or cannot answer.
        stored = self._committer.insert(event)
        if stored is None:
            stored = self.insert_many([event])[0]
            if stored and event.status == Status.PENDING:
                self.notify()
        return stored

    def insert_many(self, events: Sequence[NewEvent]) -> list[bool]:
        """Commit several events in one transaction; per event, whether it was new."""
        with self._tx() as conn:
            return [
                conn.execute(_INSERT, (*sql.insert_params(e), sql.pending_at(e))).rowcount == 1
                for e in events
            ]

    def _claim_candidates(
        self, conn: sqlite3.Connection, now_ms: int, batch: int
    ) -> tuple[int, list[Event]]:
        rows = conn.execute(_CANDIDATES, (now_ms, now_ms, batch)).fetchall()
        return len(rows), [sql.row_to_event(r) for r in rows]

    def _claim_answers(self, conn: sqlite3.Connection, seqs: list[int], now_ms: int) -> list[Any]:
        query = ordering.decision_query(f"IN ({_marks(len(seqs))})", "?")
        return conn.execute(query, (now_ms, *seqs)).fetchall()

    def _reclaim_space(self) -> None:
        conn = self._conn()
        with self._writer.held():
            try:
                # sqlite3_exec steps the pragma to its end (execute() would free one page
                # per call); it runs as its own transaction, outside any BEGIN.
                conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def notify(self, *, burst: bool = False) -> None:
        self._wake.send(burst=burst)

    def ingest_burst_s(self) -> float:
        return self._wake.burst_remaining_s()

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        return self._wake.listen(wake)

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()
        self._writer.close()
        self._wake.close()
        self._committer.close()


def _marks(n: int) -> str:
    return ", ".join("?" * n)


_INSERT = (
    f"INSERT INTO events ({sql.INSERT_COLUMNS}, next_attempt_at)"
    f" VALUES ({_marks(14)}) ON CONFLICT (id) DO NOTHING"
)
#: ``INDEXED BY``: without statistics (the relay never runs ANALYZE) SQLite prefers the
#: equality ``status = 'pending'`` of events_status_received over the partial claim
#: index's range, then reads every pending row and sorts them: 41 ms per claim at
#: 100 k events against 0.6 ms (tests/test_claim_plans.py). Naming the index makes the
#: plan independent of statistics, and a missing index an error rather than a scan.
_CANDIDATES = (
    f"SELECT {sql.EVENT_COLUMNS} FROM events INDEXED BY events_claim"
    " WHERE status = 'pending' AND next_attempt_at <= ?"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
    " ORDER BY next_attempt_at, seq LIMIT ?"
)
