"""The SQLite schema as numbered migrations, and the runner that applies them.

The same shape as :mod:`relay.store.postgres_schema`: each step runs once, in order,
inside the caller's ``BEGIN IMMEDIATE`` transaction (so two processes starting at
once apply each step exactly once), and is recorded in ``relay_schema_migrations``.
Add a step by appending to :data:`MIGRATIONS`; never edit a step that has shipped.

Step 1 uses ``IF NOT EXISTS`` because stores made before migrations were numbered
already hold it (they recorded it as a single row in ``schema_version``).
"""

from __future__ import annotations

import sqlite3
import time

#: ``(version, DDL)`` in the order they are applied.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    object TEXT,
    entity_id TEXT,
    object_key TEXT,
    occurred_at INTEGER,
    updated_at INTEGER,
    instance_id TEXT,
    ord_at INTEGER NOT NULL,
    ord_upd INTEGER NOT NULL,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    retry_step INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error TEXT,
    delivered_at INTEGER,
    force INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS events_due ON events (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS events_object ON events (object_key, status);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE INDEX IF NOT EXISTS events_entity ON events (entity_id);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    target TEXT NOT NULL,
    status_code INTEGER,
    duration_ms REAL NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_event ON attempts (event_id, id);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, last_seen INTEGER NOT NULL);
        """,
    ),
    # Step 2 is reserved (outage recovery, issue 15); steps are applied by number.
    (
        3,
        # Issue 13. body_conflicts: bodies that arrived under an already stored svix-id but
        # differ from it (the first is kept and delivered; these are shown on the event;
        # purged with it by SQLiteStore.purge, no trigger: this runner splits on ";").
        # console_sessions: signed-in console sessions by the hash of their id, so that
        # signing out ends every copy of the cookie.
        """
CREATE TABLE body_conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    body_sha256 TEXT NOT NULL
);
CREATE INDEX body_conflicts_event ON body_conflicts (event_id, id);
CREATE TABLE console_sessions (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
)
        """,
    ),
)


def apply_migrations(conn: sqlite3.Connection) -> list[int]:
    """Apply every step not yet recorded; returns the versions applied.

    ``conn`` must already be inside a write transaction (``BEGIN IMMEDIATE``).
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS relay_schema_migrations"
        " (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
    )
    done = {r[0] for r in conn.execute("SELECT version FROM relay_schema_migrations")}
    applied = []
    for version, ddl in MIGRATIONS:
        if version in done:
            continue
        for statement in filter(str.strip, ddl.split(";")):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO relay_schema_migrations (version, applied_at) VALUES (?, ?)",
            (version, int(time.time() * 1000)),
        )
        applied.append(version)
    return applied
