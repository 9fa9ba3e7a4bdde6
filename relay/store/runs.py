"""Reconcile history and named leases: the store verbs scheduled reconciles need.

A mixin of :class:`~relay.store.base.SQLStoreBase`: the SQL is the same on SQLite and
PostgreSQL (``ON CONFLICT ... DO UPDATE ... WHERE``, ``RETURNING``), so both backends
get it from here. Tables: ``leases`` and ``reconcile_runs`` (SQLite step 4,
PostgreSQL step 5).

A lease is a row ``(name, owner, expires_at)``: whoever holds an unexpired row for a
name is the only process doing that job. Taking it is one statement, so two workers
asking at once cannot both win; a holder that dies simply lets it expire.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from relay.models import ReconcileRun, RunStatus, storable_text

RUN_COLUMNS = "id, trigger, dry_run, status, requested_at, started_at, finished_at, summary, error"


class RunsAndLeases:
    """``acquire_lease``, ``release_lease``, ``save_reconcile_run``, ``reconcile_runs``."""

    PH: ClassVar[str]

    def _query(self, statement: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def acquire_lease(self, name: str, owner: str, *, now_ms: int, ttl_ms: int) -> bool:
        ph = self.PH
        with self._tx() as conn:
            cur = conn.execute(
                f"INSERT INTO leases (name, owner, expires_at) VALUES ({ph}, {ph}, {ph})"
                " ON CONFLICT (name) DO UPDATE"
                " SET owner = excluded.owner, expires_at = excluded.expires_at"
                f" WHERE leases.owner = excluded.owner OR leases.expires_at <= {ph}",
                (name, owner, now_ms + ttl_ms, now_ms),
            )
            return bool(cur.rowcount == 1)

    def release_lease(self, name: str, owner: str) -> None:
        ph = self.PH
        with self._tx() as conn:
            conn.execute(f"DELETE FROM leases WHERE name = {ph} AND owner = {ph}", (name, owner))

    def save_reconcile_run(self, run: ReconcileRun) -> int:
        ph = self.PH
        summary = None if run.summary is None else json.dumps(run.summary)
        values = (
            run.trigger,
            run.dry_run,
            str(run.status),
            run.requested_at_ms,
            run.started_at_ms,
            run.finished_at_ms,
            summary,
            storable_text(run.error),  # it quotes Clerk's or Convex's message
        )
        with self._tx() as conn:
            if run.id is None:
                cur = conn.execute(
                    "INSERT INTO reconcile_runs (trigger, dry_run, status, requested_at,"
                    " started_at, finished_at, summary, error)"
                    f" VALUES ({', '.join([ph] * 8)}) RETURNING id",
                    values,
                )
                return int(cur.fetchone()[0])
            conn.execute(
                f"UPDATE reconcile_runs SET trigger = {ph}, dry_run = {ph}, status = {ph},"
                f" requested_at = {ph}, started_at = {ph}, finished_at = {ph}, summary = {ph},"
                f" error = {ph} WHERE id = {ph}",
                (*values, run.id),
            )
            return run.id

    def reconcile_runs(self, *, limit: int, status: RunStatus | None = None) -> list[ReconcileRun]:
        ph = self.PH
        where, params = ("WHERE status = " + ph, [str(status)]) if status else ("", [])
        rows = self._query(
            f"SELECT {RUN_COLUMNS} FROM reconcile_runs {where} ORDER BY id DESC LIMIT {ph}",
            [*params, limit],
        )
        return [_row_to_run(r) for r in rows]


def _row_to_run(row: Any) -> ReconcileRun:
    return ReconcileRun(
        id=row[0],
        trigger=row[1],
        dry_run=bool(row[2]),
        status=RunStatus(row[3]),
        requested_at_ms=row[4],
        started_at_ms=row[5],
        finished_at_ms=row[6],
        summary=None if row[7] is None else json.loads(row[7]),
        error=row[8],
    )
