"""A store in the backlog shape of issue 15, written straight into its tables.

What a store looks like after Convex has been down for a while: ``n`` events of
``n / per_object`` users. Per user, the oldest ``delivered`` events went out before
the outage; the next one is the object's **head**, pending and waiting on its backoff
(``next_attempt_at`` in the future, a few attempts charged); the rest are its
**followers**, pending and parked behind the head (``next_attempt_at`` NULL, as
:mod:`relay.store.ordering` leaves them), or still due if ``followers_due`` (as they
are before any claim has looked at them). Events of different users interleave in
receipt order, as they arrive.

Built with direct SQL (SQLite ``executemany``, PostgreSQL ``COPY``) in one
transaction, so 100 k events take seconds and 1 M well under a minute: the store's
own ``insert`` commits one event at a time. Used by ``tests/test_claim_plans.py`` and
``bench/backlog.py``. The store must be migrated first (the triggers keep the
counts, the schema's indexes are the ones production has).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: Columns the builder writes, ``seq`` included (so heads are known without a query).
COLUMNS = (
    "seq, id, type, body, status, received_at, object, entity_id, object_key, occurred_at,"
    " updated_at, instance_id, ord_at, ord_upd, attempt_count, retry_step, next_attempt_at,"
    " last_error, delivered_at, force"
)
ATTEMPT_COLUMNS = "event_id, at, target, status_code, duration_ms, outcome, error"
#: How far in the future a head's next attempt is (it waits on its backoff), in ms.
BACKOFF_MS = 3_600_000
TARGET = "http://convex.invalid/clerk-users-webhook"


@dataclass(frozen=True)
class Backlog:
    """Where the builder put things: enough to find heads and followers without a query."""

    tag: str
    n: int
    objects: int
    per_object: int
    delivered_per_object: int
    now_ms: int

    def seq(self, obj: int, k: int) -> int:
        """``seq`` of event ``k`` (0 = oldest) of object ``obj``: receipt order interleaves
        objects (every object's first event, then every object's second, ...)."""
        return k * self.objects + obj + 1

    def event_id(self, obj: int, k: int) -> str:
        return f"msg_{self.tag}_{self.seq(obj, k):07d}"

    def head_seq(self, obj: int) -> int:
        return self.seq(obj, self.delivered_per_object)

    @property
    def heads(self) -> list[int]:
        """Every head's ``seq``, in claim order once made due together (by ``seq``)."""
        return [self.head_seq(o) for o in range(self.objects)]

    @property
    def id_prefix(self) -> str:
        """Every event id (svix-id) of this backlog starts with this."""
        return f"msg_{self.tag}_"

    @property
    def pending(self) -> int:
        return self.objects * (self.per_object - self.delivered_per_object)

    @property
    def max_seq(self) -> int:
        return self.objects * self.per_object


#: A ``user.updated`` envelope of realistic size (~450 bytes); filled in with ``%``
#: because ``json.dumps`` per row is most of the build time.
_BODY = (
    '{"object":"event","type":"user.updated","timestamp":%(at)d,"instance_id":"ins_backlog",'
    '"data":{"object":"user","id":"%(user)s","first_name":"Back","last_name":"Log",'
    '"primary_email_address_id":"idn_1","email_addresses":[{"id":"idn_1",'
    '"object":"email_address","email_address":"%(user)s@example.com"}],'
    '"public_metadata":{},"created_at":1700000000000,"updated_at":%(at)d}}'
)


def body(user: str, at_ms: int) -> bytes:
    """The stored webhook body of one event (valid JSON, a Clerk envelope)."""
    return (_BODY % {"at": at_ms, "user": user}).encode()


