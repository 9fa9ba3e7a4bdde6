"""The shared store: PostgreSQL, for several relay instances on several machines.

Connections come from a small pool opened on first use, never at import time or in
the constructor, because gunicorn forks after loading the app; a pool inherited
across a fork is abandoned and a new one opened in the child.

Claims must be safe between machines, so they cannot lean on a process lock as
SQLite does. Each claim round (see :mod:`relay.store.ordering` for the rule) is one
transaction that:

1. selects due, unleased candidates ``FOR UPDATE SKIP LOCKED`` (two claimers never
   lease the same row);
2. takes a transaction-level advisory lock per candidate's object, skipping
   candidates whose object another claim or a completion is working on right now;
3. asks, in one statement with a fresh snapshot, each candidate's head, whether its
   object has an event leased, and whether a newer event was delivered: the first
   snapshot cannot see a lease another claim had not yet committed;
4. parks, supersedes, unparks and leases, then commits (releasing the locks).

Completions and releases take the same per-object locks (blocking, in lock-key order)
before they unpark an object's next head, so a park and an unpark of one object never
interleave: one object is never in flight twice, and never stuck, on any number of
workers.

A worker's statements travel in as few round trips as the rule allows: a claim round
takes two (candidates, their locks and the decision, which takes a fresh snapshot; then
the writes and the commit), a completion one. They are sent together as one simple query, each
prepared once per connection and run with a generic plan (:meth:`PostgresStore._script`):
measured on one worker, planning them on every call cost the server more than running
them, and a statement per round trip was most of what the worker spent on the store.

Wake-ups use ``LISTEN/NOTIFY`` on the channel :data:`CHANNEL`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg_pool import ConnectionPool

from relay.errors import StoreError
from relay.models import (
    Attempt,
    EventFilter,
    NewEvent,
    Outcome,
    Status,
)
from relay.store import ordering, sql
from relay.store.base import SQLStoreBase
from relay.store.postgres_schema import apply_migrations

#: The NOTIFY channel workers LISTEN on.
CHANNEL = "relay_events"
#: One row if the event was new (and a wake-up for the workers if it is pending), none
#: if its id was already stored.
_INSERT_AND_NOTIFY = (
    f"WITH new AS (INSERT INTO events ({sql.INSERT_COLUMNS}, next_attempt_at)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (id) DO NOTHING RETURNING status)"
    f" SELECT CASE WHEN status = 'pending' THEN pg_notify('{CHANNEL}', '') END FROM new"
)
#: Fold the per-change count deltas into event_counts (bounded by changes since the
#: last fold, not by the table).
_FOLD_COUNTS = (
    "WITH moved AS (DELETE FROM event_count_deltas RETURNING status, delta),"
    " sums AS (SELECT status, sum(delta) AS d FROM moved GROUP BY status)"
    " UPDATE event_counts c SET n = c.n + sums.d FROM sums WHERE c.status = sums.status"
)
#: One outcome of a completion's batch: its fields, in the order complete_many gives
#: them, and their SQL types.
_BATCH_FIELDS = {
    "id": "text",
    "at": "bigint",
    "target": "text",
    "status_code": "int",
    "duration_ms": "float8",
    "outcome": "text",
    "error": "text",
    "status": "text",
    "charged": "int",
    "next_at": "bigint",
    "last_error": "text",
    "delivered_at": "bigint",
}
#: A completion's batch as rows (params: the batch, its length). complete_many sends the
#: batch as one JSON document, an object per outcome, and each of its statements reads
#: it with this. One string parameter rather than an array per column: psycopg quotes an
#: array on the client element by element in Python, and the sixteen arrays of a
#: two-outcome batch took 194 us of the worker's CPU, against 23 us for the document.
#: The LIMIT (the batch's own length) is for the planner: it expects 100 rows of a
#: set-returning function, and a tenth of that from a LIMIT whose value it cannot see,
#: about what it expected of the arrays. Expecting 100, the outcomes' update scanned all
#: of a small table instead of looking up each id (4.5 times the server's time per
#: completion on 3,000 events).
_BATCH = (
    "(SELECT * FROM json_to_recordset(%s::json)"
    f" AS b({', '.join(f'{name} {kind}' for name, kind in _BATCH_FIELDS.items())})"
    " LIMIT %s) v"
)
#: complete_many's statements are set-based, one of each per batch, all in one round
#: trip (per result it once took three round trips: attempt, outcome, unpark).
_RECORD_ATTEMPTS = (
    f"INSERT INTO attempts (event_id, {sql.ATTEMPT_COLUMNS})"
    " SELECT id, at, target, status_code, duration_ms, outcome, error FROM " + _BATCH
)
#: ``attempt_count`` and ``retry_step`` are the target row's (params: the batch, its
#: length, the worker).
_APPLY_OUTCOMES = (
    "UPDATE events e SET status = v.status, attempt_count = attempt_count + 1,"
    " retry_step = retry_step + v.charged, next_attempt_at = v.next_at,"
    " last_error = v.last_error, delivered_at = COALESCE(v.delivered_at, e.delivered_at),"
    " lease_owner = NULL, lease_expires_at = NULL"
    f" FROM {_BATCH}"
    " WHERE e.id = v.id AND e.lease_owner = %s RETURNING e.id"
)
#: Serialize with claims and other completions working on the same objects: blocking,
#: in one order (by lock key), so two completions never deadlock, and a claim that
#: parked an event of the object has committed before we unpark. ``{ids}`` says which
#: events; :data:`_LOCK_OBJECTS` takes their ids (params: the lock class, event ids).
_LOCK_OBJECTS_OF = (
    "SELECT pg_advisory_xact_lock(%s, h) FROM (SELECT DISTINCT hashtext(object_key) h"
    " FROM events WHERE id {ids} AND object_key IS NOT NULL ORDER BY h) s"
)
_LOCK_OBJECTS = _LOCK_OBJECTS_OF.format(ids="= ANY(%s)")
#: :data:`_LOCK_OBJECTS` for a completion's batch (params: the lock class, the batch,
#: its length).
_LOCK_BATCH_OBJECTS = _LOCK_OBJECTS_OF.format(ids=f"IN (SELECT v.id FROM {_BATCH})")
#: :func:`relay.store.ordering.unpark_head` for the objects of several completed events,
#: each at its attempt's time (params: the batch, its length). It runs after the
#: outcomes in the same transaction and needs nothing from their answer. An event whose
#: lease was lost meanwhile unparks nothing, or a head that its next claim parks again
#: (another event of the object is leased): never a second flight.
#:
#: "Parked" is written so that no index can serve it (``next_attempt_at`` is never
#: negative), leaving the heads' ``seq`` as the only way in. With statistics taken
#: while nothing was parked, the planner walked every parked event instead, and for
#: each one the whole batch and its heads: 988 ms per completion on 60 k events.
_UNPARK_HEADS = (
    "UPDATE events e SET next_attempt_at = u.at FROM ("
    " SELECT v.at, (SELECT h.seq FROM events h WHERE h.object_key = o.object_key"
    " AND h.status = 'pending' ORDER BY h.ord_at, h.ord_upd, h.seq LIMIT 1) AS head"
    f" FROM {_BATCH}"
    " JOIN events o ON o.id = v.id WHERE o.object_key IS NOT NULL) u"
    " WHERE e.seq = u.head AND COALESCE(e.next_attempt_at, -1) < 0 AND e.status = 'pending'"
)
#: The transaction-local setting that hands a claim's candidates to its decision.
CLAIM_SEQS = "relay.claim_seqs"
#: A claim's candidates and their objects' advisory locks in one statement. The locked
#: rows are materialized first, so only the rows returned are try-locked (a lock taken
#: in the select list of the scan itself could be taken for rows the LIMIT drops). The
#: candidates this claim may decide about (keyed, their object's lock taken) are left in
#: the transaction's :data:`CLAIM_SEQS` setting for the decision that follows.
_CANDIDATES = (
    f"WITH c AS MATERIALIZED (SELECT {sql.EVENT_COLUMNS} FROM events"
    " WHERE status = 'pending' AND next_attempt_at <= %s"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= %s)"
    " ORDER BY next_attempt_at, seq LIMIT %s FOR UPDATE SKIP LOCKED),"
    " l AS MATERIALIZED (SELECT c.*, (c.object_key IS NULL"
    " OR pg_try_advisory_xact_lock(%s, hashtext(c.object_key))) AS mine FROM c)"
    " SELECT l.* FROM l, (SELECT set_config("
    f"'{CLAIM_SEQS}', COALESCE(array_agg(seq) FILTER (WHERE mine AND object_key IS NOT NULL),"
    " '{}')::text, true) FROM l) s"
)
#: :func:`relay.store.ordering.decision_query` for those candidates (params: now). It is a
#: statement of its own, so it takes a new snapshot: it sees every lease and park
#: committed before the candidates' object locks were taken.
_DECISION = ordering.decision_query(
    f"= ANY(NULLIF(current_setting('{CLAIM_SEQS}', true), '')::bigint[])",
    "%s",
    delivered=ordering.DELIVERED_NO_INDEX,
)
#: A pooled connection used successfully this recently is handed out without the
#: pool's test query (a round trip per transaction, a third of a completion's cost).
#: One that died meanwhile fails its transaction once (StoreError: the worker retries,
#: Clerk's delivery is answered 503 and redelivered) and the pool replaces it.
CHECK_AFTER_IDLE_S = 1.0
#: First key of the two-int advisory locks taken per object during a claim ("RELY").
OBJECT_LOCK_CLASS = 0x52454C59
#: Longest wait between reconnection attempts of a listener, in seconds.
LISTEN_MAX_BACKOFF_S = 30.0
#: How often a listener checks its stop flag, in seconds.
LISTEN_POLL_S = 0.5


#: How :meth:`PostgresStore._script` has its prepared statements planned, set for its
#: transaction only. Generic plans: planned once per connection instead of on every
#: call (planning cost more than running). No hash or merge joins: every statement
#: there joins a handful of rows (a claim's candidates, a batch's events) to their
#: rows in ``events`` through an index, and the planner's estimates of how many rows
#: are pending cannot be trusted while a backlog builds up or drains; with them it
#: hashed every parked event to unpark 16 heads (tests/test_claim_plans.py).
PLAN_SETTINGS = (
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
)
#: The statements :meth:`PostgresStore._script` prepared in this session.
_OURS_PREPARED = "SELECT name FROM pg_prepared_statements WHERE name LIKE 'relay\\_%'"
#: One statement of :meth:`PostgresStore._script`: SQL with ``%s`` placeholders and its
#: parameters (run prepared), or a plain command such as ``BEGIN``.
Statement = tuple[str, Sequence[Any]] | str


@functools.lru_cache(maxsize=256)
def prepared_name(text: str) -> str:
    """The session-level name a statement is prepared under (the same in every process)."""
    return "relay_" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def numbered_placeholders(text: str) -> str:
    """``%s`` placeholders as ``$1``, ``$2``, ... (for ``PREPARE``)."""
    counter = itertools.count(1)
    return re.sub(r"%s", lambda _: f"${next(counter)}", text)


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the authority or the query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if sep else netloc
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class PostgresStore(SQLStoreBase):
    """Store on a PostgreSQL database; safe for any number of workers and machines."""

    PH = "%s"
    PURGED_WITH_EVENTS = ("attempts",)  # body_conflicts: ON DELETE CASCADE

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 4,
        timeout_s: float = 10.0,
        sync_commits: bool = True,
    ) -> None:
        self._url = url
        self._sync_commits = sync_commits
        self.url_for_display = display_url(url)
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._pool: ConnectionPool | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        #: Per pooled connection, the statements :meth:`_script` has prepared on it.
        self._prepared_on: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = (
            weakref.WeakKeyDictionary()
        )
        #: When each pooled connection last finished a transaction (monotonic seconds).
        self._last_ok: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_url(cls, url: str, *, sync_commits: bool = True) -> PostgresStore:
        """``postgresql://user:password@host:port/dbname?sslmode=require`` (libpq URL)."""
        return cls(url, sync_commits=sync_commits)

    # -- connections -----------------------------------------------------------------

    def _get_pool(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                # A pool from before a fork shares its sockets with the parent: closing
                # it here would end the parent's sessions, so it is dropped unclosed.
                self._pool = ConnectionPool(
                    self._conninfo(),
                    min_size=1,
                    max_size=self._max_connections,
                    open=False,
                    timeout=self._timeout_s,
                    check=self._check,  # survive server restarts
                    name="relay-store",
                )
                self._pool.open()
                self._pool_pid = os.getpid()
            return self._pool

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        if time.monotonic() - self._last_ok.get(conn, -math.inf) >= CHECK_AFTER_IDLE_S:
            ConnectionPool.check_connection(conn)

    def _conninfo(self) -> str:
        """The URL, plus what the relay's sessions need, after any ``options`` the URL
        carries (a later ``-c`` wins): READ COMMITTED whatever the database or role
        defaults to (a claim's decision and a completion's unpark must see what was
        committed before their locks were taken, which a transaction-wide snapshot would
        not), and ``synchronous_commit=off`` when commits need not wait (see
        :func:`relay.store.open_store`)."""
        params = conninfo_to_dict(self._url)
        settings = [r"default_transaction_isolation=read\ committed"]
        if not self._sync_commits:
            settings.append("synchronous_commit=off")
        options = " ".join([str(params.get("options") or ""), *(f"-c {s}" for s in settings)])
        return make_conninfo("", **{**params, "options": options.strip()})

    @contextlib.contextmanager
    def _tx(self, timeout_s: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a transaction that commits on success; errors become StoreError.

        (psycopg's pipeline mode would send a transaction's statements without waiting
        for each answer, but its wait for answers spins, holding the GIL: measured in a
        worker, 25 % of its GIL time, and no more deliveries per second.)
        """
        try:
            with self._get_pool().connection(timeout=timeout_s) as conn:
                try:
                    yield conn
                except BaseException:
                    # Its rollback may make psycopg deallocate every prepared statement.
                    self._prepared_on.pop(conn, None)
                    raise
                self._last_ok[conn] = time.monotonic()
        except psycopg.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}".strip()) from exc

    def _query(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self._tx() as conn:
            return conn.execute(statement, params).fetchall()

    # -- verbs -------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._tx() as conn:
            apply_migrations(conn)

    def insert(self, event: NewEvent) -> bool:
        params = (*sql.insert_params(event), sql.pending_at(event))
        with self._tx() as conn:
            # One statement in autocommit: a single round trip that inserts, notifies
            # and commits (the NOTIFY is delivered by that commit). In a transaction
            # the same took four: BEGIN, INSERT, NOTIFY, COMMIT.
            conn.autocommit = True
            try:
                return conn.execute(_INSERT_AND_NOTIFY, params).fetchone() is not None
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.autocommit = False

    def _claim_round(
        self, worker_id: str, *, now_ms: int, lease_ms: int, batch: int, limit: int
    ) -> tuple[int, ordering.Decision]:
        # Two round trips: read and lock the candidates (opening the transaction) and
        # ask about them; then write the decision and commit.
        with self._session() as conn:
            _, rows, answers = self._script(
                conn,
                [
                    "BEGIN",
                    (_CANDIDATES, (now_ms, now_ms, batch, OBJECT_LOCK_CLASS)),
                    (_DECISION, (now_ms,)),
                ],
            )
            if not rows:
                self._script(conn, ["COMMIT"])
                return 0, ordering.Decision()
            # Claim order (the CTE scan promises none; sorting a batch here costs the
            # server no Sort node). Objects another claim or completion is working on
            # (their lock not taken) are left for later.
            mine = [sql.row_to_event(r[:-1]) for r in rows if r[-1]]
            mine.sort(key=lambda e: (e.next_attempt_at_ms or 0, e.seq))
            # An unanswered candidate would be taken for a free head: never lease on
            # a hand-off that did not happen (the claim rolls back; the next one retries).
            unanswered = {e.seq for e in mine if e.object_key is not None} - {a[0] for a in answers}
            if unanswered:
                raise StoreError(f"claim: no decision for candidates {sorted(unanswered)}")
            decision = ordering.decide(mine, answers, limit=limit)
            writes = ordering.statements(
                self.PH, decision, worker_id=worker_id, now_ms=now_ms, lease_ms=lease_ms
            )
            self._script(conn, [*writes, "COMMIT"])
        return len(rows), decision

    def complete_many(
        self, worker_id: str, results: Sequence[tuple[str, Attempt, Outcome]]
    ) -> list[bool]:
        ids = [event_id for event_id, _, _ in results]
        if len(set(ids)) != len(ids):  # one row per id below; never seen from a worker
            return super().complete_many(worker_id, results)
        batch = json.dumps(
            [
                dict(
                    zip(
                        _BATCH_FIELDS,
                        (
                            event_id,
                            a.at_ms,
                            a.target,
                            a.status_code,
                            a.duration_ms,
                            a.outcome,
                            a.error,
                            str(o.status),
                            int(o.charged),
                            o.next_attempt_at_ms,
                            o.error,
                            a.at_ms if o.status == Status.DELIVERED else None,
                        ),
                        strict=True,
                    )
                )
                for event_id, a, o in results
            ],
            ensure_ascii=False,  # text as text: a \u escape needs a UTF-8 database
        )
        n = len(results)
        # One round trip: the four statements run as one implicit transaction, each
        # with a fresh snapshot (so the unpark sees every park committed before the
        # object locks were taken).
        with self._session() as conn:
            _, _, kept, _ = self._script(
                conn,
                [
                    (_LOCK_BATCH_OBJECTS, (OBJECT_LOCK_CLASS, batch, n)),
                    (_RECORD_ATTEMPTS, (batch, n)),
                    (_APPLY_OUTCOMES, (batch, n, worker_id)),
                    # The object's head may have changed (this one finished, or an older
                    # event arrived while it was in flight and was parked).
                    (_UNPARK_HEADS, (batch, n)),
                ],
            )
        done = {event_id for (event_id,) in kept}
        return [event_id in done for event_id in ids]

    def _lock_objects(self, conn: Any, event_ids: Sequence[str]) -> None:
        conn.execute(_LOCK_OBJECTS, (OBJECT_LOCK_CLASS, list(event_ids)))

    @contextlib.contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in autocommit mode, for :meth:`_script`: its statements
        bring their own transaction (an explicit ``BEGIN``, or a script's implicit one).
        Whatever is left open when the block ends (an error on the way) is rolled back."""
        with self._tx() as conn:
            conn.autocommit = True
            try:
                yield conn  # on an error, _tx forgets what this connection has prepared
            finally:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                try:
                    conn.autocommit = False
                except psycopg.Error:
                    conn.close()  # the pool drops it: never hand out an autocommit one

    def _script(
        self, conn: psycopg.Connection[Any], statements: Sequence[Statement]
    ) -> list[list[tuple[Any, ...]]]:
        """Send ``statements`` in one round trip; each one's rows (``[]`` if none).

        A statement with parameters runs as a prepared statement of this session (the
        first script to need it on a connection prepares it, in the same round trip)
        with a generic plan (:data:`PLAN_SETTINGS`), so it is planned once per
        connection instead of on every call; a plain string (``BEGIN``, ``COMMIT``)
        runs as it is. The parameters are bound on the client and everything travels
        as one simple query: in autocommit mode the statements run as one transaction
        unless they say otherwise, each with its own snapshot (READ COMMITTED),
        stopping at the first error. Measured on one worker, a statement per round
        trip and a plan per statement were most of what PostgreSQL cost per delivered
        event.
        """
        starts_clean = conn.info.transaction_status == TransactionStatus.IDLE
        try:
            return self._send_script(conn, statements)
        except (
            psycopg.errors.InvalidSqlStatementName,  # deallocated behind our back
            psycopg.errors.FeatureNotSupported,  # "cached plan must not change result type"
        ) as exc:
            # Statements gone (DEALLOCATE ALL, a pooler handing us another session) or
            # stale (a migration changed what they return): forget ours and send the
            # script again, prepared afresh, if no earlier script's work is lost with
            # the transaction.
            self._prepared_on.pop(conn, None)
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            stale = isinstance(exc, psycopg.errors.FeatureNotSupported)
            if stale:
                for (name,) in conn.execute(_OURS_PREPARED).fetchall():
                    conn.execute(f"DEALLOCATE {name}")
            if not starts_clean:
                raise
            return self._send_script(conn, statements)

    def _send_script(
        self, conn: psycopg.Connection[Any], statements: Sequence[Statement]
    ) -> list[list[tuple[Any, ...]]]:
        known = self._prepared_on.get(conn)
        if known is None:  # a new connection, or one whose state an error left unsure
            known = {name for (name,) in conn.execute(_OURS_PREPARED).fetchall()}
            self._prepared_on[conn] = known
        parts: list[str] = []
        params: list[Any] = []
        picks: list[int] = []  # which result answers each statement
        generic = False
        for statement in statements:
            if isinstance(statement, str):
                parts.append(statement)
            else:
                text, args = statement
                name = prepared_name(text)
                if not generic:
                    parts.extend(f"SET LOCAL {key} = {value}" for key, value in PLAN_SETTINGS)
                    generic = True
                if name not in known:
                    parts.append(f"PREPARE {name} AS {numbered_placeholders(text)}")
                    known.add(name)
                parts.append(
                    f"EXECUTE {name}({', '.join(['%s'] * len(args))})"
                    if args
                    else f"EXECUTE {name}"
                )
                params.extend(args)
            picks.append(len(parts) - 1)
        cur = psycopg.ClientCursor(conn)
        cur.execute("; ".join(parts), params)
        results: list[list[tuple[Any, ...]]] = []
        while True:
            # The result's status, not cur.description: that builds a Column per field
            # of every result, 15 % of the client's CPU for a claim's script.
            result = cur.pgresult
            rows = result is not None and result.status == ExecStatus.TUPLES_OK
            results.append(cur.fetchall() if rows else [])
            if not cur.nextset():
                break
        return [results[i] for i in picks]

    def _list_query(
        self, flt: EventFilter, before: int | None, limit: int
    ) -> tuple[str, list[Any]]:
        if not flt.statuses:
            return super()._list_query(flt, before, limit)
        # Each status walks its own range of events_status_seq, newest first, and the
        # pages are merged: at most limit rows per status are sorted, whatever the
        # store holds. The status comes from the outer row, so PostgreSQL cannot
        # answer with a pending-only index and a sort of every pending event, which it
        # did with a literal status (the statistics of status are not kept: migration 7).
        where, params = self._list_where(dataclasses.replace(flt, statuses=()), before)
        return (
            "SELECT e.* FROM unnest(%s::text[]) AS s(status), LATERAL ("
            f"SELECT {sql.EVENT_COLUMNS} FROM events WHERE status = s.status AND {where}"
            " ORDER BY seq DESC LIMIT %s) e ORDER BY e.seq DESC LIMIT %s",
            # Each status once: a status asked for twice would list its events twice.
            [list(dict.fromkeys(str(status) for status in flt.statuses)), *params, limit, limit],
        )

    def counts(self) -> dict[str, int]:
        with self._tx() as conn:
            conn.execute(_FOLD_COUNTS)
            found = dict(conn.execute("SELECT status, n FROM event_counts").fetchall())
        return sql.zero_counts(found)

    def notify(self) -> None:
        # A short timeout: a replay calls this after committing and must not hang on it.
        with contextlib.suppress(StoreError), self._tx(timeout_s=1.0) as conn:
            conn.execute(f"NOTIFY {CHANNEL}")

    def group_committer(self) -> None:
        return None  # every ingest request commits by itself; PostgreSQL batches WAL flushes

    def committer_lost(self) -> bool:
        return False

    def ingest_burst_s(self) -> float:
        return 0.0  # no group commit here to tell a burst by; workers scale out instead

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        listener = _Listener(self._url, wake)
        listener.start(ready_timeout_s=self._timeout_s)
        self._listeners.append(listener.stop)
        return listener.stop

    def close(self) -> None:
        for stop in self._listeners:
            stop()
        self._listeners.clear()
        with self._pool_lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.close()
            self._pool = None


class _Listener:
    """A daemon thread on its own autocommit connection that LISTENs and calls ``wake``.

    It reconnects with backoff when the connection drops, and wakes once after each
    reconnection because notifications sent while it was away are lost.
    """

    def __init__(self, url: str, wake: Callable[[], None]) -> None:
        self._url = url
        self._wake = wake
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-listen", daemon=True)

    def start(self, *, ready_timeout_s: float) -> None:
        """Start, and wait (bounded) until LISTEN is in effect so no notify is missed."""
        self._thread.start()
        self._ready.wait(ready_timeout_s)

    def stop(self) -> None:
        """Stop listening; returns within about :data:`LISTEN_POLL_S`."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=LISTEN_POLL_S * 4)

    def _run(self) -> None:
        backoff_s = 0.5
        connected_before = False
        while not self._stopped.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=10,
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,  # notice a silently dead peer in about a minute
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._ready.set()
                    if connected_before:
                        self._wake()
                    connected_before, backoff_s = True, 0.5
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=LISTEN_POLL_S):
                            self._wake()
            except psycopg.Error:
                self._stopped.wait(backoff_s)
                backoff_s = min(backoff_s * 2, LISTEN_MAX_BACKOFF_S)
