"""The PostgreSQL schema as numbered migrations, and the runner that applies them.

Each step runs once, in order, inside one transaction that holds an advisory lock,
so several relay instances starting at the same moment apply each step exactly
once and nobody sees a half-built schema. Add a step by appending to
:data:`MIGRATIONS`; never edit a step that has shipped.
"""

from __future__ import annotations

from typing import Any

import psycopg

from relay.errors import StoreError
from relay.store import sql

#: Advisory lock key (one bigint) held while migrating: "relaymig" in ASCII.
MIGRATION_LOCK_KEY = 0x72656C61796D6967
#: Longest wait, in seconds, for the events table's lock before a migration gives up.
#: While it waits, every ingest and claim queues behind it.
EVENTS_LOCK_WAIT_S = 5.0

#: ``(version, DDL)`` in the order they are applied.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE events (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            body BYTEA NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('pending', 'delivered', 'failed', 'skipped', 'superseded')),
            received_at BIGINT NOT NULL,
            object TEXT,
            entity_id TEXT,
            object_key TEXT,
            occurred_at BIGINT,
            updated_at BIGINT,
            instance_id TEXT,
            ord_at BIGINT NOT NULL,
            ord_upd BIGINT NOT NULL,
            attempt_count INTEGER NOT NULL DEFAULT 0,
            retry_step INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT,
            last_error TEXT,
            delivered_at BIGINT,
            force BOOLEAN NOT NULL DEFAULT FALSE,
            lease_owner TEXT,
            lease_expires_at BIGINT
        );
        CREATE INDEX events_due ON events (status, next_attempt_at);
        CREATE INDEX events_object ON events (object_key, status);
        CREATE INDEX events_received ON events (received_at);
        CREATE INDEX events_entity ON events (entity_id);
        CREATE TABLE attempts (
            id BIGSERIAL PRIMARY KEY,
            event_id TEXT NOT NULL,
            at BIGINT NOT NULL,
            target TEXT NOT NULL,
            status_code INTEGER,
            duration_ms DOUBLE PRECISION NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT
        );
        CREATE INDEX attempts_event ON attempts (event_id, id);
        CREATE TABLE workers (id TEXT PRIMARY KEY, last_seen BIGINT NOT NULL);
        """,
    ),
    (
        2,
        # Claims walk pending events in claim order and stop after ``limit``, and
        # the "older pending event of this object?" probe finds the object's oldest
        # pending event first: each claim costs O(limit), not O(backlog).
        """
        CREATE INDEX events_pending_due ON events (next_attempt_at, seq)
            WHERE status = 'pending';
        CREATE INDEX events_pending_object ON events (object_key, ord_at, ord_upd, seq)
            WHERE status = 'pending';
        CREATE INDEX events_leased_object ON events (object_key, lease_expires_at)
            WHERE status = 'pending' AND lease_expires_at IS NOT NULL;
        """,
    ),
    (
        3,
        # Flat claims (see relay.store.ordering). Leased rows leave events_pending_due
        # (a lease moves next_attempt_at to its expiry). Counts per status: each row
        # change appends a delta (no hot row for concurrent ingest to queue on); a
        # reader folds the deltas into event_counts (Store.counts).
        """
        CREATE INDEX events_object_order ON events (object_key, status, ord_at, ord_upd, seq);
        CREATE INDEX events_status_seq ON events (status, seq);
        CREATE INDEX events_status_received ON events (status, received_at);
        DROP INDEX events_due;
        DROP INDEX events_object;
        CREATE TABLE event_counts (status TEXT PRIMARY KEY, n BIGINT NOT NULL);
        INSERT INTO event_counts (status, n)
            SELECT s, (SELECT count(*) FROM events WHERE status = s)
            FROM unnest(ARRAY['pending', 'delivered', 'failed', 'skipped', 'superseded']) s;
        CREATE TABLE event_count_deltas (
            id BIGSERIAL PRIMARY KEY, status TEXT NOT NULL, delta INTEGER NOT NULL
        );
        CREATE FUNCTION relay_count_events() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO event_count_deltas (status, delta) VALUES (NEW.status, 1);
            ELSIF TG_OP = 'DELETE' THEN
                INSERT INTO event_count_deltas (status, delta) VALUES (OLD.status, -1);
            ELSE
                INSERT INTO event_count_deltas (status, delta)
                    VALUES (OLD.status, -1), (NEW.status, 1);
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER events_count_insert AFTER INSERT OR DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION relay_count_events();
        CREATE TRIGGER events_count_update AFTER UPDATE OF status ON events
            FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
            EXECUTE FUNCTION relay_count_events();
        CREATE TABLE targets (
            target TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            since BIGINT NOT NULL,
            reason TEXT,
            last_success_at BIGINT,
            next_probe_at BIGINT,
            probe_interval_ms BIGINT NOT NULL DEFAULT 0,
            probe_count BIGINT NOT NULL DEFAULT 0
        );
        """,
    ),
    (
        4,
        # Issue 13. body_conflicts: bodies that arrived under an already stored svix-id but
        # differ from it (the first is kept and delivered; these are shown on the event).
        # console_sessions: signed-in console sessions by the hash of their id, so that
        # signing out ends every copy of the cookie.
        """
        CREATE TABLE body_conflicts (
            id BIGSERIAL PRIMARY KEY,
            event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
            at BIGINT NOT NULL,
            body_sha256 TEXT NOT NULL
        );
        CREATE INDEX body_conflicts_event ON body_conflicts (event_id, id);
        CREATE TABLE console_sessions (
            id TEXT PRIMARY KEY,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        );
        """,
    ),
    (
        5,
        # relay reconcile: its run history, and the lease that lets exactly one worker
        # run the scheduled reconcile (relay/store/runs.py).
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at BIGINT NOT NULL
        );
        CREATE TABLE reconcile_runs (
            id BIGSERIAL PRIMARY KEY,
            trigger TEXT NOT NULL,
            dry_run BOOLEAN NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('requested', 'running', 'done', 'failed')),
            requested_at BIGINT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT,
            summary TEXT,
            error TEXT
        );
        CREATE INDEX reconcile_runs_status ON reconcile_runs (status, id);
        """,
    ),
    (
        6,
        # The oldest-pending gauge (/metrics, /readyz, the console): min(received_at)
        # over pending rows. With only events_received and events_status_received the
        # planner walks events_received from the oldest event and filters, stepping
        # over every delivered event before the first pending one (a 100 k store: 41 %
        # of the table per scrape; tests/test_claim_plans.py). A partial index holds
        # pending rows only, so its first entry is the answer, whatever the statistics.
        """
        CREATE INDEX events_pending_received ON events (received_at) WHERE status = 'pending';
        """,
    ),
    (
        7,
        # No statistics on events.status. Its distribution turns over with every outage
        # (nothing pending on a quiet day, most of the table during a long outage), so
        # whatever ANALYZE saw is wrong at the moment it matters. Statistics taken when
        # nothing was pending made the pending-only indexes look like one row each, and
        # the claim probed each candidate's object by reading all of
        # events_pending_received (a drain fell from ~450 to ~100 events/s;
        # tests/test_claim_plans.py). Without them the planner takes the default
        # selectivity for a status and the plans follow the indexes' columns.
        # SET STATISTICS 0 only stops collecting: the type change (to the same type)
        # is what drops the statistics already taken, and the trigger that names the
        # column has to step aside for it (under the table lock apply_migrations takes
        # first, so no update runs without the trigger). The type change revalidates
        # the status CHECK and rebuilds the four pending-only indexes: on 1 M events,
        # 100 k of them pending, the step held the table 1.3 s; more pending, longer.
        """
        DROP TRIGGER events_count_update ON events;
        ALTER TABLE events ALTER COLUMN status TYPE TEXT;
        ALTER TABLE events ALTER COLUMN status SET STATISTICS 0;
        CREATE TRIGGER events_count_update AFTER UPDATE OF status ON events
            FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
            EXECUTE FUNCTION relay_count_events();
        """,
    ),
)


