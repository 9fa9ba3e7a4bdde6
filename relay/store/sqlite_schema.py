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

from relay.store import sql

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
    (
        2,
        # Flat claims (see relay.store.ordering): the claim index holds heads and rows
        # not yet looked at, never parked followers; each per-object probe is one
        # range seek. Counts per status are kept by triggers, so /metrics and the
        # admin counts read five rows instead of counting the table.
        """
CREATE INDEX events_claim ON events (next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX events_object_order ON events (object_key, status, ord_at, ord_upd, seq);
CREATE INDEX events_leased ON events (object_key, lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
CREATE INDEX events_status_seq ON events (status, seq);
CREATE INDEX events_status_received ON events (status, received_at);
DROP INDEX events_due;
DROP INDEX events_object;
CREATE TABLE event_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO event_counts (status, n)
    SELECT s.status, (SELECT count(*) FROM events WHERE status = s.status)
    FROM (SELECT 'pending' AS status UNION ALL SELECT 'delivered' UNION ALL SELECT 'failed'
          UNION ALL SELECT 'skipped' UNION ALL SELECT 'superseded') s;
CREATE TRIGGER events_count_insert AFTER INSERT ON events BEGIN
    UPDATE event_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER events_count_update AFTER UPDATE OF status ON events
    WHEN OLD.status <> NEW.status BEGIN
    UPDATE event_counts SET n = n - 1 WHERE status = OLD.status;
    UPDATE event_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER events_count_delete AFTER DELETE ON events BEGIN
    UPDATE event_counts SET n = n - 1 WHERE status = OLD.status;
END;
CREATE TABLE targets (
    target TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since INTEGER NOT NULL,
    reason TEXT,
    last_success_at INTEGER,
    next_probe_at INTEGER,
    probe_interval_ms INTEGER NOT NULL DEFAULT 0,
    probe_count INTEGER NOT NULL DEFAULT 0
)
        """,
    ),
    (
        3,
        # Issue 13. body_conflicts: bodies that arrived under an already stored svix-id but
        # differ from it (the first is kept and delivered; these are shown on the event;
        # purged with it by Store.purge).
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
    (
        4,
        # relay reconcile: its run history, and the lease that lets exactly one worker
        # run the scheduled reconcile (relay/store/runs.py).
        """
CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE reconcile_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    status TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    summary TEXT,
    error TEXT
);
CREATE INDEX reconcile_runs_status ON reconcile_runs (status, id);
        """,
    ),
)


def apply_migrations(conn: sqlite3.Connection) -> list[int]:
    """Apply every step not yet recorded; returns the versions applied.

    ``conn`` must already be inside a write transaction (``BEGIN IMMEDIATE``).
    """

    def run(ddl: str) -> None:
        for statement in _statements(ddl):
            conn.execute(statement)

    return sql.apply_steps(conn, MIGRATIONS, run, ph="?", now_ms=int(time.time() * 1000))


def _statements(ddl: str) -> list[str]:
    """Split a step into statements; a trigger's body (``BEGIN ... END``) stays whole."""
    out: list[str] = []
    current: list[str] = []
    for part in ddl.split(";"):
        current.append(part)
        text = ";".join(current)
        if "BEGIN" in text.upper().split() and not text.rstrip().upper().endswith("END"):
            continue
        if text.strip():
            out.append(text.strip())
        current = []
    return out
