"""The verbs whose SQL is the same on every backend, given a placeholder and two primitives.

A backend subclasses :class:`SQLStoreBase`, sets :attr:`PH` (``?`` or ``%s``) and
provides ``_query`` (one statement, rows back) and ``_tx`` (a connection inside a
committed transaction). What stays in the backends is where they differ: ingest (the
SQLite group commit, PostgreSQL's insert-and-notify), the candidate read of a claim and
its locking (PostgreSQL runs a whole claim round in two round trips), wake-ups and
PostgreSQL's set-based completions.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from relay.models import (
    PURGEABLE,
    Attempt,
    BodyConflict,
    Event,
    EventFilter,
    Outcome,
    Page,
    Status,
    TargetHealth,
    TargetState,
)
from relay.store import ordering, sql
from relay.store.runs import RunsAndLeases

#: Events deleted per transaction by :meth:`SQLStoreBase.purge`.
PURGE_BATCH = 1000
#: Events read per round by :meth:`SQLStoreBase.export`.
EXPORT_BATCH = 500
#: Events made due per transaction by :meth:`SQLStoreBase.release_held`.
RELEASE_BATCH = 1000
_TARGET_COLUMNS = (
    "target, state, since, reason, last_success_at, next_probe_at, probe_interval_ms, probe_count"
)


class SQLStoreBase(RunsAndLeases):
    """Shared read verbs, the heartbeat, reconcile history and leases for SQL backends."""

    PH: ClassVar[str]
    #: Tables whose rows go with their event in a purge (where no foreign key cascades).
    PURGED_WITH_EVENTS: ClassVar[tuple[str, ...]] = ("attempts", "body_conflicts")

    def _query(self, statement: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def claim(self, worker_id: str, *, now_ms: int, lease_ms: int, limit: int) -> list[Event]:
        # Rounds of at most ordering.SCAN_BATCH rows, each its own short transaction
        # (see relay.store.ordering for the rule and why this stays flat).
        claimed: list[Event] = []
        for round_index in range(ordering.MAX_SCAN_ROUNDS):
            batch = ordering.batch_size(round_index, limit - len(claimed))
            read, decision = self._claim_round(
                worker_id, now_ms=now_ms, lease_ms=lease_ms, batch=batch, limit=limit - len(claimed)
            )
            if not read:
                break
            claimed.extend(decision.lease)
            if len(claimed) >= limit or not ordering.look_again(decision, read, batch):
                break
        return claimed

    def _claim_round(
        self, worker_id: str, *, now_ms: int, lease_ms: int, batch: int, limit: int
    ) -> tuple[int, ordering.Decision]:
        """One claim transaction: read at most ``batch`` due rows, decide, write the
        decision; how many rows were read, and the decision."""
        with self._tx() as conn:
            read, mine = self._claim_candidates(conn, now_ms, batch)
            if not read:
                return 0, ordering.Decision()
            keyed = [e.seq for e in mine if e.object_key is not None]
            answers = self._claim_answers(conn, keyed, now_ms) if keyed else []
            decision = ordering.decide(mine, answers, limit=limit)
            ordering.apply(
                conn, self.PH, decision, worker_id=worker_id, now_ms=now_ms, lease_ms=lease_ms
            )
        return read, decision

    def _claim_candidates(self, conn: Any, now_ms: int, batch: int) -> tuple[int, list[Event]]:
        """Due rows in claim order (at most ``batch``): how many were read, and
        those this claim may decide about (a backend may leave some to another claim)."""
        raise NotImplementedError

    def _claim_answers(self, conn: Any, seqs: list[int], now_ms: int) -> list[Any]:
        """:func:`relay.store.ordering.decision_query` rows for these candidates."""
        raise NotImplementedError

    def complete(self, event_id: str, worker_id: str, attempt: Attempt, outcome: Outcome) -> bool:
        return self.complete_many(worker_id, [(event_id, attempt, outcome)])[0]

    def complete_many(
        self, worker_id: str, results: Sequence[tuple[str, Attempt, Outcome]]
    ) -> list[bool]:
        ph = self.PH
        kept = []
        with self._tx() as conn:
            self._lock_objects(conn, [event_id for event_id, _, _ in results])
            for event_id, attempt, outcome in results:
                delivered_at = attempt.at_ms if outcome.status == Status.DELIVERED else None
                conn.execute(
                    f"INSERT INTO attempts (event_id, {sql.ATTEMPT_COLUMNS})"
                    f" VALUES ({', '.join([ph] * 7)})",
                    sql.attempt_params(event_id, attempt),
                )
                cur = conn.execute(
                    f"UPDATE events SET status = {ph}, attempt_count = attempt_count + 1,"
                    f" retry_step = retry_step + {ph}, next_attempt_at = {ph}, last_error = {ph},"
                    f" delivered_at = COALESCE({ph}, delivered_at),"
                    " lease_owner = NULL, lease_expires_at = NULL"
                    f" WHERE id = {ph} AND lease_owner = {ph} RETURNING object_key",
                    (
                        str(outcome.status),
                        int(outcome.charged),
                        outcome.next_attempt_at_ms,
                        outcome.error,
                        delivered_at,
                        event_id,
                        worker_id,
                    ),
                )
                row = cur.fetchone()
                kept.append(row is not None)
                if row is not None and row[0] is not None:
                    # The object's head may have changed (this one finished, or an
                    # older event arrived while it was in flight and was parked).
                    conn.execute(ordering.unpark_head(ph), (attempt.at_ms, row[0]))
        return kept

    def _lock_objects(self, conn: Any, event_ids: Sequence[str]) -> None:
        """Serialize with claims working on the same objects (PostgreSQL; SQLite has
        one writer at a time already)."""

    def release(self, event_id: str, worker_id: str, now_ms: int) -> None:
        ph = self.PH
        with self._tx() as conn:
            self._lock_objects(conn, [event_id])
            row = conn.execute(
                "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL,"
                f" next_attempt_at = {ph} WHERE id = {ph} AND lease_owner = {ph}"
                " RETURNING object_key",
                (now_ms, event_id, worker_id),
            ).fetchone()
            if row is not None and row[0] is not None:
                conn.execute(ordering.unpark_head(ph), (now_ms, row[0]))

    def get(self, event_id: str) -> Event | None:
        ph = self.PH
        rows = self._query(f"SELECT {sql.EVENT_COLUMNS} FROM events WHERE id = {ph}", (event_id,))
        if not rows:
            return None
        attempts = self._query(
            f"SELECT {sql.ATTEMPT_COLUMNS} FROM attempts WHERE event_id = {ph} ORDER BY id",
            (event_id,),
        )
        event = sql.row_to_event(rows[0], tuple(map(sql.row_to_attempt, attempts)))
        conflicts = self.body_conflicts(event_id)
        return dataclasses.replace(event, body_conflicts=conflicts) if conflicts else event

    def list_events(self, flt: EventFilter, *, limit: int, cursor: str | None = None) -> Page:
        before = None if cursor is None else sql.decode_cursor(cursor)
        rows = self._query(*self._list_query(flt, before, limit + 1))
        events = [sql.row_to_event(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(events, sql.encode_cursor(events[-1].seq) if more and events else None)

    def _list_query(
        self, flt: EventFilter, before: int | None, limit: int
    ) -> tuple[str, list[Any]]:
        """:meth:`list_events`' statement: the newest ``limit`` events matching ``flt``
        (with ``seq`` below ``before``, if given), newest first."""
        ph = self.PH
        statuses = list(dict.fromkeys(flt.statuses))
        if len(statuses) > 1:
            # A page of each status from events_status_seq, in index order, merged: with
            # "status IN (...)" the matching rows of every status were sorted (a whole
            # backlog, for `relay events --status failed --status pending`).
            arms: list[str] = []
            arm_params: list[Any] = []
            for i, status in enumerate(statuses):
                one = dataclasses.replace(flt, statuses=(status,))
                arm, params = self._list_query(one, before, limit)
                arms.append(f"SELECT * FROM ({arm}) AS s{i}")
                arm_params.extend(params)
            union = " UNION ALL ".join(arms)
            return f"{union} ORDER BY seq DESC LIMIT {ph}", [*arm_params, limit]
        where, params = self._list_where(flt, before)
        return (
            f"SELECT {sql.EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq DESC LIMIT {ph}",
            [*params, limit],
        )

    def _list_where(self, flt: EventFilter, before: int | None) -> tuple[str, list[Any]]:
        """:meth:`_list_query`'s conditions and their parameters."""
        where, params = sql.filter_clause(flt, self.PH)
        if before is not None:
            where += f" AND seq < {self.PH}"
            params.append(before)
        return where, params

    def counts(self) -> dict[str, int]:
        # Kept by triggers on events (see the schema): five rows, whatever the store holds.
        return sql.zero_counts(dict(self._query("SELECT status, n FROM event_counts")))

    def export(self) -> Iterator[tuple[Event, list[Attempt]]]:
        # Keyset pages of EXPORT_BATCH events and their attempts (two reads each), so
        # a million-event store is never in memory at once, and nothing is held open
        # while the caller takes its time between items.
        ph = self.PH
        after = 0
        while True:
            rows = self._query(
                f"SELECT {sql.EXPORT_COLUMNS} FROM events WHERE seq > {ph} ORDER BY seq LIMIT {ph}",
                (after, EXPORT_BATCH),
            )
            if not rows:
                return
            attempts: dict[str, list[Attempt]] = {row[0]: [] for row in rows}
            where, params = sql.among(ph, "event_id", list(attempts))
            for a in self._query(
                f"SELECT event_id, {sql.ATTEMPT_COLUMNS} FROM attempts WHERE {where} ORDER BY id",
                params,
            ):
                attempts[a[0]].append(sql.row_to_attempt(a[1:]))
            for row in rows:
                yield sql.row_to_event(row), attempts[row[0]]
            if len(rows) < EXPORT_BATCH:
                return
            after = rows[-1][1]

    def purge(self, *, older_than_ms: int) -> int:
        # Small batches, each its own short transaction: ingest waits on none for long.
        ph = self.PH
        statuses = sorted(map(str, PURGEABLE))

        def delete(conn: Any, seqs: list[int]) -> None:
            these = ", ".join([ph] * len(seqs))
            for table in self.PURGED_WITH_EVENTS:
                conn.execute(
                    f"DELETE FROM {table} WHERE event_id IN"
                    f" (SELECT id FROM events WHERE seq IN ({these}))",
                    seqs,
                )
            conn.execute(f"DELETE FROM events WHERE seq IN ({these})", seqs)

        total = 0
        for deleted in self._batches(
            f"SELECT seq FROM events WHERE status IN ({', '.join([ph] * len(statuses))})"
            f" AND received_at < {ph}",
            (*statuses, older_than_ms),
            PURGE_BATCH,
            delete,
        ):
            total += deleted
            self._reclaim_space()
        return total

    def _batches(
        self,
        select: str,
        params: Sequence[Any],
        size: int,
        act: Callable[[Any, list[int]], None],
    ) -> Iterator[int]:
        """Read up to ``size`` seqs with ``select`` and ``act`` on them, in one short
        transaction per batch, until a batch comes back short; yields each batch's
        length after its commit."""
        while True:
            with self._tx() as conn:
                seqs = [
                    r[0]
                    for r in conn.execute(f"{select} LIMIT {self.PH}", (*params, size)).fetchall()
                ]
                if seqs:
                    act(conn, seqs)
            if seqs:
                yield len(seqs)
            if len(seqs) < size:
                return

    def replay(self, flt: EventFilter, *, now_ms: int, force: bool = False) -> list[str]:
        ph = self.PH
        where, params = sql.filter_clause(flt, ph)
        allowed = sql.replayable_statuses(flt, force=force)
        with self._tx() as conn:
            rows = conn.execute(
                f"UPDATE events SET status = 'pending', next_attempt_at = {ph}, retry_step = 0,"
                f" force = {ph}, lease_owner = NULL, lease_expires_at = NULL"
                f" WHERE {where} AND status IN ({', '.join([ph] * len(allowed))})"
                f" AND (lease_expires_at IS NULL OR lease_expires_at <= {ph})"
                " RETURNING id",
                [now_ms, force, *params, *allowed, now_ms],
            ).fetchall()
        if rows:
            self.notify()
        return [r[0] for r in rows]

    def import_event(self, event: Event, attempts: list[Attempt]) -> bool:
        ph = self.PH
        with self._tx() as conn:
            cur = conn.execute(
                f"INSERT INTO events ({sql.INSERT_COLUMNS}, {sql.IMPORT_COLUMNS})"
                f" VALUES ({', '.join([ph] * 19)}) ON CONFLICT (id) DO NOTHING",
                sql.import_params(event),
            )
            if cur.rowcount != 1:
                return False
            with contextlib.closing(conn.cursor()) as many:
                many.executemany(
                    f"INSERT INTO attempts (event_id, {sql.ATTEMPT_COLUMNS})"
                    f" VALUES ({', '.join([ph] * 7)})",
                    [sql.import_attempt_params(event.id, a) for a in attempts],
                )
            return True

    def _reclaim_space(self) -> None:
        """Give freed pages back to the file system, a little at a time (SQLite)."""

    def oldest_pending_ms(self) -> int | None:
        rows = self._query(sql.OLDEST_PENDING)
        return rows[0][0] if rows else None

    def heartbeat(self, worker_id: str, *, now_ms: int) -> None:
        with self._tx() as conn:
            conn.execute(sql.HEARTBEAT.format(ph=self.PH), (worker_id, now_ms))
            conn.execute(sql.PRUNE_WORKERS.format(ph=self.PH), (now_ms - sql.WORKER_RETENTION_MS,))

    def last_heartbeat_ms(self) -> int | None:
        rows = self._query(sql.LAST_HEARTBEAT)
        return rows[0][0] if rows else None

    def ping(self) -> None:
        self._query("SELECT 1")

    # -- target health (relay.delivery.target) ----------------------------------------------------

    def target_health(self, target: str) -> TargetHealth | None:
        rows = self._query(
            f"SELECT {_TARGET_COLUMNS} FROM targets WHERE target = {self.PH}", (target,)
        )
        return _row_to_health(rows[0]) if rows else None

    def targets(self) -> list[TargetHealth]:
        rows = self._query(f"SELECT {_TARGET_COLUMNS} FROM targets ORDER BY target")
        return [_row_to_health(r) for r in rows]

    def set_target_state(
        self,
        target: str,
        state: TargetState,
        *,
        now_ms: int,
        reason: str | None = None,
        probe_interval_ms: int = 0,
    ) -> bool:
        ph = self.PH
        next_probe = None if state == TargetState.UP else now_ms + probe_interval_ms
        with self._tx() as conn:
            row = conn.execute(
                f"INSERT INTO targets ({_TARGET_COLUMNS})"
                f" VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, 0)"
                " ON CONFLICT (target) DO UPDATE SET state = excluded.state,"
                " since = excluded.since, reason = excluded.reason,"
                " last_success_at = COALESCE(excluded.last_success_at, targets.last_success_at),"
                " next_probe_at = excluded.next_probe_at,"
                " probe_interval_ms = excluded.probe_interval_ms, probe_count = 0"
                " WHERE targets.state <> excluded.state RETURNING target",
                (
                    target,
                    str(state),
                    now_ms,
                    reason,
                    now_ms if state == TargetState.UP else None,
                    next_probe,
                    probe_interval_ms,
                ),
            ).fetchone()
        return row is not None

    def take_probe(self, target: str, *, now_ms: int, max_interval_ms: int) -> bool:
        ph = self.PH
        with self._tx() as conn:
            row = conn.execute(
                f"UPDATE targets SET next_probe_at = {ph} + probe_interval_ms,"
                f" probe_interval_ms = CASE WHEN probe_interval_ms * 2 > {ph} THEN {ph}"
                " ELSE probe_interval_ms * 2 END, probe_count = probe_count + 1"
                f" WHERE target = {ph} AND state <> 'up' AND next_probe_at <= {ph}"
                " RETURNING target",
                (now_ms, max_interval_ms, max_interval_ms, target, now_ms),
            ).fetchone()
        return row is not None

    def target_succeeded(self, target: str, *, now_ms: int) -> None:
        with self._tx() as conn:
            conn.execute(
                f"UPDATE targets SET last_success_at = {self.PH} WHERE target = {self.PH}",
                (now_ms, target),
            )

    def release_held(self, *, now_ms: int) -> int:
        # Pending events waiting on a backoff (not in flight) become due now, a batch
        # per transaction. Range-reads the claim index: rows due later only.
        ph = self.PH

        def make_due(conn: Any, seqs: list[int]) -> None:
            conn.execute(  # re-checked: a row leased meanwhile keeps its lease's end
                f"UPDATE events SET next_attempt_at = {ph}"
                f" WHERE seq IN ({', '.join([ph] * len(seqs))})"
                " AND status = 'pending' AND lease_expires_at IS NULL",
                (now_ms, *seqs),
            )

        total = sum(
            self._batches(
                "SELECT seq FROM events WHERE status = 'pending'"
                f" AND next_attempt_at > {ph} AND lease_expires_at IS NULL",
                (now_ms,),
                RELEASE_BATCH,
                make_due,
            )
        )
        if total:
            self.notify()
        return total

    def notify(self) -> None:
        raise NotImplementedError

    # -- same svix-id, different body (issue 13) --------------------------------------------

    def record_body_conflict(self, event_id: str, *, body_sha256: str, now_ms: int) -> None:
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO body_conflicts (event_id, at, body_sha256) VALUES ({self.PH},"
                f" {self.PH}, {self.PH})",
                (event_id, now_ms, body_sha256),
            )

    def body_conflicts(self, event_id: str) -> tuple[BodyConflict, ...]:
        rows = self._query(
            f"SELECT at, body_sha256 FROM body_conflicts WHERE event_id = {self.PH} ORDER BY id",
            (event_id,),
        )
        return tuple(BodyConflict(at, digest) for at, digest in rows)

    # -- console sessions (issue 13) -------------------------------------------------------

    def start_console_session(self, session_hash: str, *, now_ms: int, expires_ms: int) -> None:
        ph = self.PH
        with self._tx() as conn:
            conn.execute(f"DELETE FROM console_sessions WHERE expires_at <= {ph}", (now_ms,))
            conn.execute(
                f"INSERT INTO console_sessions (id, created_at, expires_at) VALUES ({ph}, {ph},"
                f" {ph})",
                (session_hash, now_ms, expires_ms),
            )

    def console_session_valid(self, session_hash: str, *, now_ms: int) -> bool:
        rows = self._query(
            f"SELECT 1 FROM console_sessions WHERE id = {self.PH} AND expires_at > {self.PH}",
            (session_hash, now_ms),
        )
        return bool(rows)

    def end_console_session(self, session_hash: str) -> None:
        with self._tx() as conn:
            conn.execute(f"DELETE FROM console_sessions WHERE id = {self.PH}", (session_hash,))


def _row_to_health(row: Sequence[Any]) -> TargetHealth:
    return TargetHealth(
        target=row[0],
        state=TargetState(row[1]),
        since_ms=row[2],
        reason=row[3],
        last_success_ms=row[4],
        next_probe_ms=row[5],
        probe_interval_ms=row[6],
        probe_count=row[7],
    )