def apply_migrations(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply every step not yet recorded, in one transaction; returns the versions applied.

    ``conn`` must not be in autocommit mode: the lock, the DDL and the bookkeeping
    commit together or not at all.
    """
    with conn.transaction():
        # Taken before the bookkeeping table exists: two instances creating it at
        # once would otherwise race on the catalog (duplicate pg_type entry).
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        (now_ms,) = conn.execute(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        ).fetchall()[0]
        # Each step's DDL has no parameters, so several statements are allowed in it.
        # Every step so far changes events: on a live store its strongest lock comes
        # first, because a step's CREATE INDEX takes a weaker one, and a later step
        # upgrading it would wait for a claim that waits for it (a deadlock).
        return sql.apply_steps(
            conn,
            MIGRATIONS,
            conn.execute,
            ph="%s",
            now_ms=now_ms,
            before_first=lambda: _lock_events(conn),
        )


def _lock_events(conn: psycopg.Connection[Any]) -> None:
    """Take the events table's strongest lock, if it exists, waiting at most
    EVENTS_LOCK_WAIT_S: a long transaction on the table (a report, a stuck session)
    fails the migration, which changed nothing and can run again, instead of stalling
    ingest behind it."""
    (exists,) = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchall()[0]
    if not exists:
        return
    (before,) = conn.execute("SELECT current_setting('lock_timeout')").fetchall()[0]
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true)", (f"{int(EVENTS_LOCK_WAIT_S * 1000)}ms",)
    )
    try:
        conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    except psycopg.errors.LockNotAvailable as exc:
        raise StoreError(
            f"migration not applied: the events table stayed in use for"
            f" {EVENTS_LOCK_WAIT_S:g} s (a long transaction holds it; see pg_stat_activity);"
            " nothing was changed, run it again"
        ) from exc
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (before,))
