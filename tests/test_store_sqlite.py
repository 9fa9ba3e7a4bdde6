"""The SQLite store against the shared store contract, plus SQLite-only behaviour."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from structlog.testing import capture_logs

from harness.factories import make_event
from relay.store import local, open_store
from relay.store.sqlite import SQLiteStore
from tests.support.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    """Every contract test, on a real SQLite file."""

    def test_pragmas_are_durable(self, store: SQLiteStore) -> None:
        """WAL journal with synchronous=FULL: a commit is on disk before ingest answers."""
        conn = store._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    def test_worker_store_commits_without_waiting_for_the_disk(self, tmp_path: Path) -> None:
        """sync_commits=False (the delivery worker's store): synchronous=NORMAL on its own
        connections, which a process crash cannot undo; ingest's stay FULL."""
        relaxed = open_store(f"sqlite:///{tmp_path / 'relay.db'}", sync_commits=False)
        assert isinstance(relaxed, SQLiteStore)
        assert relaxed._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        relaxed.close()

    def test_insert_is_visible_to_another_connection(self, store: SQLiteStore) -> None:
        """An acknowledged insert is committed, not held in an open transaction."""
        store.insert(make_event(event_id="msg_1"))
        other = sqlite3.connect(store.path)
        assert other.execute("SELECT count(*) FROM events").fetchone()[0] == 1
        other.close()

    def test_migrate_is_idempotent(self, store: SQLiteStore) -> None:
        """Running migrate on every start changes nothing the second time."""
        store.insert(make_event(event_id="msg_1"))
        store.migrate()
        assert store.get("msg_1") is not None

    def test_heartbeat_forgets_workers_silent_for_a_week(self, store: SQLiteStore) -> None:
        """Each process start registers a worker id; week-old ones are pruned, not kept."""
        week_ms = 7 * 86400 * 1000
        store.heartbeat("old", now_ms=1_000)
        store.heartbeat("recent", now_ms=week_ms)
        store.heartbeat("new", now_ms=week_ms + 1_001)
        rows = store._conn().execute("SELECT id FROM workers ORDER BY id").fetchall()
        assert rows == [("new",), ("recent",)]

    def test_a_burst_wake_up_holds_for_a_moment_on_the_listening_side(
        self, store: SQLiteStore
    ) -> None:
        """notify(burst=True) wakes the listener and marks a burst there; a plain
        wake-up does not."""
        import threading

        woke = threading.Event()
        stop = store.listen(woke.set)
        try:
            ingest = SQLiteStore(store.path)
            ingest.notify()
            assert woke.wait(5)
            assert store.ingest_burst_s() == 0.0
            woke.clear()
            ingest.notify(burst=True)
            assert woke.wait(5)
            assert 0.0 < store.ingest_burst_s() <= local.BURST_HOLD_S
            assert ingest.ingest_burst_s() == 0.0  # only the listener hears it
            woke.clear()
            ingest.notify()  # the committer's next plain wake-up: the burst is over
            assert woke.wait(5)
            assert store.ingest_burst_s() == 0.0
        finally:
            stop()

    def test_notify_wakes_a_listener(self, store: SQLiteStore) -> None:
        """notify() from one store object wakes listen() on another for the same file."""
        import threading

        woke = threading.Event()
        stop = store.listen(woke.set)
        try:
            SQLiteStore(store.path).notify()
            assert woke.wait(5)
        finally:
            stop()


def test_a_store_made_before_numbered_migrations_is_upgraded_in_place(tmp_path: Path) -> None:
    """A file from before ``relay_schema_migrations`` (its schema recorded as one row in
    ``schema_version``) keeps its events and gets every step recorded once."""
    from relay.store.sqlite_schema import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0][1])
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.commit()
    conn.close()
    old = SQLiteStore(path)
    old.migrate()  # step 1 again, on the tables it already has
    assert old.insert(make_event(event_id="evt_old"))
    old.close()
    store = SQLiteStore(path)
    store.migrate()  # and a second start applies nothing
    versions = [r[0] for r in store._query("SELECT version FROM relay_schema_migrations")]
    assert versions == [v for v, _ in MIGRATIONS]
    assert store.get("evt_old") is not None
    store.close()


def test_a_purge_gives_the_space_back_to_the_file_system(tmp_path: Path) -> None:
    """A new store uses incremental auto-vacuum: after purging most events the file is
    smaller, not a file of free pages (the 2.3 GB-after-purge problem)."""
    from relay.models import Attempt, Outcome, Status

    store = SQLiteStore(tmp_path / "relay.db")
    store.migrate()
    padding = "x" * 4000
    for i in range(2000):
        store.insert(make_event(event_id=f"msg_{i:05d}", entity_id=f"user_{i}", note=padding))
    while batch := store.claim("w", now_ms=1_800_000_000_000, lease_ms=60_000, limit=500):
        done = Attempt(1_800_000_000_000, "t", 200, 1.0, "delivered")
        store.complete_many("w", [(e.id, done, Outcome(Status.DELIVERED)) for e in batch])
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = (tmp_path / "relay.db").stat().st_size
    assert store.purge(older_than_ms=1_800_000_000_000) == 2000
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = (tmp_path / "relay.db").stat().st_size
    assert store._query("PRAGMA auto_vacuum")[0][0] == 2  # incremental
    assert after < before / 4, (before, after)
    store.close()


def test_database_files_are_created_readable_by_their_owner_only(tmp_path: Path) -> None:
    """relay.db, -wal and -shm are 0600 even under a permissive umask: they hold user data."""
    previous = os.umask(0o022)
    try:
        store = SQLiteStore(tmp_path / "private" / "relay.db")
        store.migrate()
        store.insert(make_event())
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "private").glob("relay.db*")
        }
        store.close()
    finally:
        os.umask(previous)
    assert {"relay.db", "relay.db-wal", "relay.db-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def test_a_database_others_can_read_is_warned_about_at_start(tmp_path: Path) -> None:
    """A file made before (or copied in) with a wider mode is named in a warning."""
    path = tmp_path / "relay.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    store = SQLiteStore(path)
    with capture_logs() as logs:
        store.migrate()
    store.close()
    warned = [e for e in logs if e["event"] == "database_file_mode"]
    # SQLite gave the -wal and -shm files the database's mode: all three are named.
    assert [(e["path"], e["mode"]) for e in warned] == [
        (f"{path}{suffix}", "0o644") for suffix in ("", "-wal", "-shm")
    ]
    assert warned[0]["log_level"] == "warning"


def test_a_new_thread_connection_keeps_the_other_connections_locks(tmp_path: Path) -> None:
    """Opening a connection in a second thread must not open and close the database file:
    closing any descriptor of it drops every POSIX lock the process holds on it. Another
    process closing its last connection then believes it is alone, checkpoints and
    deletes the WAL, and every later commit of this process goes to a deleted file (the
    worker's outcome writes were lost this way)."""
    import subprocess
    import sys
    import threading

    db = tmp_path / "relay.db"
    store = SQLiteStore(db)
    store.migrate()
    assert store.insert(make_event(event_id="msg_before"))
    opened = threading.Thread(target=store._conn)  # another thread's first connection
    opened.start()
    opened.join()
    count = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        " print(c.execute('SELECT count(*) FROM events').fetchone()[0]); c.close()"
    )
    run = [sys.executable, "-c", count, str(db)]
    assert subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip() == "1"
    assert store.insert(make_event(event_id="msg_after"))  # after that process closed
    assert subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip() == "2"
    store.close()
