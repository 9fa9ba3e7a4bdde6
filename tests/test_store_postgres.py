"""The PostgreSQL store against the shared store contract, plus Postgres-only behaviour."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from harness.factories import make_event
from harness.postgres_server import fresh_schema
from relay.errors import StoreError
from relay.models import EventFilter, Outcome, Status
from relay.store import open_store, postgres, postgres_schema, sql
from relay.store.postgres import PostgresStore
from relay.store.postgres_schema import MIGRATIONS
from tests.support.store_contract import LEASE, NOW, StoreContract, attempt

#: Advisory lock the stalling trigger waits on (outside the store's own key space).
GATE_KEY = 4242
WAITING_ON_GATE = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_url)
    s.migrate()
    yield s
    s.close()


def _wait_until(predicate: Callable[[], object], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    """Every contract test, on a real PostgreSQL server, plus what only Postgres does."""

    def test_insert_is_visible_to_another_connection(
        self, store: PostgresStore, pg_url: str
    ) -> None:
        """An acknowledged insert is committed, not held in an open transaction."""
        store.insert(make_event(event_id="msg_1"))
        with psycopg.connect(pg_url) as other:
            assert other.execute("SELECT count(*) FROM events").fetchone() == (1,)

    def test_migrate_is_idempotent(self, store: PostgresStore, pg_url: str) -> None:
        """A second migrate keeps the data and records each version once."""
        store.insert(make_event(event_id="msg_1"))
        store.migrate()
        assert store.get("msg_1") is not None
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT version FROM relay_schema_migrations ORDER BY 1")
            assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]

    def test_an_upgraded_store_forgets_its_statistics_of_status(self, pg_url: str) -> None:
        """Migration 7 drops the statistics of events.status an existing store already
        has and stops ANALYZE from taking new ones (they are stale by the next outage;
        tests/test_claim_plans.py), and the status counts still follow every change."""
        status_stats = (
            "SELECT count(*) FROM pg_stats WHERE schemaname = current_schema()"
            " AND tablename = 'events' AND attname = 'status'"
        )
        triggers = (
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE tgrelid = 'events'::regclass AND NOT tgisinternal ORDER BY tgname"
        )
        with psycopg.connect(pg_url) as conn, conn.transaction():
            sql.apply_steps(conn, MIGRATIONS[:6], conn.execute, ph="%s", now_ms=NOW)
        store = PostgresStore(pg_url)
        try:
            for i in range(20):
                store.insert(make_event(event_id=f"msg_{i}", status=Status.FAILED))
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("ANALYZE events")
                assert conn.execute(status_stats).fetchone() == (1,)
                before = conn.execute(triggers).fetchall()
                store.migrate()
                assert conn.execute(status_stats).fetchone() == (0,)
                assert conn.execute(triggers).fetchall() == before
                conn.execute("ANALYZE events")
                assert conn.execute(status_stats).fetchone() == (0,)
            store.replay(EventFilter(ids=("msg_0", "msg_1")), now_ms=NOW)
            assert store.counts()["failed"] == 18 and store.counts()["pending"] == 2
        finally:
            store.close()

    def test_a_migration_gives_up_on_a_table_a_long_transaction_holds(
        self, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Waiting for the events table's lock queues every ingest behind the wait: a
        migration waits at most EVENTS_LOCK_WAIT_S, fails saying why and changes nothing,
        and applies once the table is free."""
        monkeypatch.setattr(postgres_schema, "EVENTS_LOCK_WAIT_S", 0.3)
        version = "SELECT max(version) FROM relay_schema_migrations"
        with psycopg.connect(pg_url) as conn, conn.transaction():
            sql.apply_steps(conn, MIGRATIONS[:6], conn.execute, ph="%s", now_ms=NOW)
        # A backstop, so that without the migration's own limit this fails, not hangs.
        store = PostgresStore(f"{pg_url}%20-clock_timeout%3D10000")
        try:
            with psycopg.connect(pg_url, autocommit=True) as look:
                with psycopg.connect(pg_url) as report:  # a transaction left open on events
                    report.execute("SELECT count(*) FROM events").fetchall()
                    with pytest.raises(StoreError, match="events table stayed in use"):
                        store.migrate()
                    assert look.execute(version).fetchone() == (6,)
                store.migrate()
                assert look.execute(version).fetchone() == (MIGRATIONS[-1][0],)
        finally:
            store.close()

    def test_scripts_plan_their_statements_as_the_plan_tests_assume(
        self, store: PostgresStore
    ) -> None:
        """A worker script's prepared statements run under PLAN_SETTINGS (generic plans,
        no hash or merge joins): what tests/test_claim_plans.py explains is what runs."""
        names = [name for name, _ in postgres.PLAN_SETTINGS]
        asked = ", ".join(f"current_setting('{name}')" for name in names)
        with store._session() as conn:
            [rows] = store._script(conn, [(f"SELECT {asked} WHERE %s", (True,))])
        assert rows == [tuple(value for _, value in postgres.PLAN_SETTINGS)]

    def test_concurrent_migrations_apply_each_step_once(self, pg_url: str) -> None:
        """Several instances migrating one empty schema at once all succeed, steps run once."""
        stores = [PostgresStore(pg_url) for _ in range(4)]
        barrier = threading.Barrier(len(stores))

        def migrate(s: PostgresStore) -> None:
            s.ping()  # open the pool first so the migrations, not connects, race
            barrier.wait(timeout=10)
            s.migrate()

        try:
            with ThreadPoolExecutor(len(stores)) as pool:
                for future in [pool.submit(migrate, s) for s in stores]:
                    future.result(timeout=30)
            with psycopg.connect(pg_url) as conn:
                rows = conn.execute("SELECT version FROM relay_schema_migrations ORDER BY 1")
                assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]
            assert stores[0].insert(make_event(event_id="msg_1"))
            assert stores[1].get("msg_1") is not None
        finally:
            for s in stores:
                s.close()

    def test_notify_wakes_a_listener_on_another_connection(
        self, store: PostgresStore, pg_url: str
    ) -> None:
        """notify() from one store object wakes listen() on another (another machine)."""
        woke = threading.Event()
        stop = store.listen(woke.set)
        other = PostgresStore(pg_url)
        try:
            assert not woke.is_set()
            other.notify()
            assert woke.wait(5)
        finally:
            stop()
            other.close()

    def test_listener_reconnects_after_losing_its_connection(
        self, store: PostgresStore, pg_url: str
    ) -> None:
        """A killed LISTEN connection is replaced; the listener wakes once, then hears again."""
        woke = threading.Event()
        stop = store.listen(woke.set)
        try:
            with psycopg.connect(pg_url, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query = 'LISTEN relay_events' AND pid <> pg_backend_pid()"
                ).fetchall()
            assert killed == [(True,)]
            assert woke.wait(10), "no wake-up after reconnecting"
            woke.clear()
            store.notify()
            assert woke.wait(5)
        finally:
            stop()

    def test_claim_sees_a_lease_another_claim_has_not_committed(
        self, store: PostgresStore, pg_url: str
    ) -> None:
        """An older event inserted while a newer one is being claimed is not leased beside it.

        A trigger stalls the first claim after it chose ``msg_new`` but before it
        commits; meanwhile an older event of the same object arrives and a second
        worker claims. Its snapshot shows ``msg_new`` unleased, so without the
        per-object lock and re-check it would lease ``msg_old`` too.
        """
        store.insert(make_event("user.deleted", event_id="msg_new", timestamp=NOW + 2))
        with psycopg.connect(pg_url, autocommit=True) as gate:
            gate.execute(
                "CREATE FUNCTION stall_lease() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.lease_owner = 'slow' THEN"
                f" PERFORM pg_advisory_lock({GATE_KEY}); PERFORM pg_advisory_unlock({GATE_KEY});"
                " END IF; RETURN NEW; END $$"
            )
            gate.execute(
                "CREATE TRIGGER stall BEFORE UPDATE ON events"
                " FOR EACH ROW EXECUTE FUNCTION stall_lease()"
            )
            gate.execute("SELECT pg_advisory_lock(%s)", (GATE_KEY,))
            with ThreadPoolExecutor(2) as pool:
                slow = pool.submit(store.claim, "slow", now_ms=NOW, lease_ms=LEASE, limit=5)
                assert _wait_until(lambda: gate.execute(WAITING_ON_GATE).fetchone() == (1,)), (
                    "the first claim never reached the trigger"
                )
                store.insert(make_event("user.deleted", event_id="msg_old", timestamp=NOW + 1))
                fast = pool.submit(store.claim, "fast", now_ms=NOW, lease_ms=LEASE, limit=5)
                # A design that serialises claims would wait here; one that skips returns.
                _wait_until(fast.done, timeout_s=1.0)
                gate.execute("SELECT pg_advisory_unlock(%s)", (GATE_KEY,))
                assert [e.id for e in slow.result(timeout=10)] == ["msg_new"]
                assert fast.result(timeout=10) == []
        assert store.claim("third", now_ms=NOW, lease_ms=LEASE, limit=5) == []
        store.complete("msg_new", "slow", attempt(), Outcome(Status.DELIVERED))
        assert [e.id for e in store.claim("third", now_ms=NOW, lease_ms=LEASE, limit=5)] == [
            "msg_old"
        ]

    def test_parallel_claimers_keep_each_object_in_flight_once(
        self, pg_url: str, store: PostgresStore
    ) -> None:
        """Workers on separate pools, claiming while older events keep arriving, never
        hold two events of one object at once and deliver every event exactly once."""
        objects, per_object, workers = 10, 8, 6
        # Newest first, objects interleaved: almost every arrival is older than
        # what is already pending or in flight for its object.
        arrivals = [
            make_event(
                "user.deleted", event_id=f"msg_{o}_{t}", entity_id=f"user_{o}", timestamp=NOW + t
            )
            for t in reversed(range(per_object))
            for o in range(objects)
        ]
        lock = threading.Lock()
        in_flight: set[str] = set()
        violations: list[str] = []
        delivered: list[str] = []
        inserted = threading.Event()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            # Slow lease writes widen the window between a claim's snapshot and its
            # commit, as a database a few milliseconds away would.
            conn.execute(
                "CREATE FUNCTION slow_lease() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.lease_owner IS NOT NULL THEN PERFORM pg_sleep(0.003); END IF;"
                " RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER slow BEFORE UPDATE ON events"
                " FOR EACH ROW EXECUTE FUNCTION slow_lease()"
            )

        def insert_all() -> None:
            for ev in arrivals:
                store.insert(ev)
            inserted.set()

        def work(worker_id: str) -> None:
            mine = PostgresStore(pg_url)  # its own pool, as on another machine
            try:
                while True:
                    batch = mine.claim(worker_id, now_ms=NOW, lease_ms=LEASE, limit=3)
                    if not batch:
                        if inserted.is_set() and mine.counts()["pending"] == 0:
                            return
                        continue
                    for ev in batch:
                        assert ev.object_key is not None
                        with lock:
                            if ev.object_key in in_flight:
                                violations.append(ev.id)
                            in_flight.add(ev.object_key)
                    time.sleep(0.002)  # the delivery, during which the object is in flight
                    for ev in batch:
                        with lock:  # before complete(): the next claim may follow at once
                            in_flight.discard(ev.object_key)
                            delivered.append(ev.id)
                        assert mine.complete(ev.id, worker_id, attempt(), Outcome(Status.DELIVERED))
            finally:
                mine.close()

        with ThreadPoolExecutor(workers + 1) as pool:
            futures = [pool.submit(work, f"w{i}") for i in range(workers)]
            futures.append(pool.submit(insert_all))
            for future in futures:
                future.result(timeout=120)
        assert violations == []
        assert sorted(delivered) == sorted(ev.id for ev in arrivals)

    def test_claims_and_completions_survive_their_prepared_statements_going_away(
        self, pg_url: str
    ) -> None:
        """A worker's claim and completion statements are prepared once per connection.
        If they disappear (``DEALLOCATE ALL`` by someone else, a pooler swapping the
        session), the next claim and completion prepare them again and succeed, without
        an error for the caller."""
        s = PostgresStore(pg_url, max_connections=1)  # one session: the one we empty
        try:
            s.migrate()
            for i in range(3):
                s.insert(make_event(event_id=f"msg_{i}", entity_id=f"user_{i}"))
            [first] = s.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=1)
            assert s.complete(first.id, "w1", attempt(), Outcome(Status.DELIVERED))
            with s._tx() as conn:
                prepared = conn.execute(
                    "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'relay%'"
                ).fetchone()
                assert prepared is not None and prepared[0] >= 4
                conn.execute("DEALLOCATE ALL")
            claimed = s.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)
            assert sorted(e.id for e in claimed) == ["msg_1", "msg_2"]
            with s._tx() as conn:
                conn.execute("DEALLOCATE ALL")
            for event in claimed:
                assert s.complete(event.id, "w1", attempt(), Outcome(Status.DELIVERED))
            assert s.counts()["delivered"] == 3
            # The way it happens by itself: psycopg prepares a statement it runs often
            # (counts, six times), and after a rolled-back transaction deallocates every
            # prepared statement of the session, ours with its own.
            s.insert(make_event(event_id="msg_3", entity_id="user_3"))
            for _ in range(6):
                s.counts()
            with pytest.raises(StoreError):
                s._query("SELECT 1 / 0")
            [last] = s.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)
            assert s.complete(last.id, "w1", attempt(), Outcome(Status.DELIVERED))
            assert s.counts()["delivered"] == 4
        finally:
            s.close()

    def test_a_claim_never_leases_a_candidate_its_decision_did_not_answer_for(
        self, store: PostgresStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The candidates reach the decision through a transaction-local setting; if that
        hand-off ever came back empty, a keyed candidate would look like a free head.
        The claim fails closed instead (nothing leased), and the next one leases it."""
        store.insert(make_event(event_id="msg_1", entity_id="user_1"))
        monkeypatch.setattr(postgres, "_DECISION", "SELECT 1::bigint WHERE %s::bigint < 0")
        with pytest.raises(StoreError, match="no decision"):
            store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)
        monkeypatch.undo()
        assert [e.id for e in store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)] == ["msg_1"]

    def test_sessions_read_committed_whatever_the_database_defaults_to(self, pg_url: str) -> None:
        """The claim's decision and the completion's unpark rely on a fresh snapshot per
        statement: the store's sessions are READ COMMITTED even when the URL (or the
        role, or the database) asks for another isolation level."""
        asks = "options=-c%20default_transaction_isolation%3Dserializable%20"
        s = PostgresStore(pg_url.replace("options=", asks))
        try:
            with s._tx() as conn:
                row = conn.execute("SHOW transaction_isolation").fetchone()
            assert row == ("read committed",)
        finally:
            s.close()

    def test_open_store_picks_postgres(self, pg_url: str) -> None:
        """open_store() maps a postgresql:// URL to this backend."""
        s = open_store(pg_url)
        try:
            assert isinstance(s, PostgresStore)
            s.ping()
        finally:
            s.close()

    def test_worker_store_commits_without_waiting_for_the_disk(self, pg_url: str) -> None:
        """sync_commits=False (the delivery worker) sets synchronous_commit=off for its own
        sessions only; the default store leaves the server's setting alone."""

        def setting(s: PostgresStore) -> tuple[str, str]:
            with s._tx() as conn:
                row = conn.execute(
                    "SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'"
                ).fetchone()
            s.close()
            assert row is not None
            return row[0], row[1]

        relaxed = open_store(pg_url, sync_commits=False)
        assert isinstance(relaxed, PostgresStore)
        assert setting(relaxed) == ("off", "client")
        # ... beside the URL's own options (the tests' schema travels in them)
        relaxed = PostgresStore(pg_url, sync_commits=False)
        with relaxed._tx() as conn:
            row = conn.execute("SELECT current_setting('search_path')").fetchone()
        relaxed.close()
        assert row is not None and row[0] in pg_url
        assert setting(PostgresStore(pg_url))[1] != "client"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://relay:s3cr%40t@db.example:5432/relay",
            "postgresql://relay:***@db.example:5432/relay",
        ),
        (
            "postgres://relay@db.example/relay?sslmode=require&password=s3cr%40t",
            "postgres://relay@db.example/relay?sslmode=require&password=***",
        ),
        ("postgresql://db.example/relay", "postgresql://db.example/relay"),
    ],
)
def test_url_for_display_hides_the_password(url: str, shown: str) -> None:
    """The password never appears in url_for_display, wherever the URL carries it."""
    s = PostgresStore.from_url(url)
    assert s.url_for_display == shown
    assert "s3cr" not in s.url_for_display
    s.close()


def test_unreachable_server_raises_store_error_only_when_used() -> None:
    """Constructing connects nowhere (safe before fork); the first use fails as StoreError."""
    s = PostgresStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", timeout_s=0.5)
    try:
        assert s._pool is None
        with pytest.raises(StoreError, match="PoolTimeout"):
            s.ping()
    finally:
        s.close()
