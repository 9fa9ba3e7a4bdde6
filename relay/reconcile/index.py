"""A scratch index on disk, so reconciling a million users needs a page of memory.

Comparing Clerk with Convex needs, for every Clerk object, Convex's version of it,
and afterwards every Convex row that Clerk did not list. Neither side can be sorted
by id (Clerk lists users by creation time), so a merge of the two streams is not
possible; holding either side in a dict would grow with the instance. Instead
Convex's ``(id, version)`` rows and the ids Clerk listed go into a throwaway SQLite
file (deleted when closed), and each Clerk page asks it about its own ids only.
This is not the relay's store: nothing here needs to survive a crash.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from relay.reconcile.convex_state import StateRow

#: Ids per ``IN (...)`` and per page of unseen rows (below SQLite's 32,766 variables).
CHUNK = 500


class ReconcileIndex:
    """Convex's rows and the Clerk ids seen, per kind (``users``, ...)."""

    def __init__(self, directory: str | None = None) -> None:
        fd, name = tempfile.mkstemp(prefix="relay-reconcile-", suffix=".db", dir=directory)
        os.close(fd)
        self.path = Path(name)
        self._db = sqlite3.connect(name, isolation_level=None)
        # Scratch data: no journal, no fsync; a crash just leaves a file to delete.
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -8192;
            CREATE TABLE convex (
                kind TEXT NOT NULL, id TEXT NOT NULL, updated_at INTEGER NOT NULL,
                org_id TEXT, PRIMARY KEY (kind, id)) WITHOUT ROWID;
            CREATE TABLE clerk (kind TEXT NOT NULL, id TEXT NOT NULL,
                PRIMARY KEY (kind, id)) WITHOUT ROWID;
            """
        )

    def close(self) -> None:
        """Close and delete the file."""
        self._db.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def add_convex(self, kind: str, rows: Iterable[StateRow]) -> int:
        """Record Convex's live rows (soft-deleted ones count as absent); how many."""
        live = [(kind, r.clerk_id, r.updated_at_ms, r.org_id) for r in rows if not r.deleted]
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO convex VALUES (?, ?, ?, ?)", live)
        return len(live)

    def convex_versions(self, kind: str, ids: Sequence[str]) -> dict[str, int]:
        """Convex's ``updatedAt`` for those of ``ids`` it holds."""
        found: dict[str, int] = {}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                self._db.execute(
                    f"SELECT id, updated_at FROM convex WHERE kind = ? AND id IN ({marks})",  # noqa: S608 - only placeholders
                    (kind, *chunk),
                )
            )
        return found

    def mark_seen(self, kind: str, ids: Sequence[str]) -> set[str]:
        """Record ids Clerk listed; returns those not seen before (offset paging can
        list an object twice when objects are created during the run)."""
        new: set[str] = set()
        with self._transaction():
            for oid in ids:
                cur = self._db.execute("INSERT OR IGNORE INTO clerk VALUES (?, ?)", (kind, oid))
                if cur.rowcount:
                    new.add(oid)
        return new

    def unseen(self, kind: str) -> Iterator[list[StateRow]]:
        """Convex rows Clerk did not list, a chunk at a time (keyset paging by id)."""
        after = ""
        while True:
            rows = self._db.execute(
                """SELECT c.id, c.updated_at, c.org_id FROM convex AS c
                   WHERE c.kind = ? AND c.id > ? AND NOT EXISTS
                     (SELECT 1 FROM clerk AS k WHERE k.kind = c.kind AND k.id = c.id)
                   ORDER BY c.id LIMIT ?""",
                (kind, after, CHUNK),
            ).fetchall()
            if not rows:
                return
            yield [StateRow(oid, upd, org_id=org) for oid, upd, org in rows]
            after = rows[-1][0]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
