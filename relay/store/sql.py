"""SQL shared by the backends: the schema's shape, row mapping, filters and cursors.

Both SQLite and PostgreSQL speak the statements here (row-value comparisons,
``LIKE ... ESCAPE``, ``RETURNING``); each backend supplies placeholders and its DDL.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.models import Attempt, Event, EventFilter, NewEvent, Status, storable_text

#: Columns of ``events`` in the order :func:`row_to_event` reads them.
EVENT_COLUMNS = (
    "id, seq, type, body, status, received_at, object, entity_id, object_key, occurred_at, "
    "updated_at, instance_id, attempt_count, retry_step, next_attempt_at, last_error, "
    "delivered_at, force"
)
ATTEMPT_COLUMNS = "at, target, status_code, duration_ms, outcome, error"
#: :data:`EVENT_COLUMNS` for an export: an event in flight (its ``next_attempt_at`` is
#: its lease's end) or parked behind an older one goes out with none, and
#: :func:`import_params` makes it due at once (leases are not copied).
EXPORT_COLUMNS = EVENT_COLUMNS.replace(
    "next_attempt_at", "CASE WHEN lease_expires_at IS NULL THEN next_attempt_at END"
)
#: Columns every insert writes, in the order :func:`insert_params` gives them.
INSERT_COLUMNS = (
    "id, type, body, status, received_at, object, entity_id, object_key, occurred_at,"
    " updated_at, instance_id, ord_at, ord_upd"
)
#: Extra columns an exported event carries into :meth:`Store.import_event`.
IMPORT_COLUMNS = "attempt_count, retry_step, next_attempt_at, last_error, delivered_at, force"

OLDEST_PENDING = "SELECT min(received_at) FROM events WHERE status = 'pending'"
LAST_HEARTBEAT = "SELECT max(last_seen) FROM workers"
#: Workers silent this long are forgotten (each process start registers a new id).
WORKER_RETENTION_MS = 7 * 86400 * 1000
PRUNE_WORKERS = "DELETE FROM workers WHERE last_seen < {ph}"
HEARTBEAT = (
    "INSERT INTO workers (id, last_seen) VALUES ({ph}, {ph})"
    " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen"
)


def insert_params(event: NewEvent | Event) -> tuple[Any, ...]:
    """Values for :data:`INSERT_COLUMNS` (the order key as :func:`relay.models.order_key`)."""
    return (
        event.id,
        event.type,
        event.body,
        str(event.status),
        event.received_at_ms,
        event.object,
        event.entity_id,
        event.object_key,
        event.occurred_at_ms,
        event.updated_at_ms,
        event.instance_id,
        *event.order,
    )


def pending_at(event: NewEvent) -> int | None:
    """``next_attempt_at`` of a newly stored event: due at once if pending, else never."""
    return event.received_at_ms if event.status == Status.PENDING else None


def import_params(event: Event) -> tuple[Any, ...]:
    """Values for :data:`INSERT_COLUMNS` then :data:`IMPORT_COLUMNS`."""
    return (
        *insert_params(event),
        event.attempt_count,
        event.retry_step,
        event.next_attempt_at_ms
        if event.status != Status.PENDING or event.next_attempt_at_ms is not None
        else event.received_at_ms,
        # A store written before errors were made storable may hold NUL in them.
        storable_text(event.last_error),
        event.delivered_at_ms,
        event.force,
    )


def attempt_params(event_id: str, a: Attempt) -> tuple[Any, ...]:
    """Values for ``event_id`` then :data:`ATTEMPT_COLUMNS`."""
    return (event_id, a.at_ms, a.target, a.status_code, a.duration_ms, a.outcome, a.error)


def import_attempt_params(event_id: str, a: Attempt) -> tuple[Any, ...]:
    """:func:`attempt_params` of an imported attempt: a store written before errors were
    made storable may hold NUL in them (the worker's own errors already are)."""
    return attempt_params(event_id, dataclasses.replace(a, error=storable_text(a.error)))


def row_to_event(row: Sequence[Any], attempts: tuple[Attempt, ...] = ()) -> Event:
    """Map a row selected with :data:`EVENT_COLUMNS`."""
    return Event(
        id=row[0],
        seq=row[1],
        type=row[2],
        body=bytes(row[3]),
        status=Status(row[4]),
        received_at_ms=row[5],
        object=row[6],
        entity_id=row[7],
        object_key=row[8],
        occurred_at_ms=row[9],
        updated_at_ms=row[10],
        instance_id=row[11],
        attempt_count=row[12],
        retry_step=row[13],
        next_attempt_at_ms=row[14],
        last_error=row[15],
        delivered_at_ms=row[16],
        force=bool(row[17]),
        attempts=attempts,
    )


def row_to_attempt(row: Sequence[Any]) -> Attempt:
    """Map a row selected with :data:`ATTEMPT_COLUMNS`."""
    return Attempt(
        at_ms=row[0],
        target=row[1],
        status_code=row[2],
        duration_ms=float(row[3]),
        outcome=row[4],
        error=row[5],
    )


def among(ph: str, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """``column`` among ``values`` as one condition and its parameters: an ``IN`` list on
    SQLite, one array parameter on PostgreSQL (one statement, one plan, any length)."""
    if ph == "?":
        return f"{column} IN ({', '.join('?' * len(values))})", tuple(values)
    return f"{column} = ANY(%s)", (list(values),)


def glob_to_like(glob: str) -> str:
    """Shell glob (``organization.*``) as a LIKE pattern with ``\\`` as the escape."""
    out = []
    for ch in glob:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def filter_clause(flt: EventFilter, ph: str) -> tuple[str, list[Any]]:
    """WHERE conditions (joined with AND, ``TRUE`` if none) and their parameters."""
    parts: list[str] = []
    params: list[Any] = []
    if flt.ids:
        parts.append(f"id IN ({', '.join([ph] * len(flt.ids))})")
        params.extend(flt.ids)
    if flt.statuses:
        parts.append(f"status IN ({', '.join([ph] * len(flt.statuses))})")
        params.extend(str(s) for s in flt.statuses)
    if flt.type_glob:
        parts.append(f"type LIKE {ph} ESCAPE '\\'")
        params.append(glob_to_like(flt.type_glob))
    if flt.entity_id:
        parts.append(f"entity_id = {ph}")
        params.append(flt.entity_id)
    if flt.since_ms is not None:
        parts.append(f"received_at >= {ph}")
        params.append(flt.since_ms)
    if flt.until_ms is not None:
        parts.append(f"received_at < {ph}")
        params.append(flt.until_ms)
    return (" AND ".join(parts) or "1=1"), params


def encode_cursor(seq: int) -> str:
    """An opaque cursor for "events older than this one"."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The sequence number inside a cursor; ValueError if it is not one of ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    text = base64.urlsafe_b64decode(padded.encode()).decode()
    prefix, _, seq = text.partition(":")
    if prefix != "seq" or not seq.isdigit():
        raise ValueError("not a cursor")
    return int(seq)


def zero_counts(found: Mapping[str, int]) -> dict[str, int]:
    """Counts per status with every status present."""
    return {str(s): int(found.get(str(s), 0)) for s in Status}


def replayable_statuses(flt: EventFilter, *, force: bool) -> list[str]:
    """Statuses a replay may move back to pending (see :meth:`Store.replay`)."""
    if force:
        allowed = {Status.FAILED, Status.SKIPPED, Status.DELIVERED, Status.SUPERSEDED}
    elif flt.ids:
        allowed = {Status.FAILED, Status.SKIPPED, Status.DELIVERED}
    else:
        allowed = {Status.FAILED}
    if flt.statuses:
        allowed &= set(flt.statuses)
    return sorted(map(str, allowed))


def apply_steps(
    conn: Any,
    steps: Sequence[tuple[int, str]],
    run: Callable[[str], object],
    *,
    ph: str,
    now_ms: int,
    before_first: Callable[[], object] | None = None,
) -> list[int]:
    """The numbered migrations of either backend: create the bookkeeping table, then run
    (with ``run``) and record every step not yet recorded, in order; returns the
    versions applied. The caller holds the transaction (and any lock) around it;
    ``before_first`` runs once, before the first step to apply, if there is one."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS relay_schema_migrations"
        " (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
    )
    done = {r[0] for r in conn.execute("SELECT version FROM relay_schema_migrations")}
    applied: list[int] = []
    for version, ddl in steps:
        if version in done:
            continue
        if before_first is not None and not applied:
            before_first()
        run(ddl)
        conn.execute(
            f"INSERT INTO relay_schema_migrations (version, applied_at) VALUES ({ph}, {ph})",
            (version, now_ms),
        )
        applied.append(version)
    return applied