def rows(shape: Backlog, *, followers_due: bool) -> Iterator[tuple[Any, ...]]:
    """Every event row, in ``seq`` order, as :data:`COLUMNS`."""
    start = shape.now_ms - shape.max_seq - 60_000  # one event a millisecond, all in the past
    for k in range(shape.per_object):
        for obj in range(shape.objects):
            seq = shape.seq(obj, k)
            at = start + seq
            user = f"user_{shape.tag}_{obj:07d}"
            if k < shape.delivered_per_object:
                status, attempts, step, due, error, delivered = "delivered", 1, 0, None, None, at
            elif k == shape.delivered_per_object:
                status, attempts, step, delivered = "pending", 3, 3, None
                due, error = shape.now_ms + BACKOFF_MS, "HTTP 503"
            else:
                status, attempts, step, error, delivered = "pending", 0, 0, None, None
                due = at if followers_due else None
            yield (
                seq, shape.event_id(obj, k), "user.updated", body(user, at), status,
                at, "user", user, f"user:{user}", at, at, "ins_backlog", at, at,
                attempts, step, due, error, delivered, False,
            )  # fmt: skip


def attempt_rows(shape: Backlog) -> Iterator[tuple[Any, ...]]:
    """One attempt per delivered event, and one per head (its last failure)."""
    for obj in range(shape.objects):
        for k in range(shape.delivered_per_object + 1):
            delivered = k < shape.delivered_per_object
            yield (
                shape.event_id(obj, k), shape.now_ms - 1000, TARGET, 200 if delivered else 503,
                3.5, "delivered" if delivered else "retry", None if delivered else "HTTP 503",
            )  # fmt: skip


def fill_sqlite(
    path: str,
    shape: Backlog,
    *,
    followers_due: bool = False,
) -> None:
    """Write the backlog into a migrated SQLite file (one transaction, no fsync per row)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # a build, not ingest: no promise to keep
        conn.execute("PRAGMA cache_size=-524288")  # 512 MiB: index pages stay in memory
        conn.execute("BEGIN IMMEDIATE")
        # Secondary indexes are dropped and made again from their own stored SQL (the
        # schema ends up exactly as migrated): sorting once is much faster than a
        # million random B-tree inserts (1 M events: 152 s with them in place).
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
            " AND tbl_name = 'events' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        conn.executemany(
            f"INSERT INTO events ({COLUMNS}) VALUES ({_marks('?', 20)})",
            rows(shape, followers_due=followers_due),
        )
        conn.executemany(
            f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES ({_marks('?', 7)})",
            attempt_rows(shape),
        )
        for _, ddl in indexes:
            conn.execute(ddl)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def fill_postgres(url: str, shape: Backlog, *, followers_due: bool = False) -> None:
    """Write the backlog into a migrated PostgreSQL schema with ``COPY``, then ANALYZE
    (autovacuum would, a minute later; plans are read right away)."""
    import psycopg

    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            # As for SQLite: secondary indexes made again afterwards from their own
            # definitions (the primary key and the unique id stay).
            indexes = cur.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i"
                " JOIN pg_index x ON x.indexrelid = (quote_ident(i.schemaname) || '.'"
                " || quote_ident(i.indexname))::regclass"
                " WHERE i.tablename = 'events' AND i.schemaname = current_schema()"
                " AND NOT x.indisprimary AND NOT x.indisunique"
            ).fetchall()
            for name, _ in indexes:
                cur.execute(f'DROP INDEX "{name}"')
            with cur.copy(f"COPY events ({COLUMNS}) FROM STDIN") as copy:
                for row in rows(shape, followers_due=followers_due):
                    copy.write_row(row)
            with cur.copy(f"COPY attempts ({ATTEMPT_COLUMNS}) FROM STDIN") as copy:
                for row in attempt_rows(shape):
                    copy.write_row(row)
            for _, ddl in indexes:
                cur.execute(ddl)
            # seq was written explicitly: move the sequence past it for later inserts.
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('events', 'seq'), %s)", (shape.max_seq,)
            )
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE events")
        conn.execute("ANALYZE attempts")


def make_due(conn: Any, ph: str, seqs: Sequence[int], now_ms: int) -> None:
    """Bring these heads' backoff to an end at ``now_ms`` (as a recovered target would)."""
    for start in range(0, len(seqs), 10_000):
        chunk = list(seqs[start : start + 10_000])
        conn.execute(
            f"UPDATE events SET next_attempt_at = {ph}"
            f" WHERE seq IN ({_marks(ph, len(chunk))}) AND status = 'pending'",
            (now_ms, *chunk),
        )


def _marks(ph: str, n: int) -> str:
    return ", ".join([ph] * n)
