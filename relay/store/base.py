"""The verbs whose SQL is the same on every backend, given a placeholder and two primitives.

A backend subclasses :class:`SQLStoreBase`, sets :attr:`PH` (``?`` or ``%s``) and
provides ``_query`` (one statement, rows back) and ``_tx`` (a connection inside a
committed transaction). Claims, inserts, replays and purges stay in the backends: that is where
their locking differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from relay.models import Attempt, BodyConflict, Event, EventFilter, Outcome, Page, Status
from relay.store import sql


class SQLStoreBase:
    """Shared read verbs and the heartbeat for SQL backends."""

    PH: ClassVar[str]

    def _query(self, statement: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def complete(self, event_id: str, worker_id: str, attempt: Attempt, outcome: Outcome) -> bool:
        return self.complete_many(worker_id, [(event_id, attempt, outcome)])[0]

    def complete_many(
        self, worker_id: str, results: Sequence[tuple[str, Attempt, Outcome]]
    ) -> list[bool]:
        ph = self.PH
        kept = []
        with self._tx() as conn:
            for event_id, attempt, outcome in results:
                delivered_at = attempt.at_ms if outcome.status == Status.DELIVERED else None
                conn.execute(
                    f"INSERT INTO attempts (event_id, {sql.ATTEMPT_COLUMNS})"
                    f" VALUES ({', '.join([ph] * 7)})",
                    sql.attempt_params(event_id, attempt),
                )
                cur = conn.execute(
                    f"UPDATE events SET status = {ph}, attempt_count = attempt_count + 1,"
                    f" retry_step = retry_step + 1, next_attempt_at = {ph}, last_error = {ph},"
                    f" delivered_at = COALESCE({ph}, delivered_at),"
                    " lease_owner = NULL, lease_expires_at = NULL"
                    f" WHERE id = {ph} AND lease_owner = {ph}",
                    (
                        str(outcome.status),
                        outcome.next_attempt_at_ms,
                        outcome.error,
                        delivered_at,
                        event_id,
                        worker_id,
                    ),
                )
                kept.append(cur.rowcount == 1)
        return kept

    def release(self, event_id: str, worker_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL"
                f" WHERE id = {self.PH} AND lease_owner = {self.PH}",
                (event_id, worker_id),
            )

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
        ph = self.PH
        where, params = sql.filter_clause(flt, ph)
        if cursor is not None:
            where += f" AND seq < {ph}"
            params.append(sql.decode_cursor(cursor))
        rows = self._query(
            f"SELECT {sql.EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq DESC LIMIT {ph}",
            [*params, limit + 1],
        )
        events = [sql.row_to_event(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(events, sql.encode_cursor(events[-1].seq) if more and events else None)

    def counts(self) -> dict[str, int]:
        return sql.zero_counts(dict(self._query(sql.COUNT_BY_STATUS)))

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
