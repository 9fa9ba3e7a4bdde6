"""The event model: what the relay stores, orders and reports.

Pure data and pure functions; no I/O. Times are UTC epoch milliseconds (``*_ms``)
so that every backend stores and compares plain integers.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: Clerk's envelope ``timestamp`` is milliseconds, but its spec examples use seconds.
#: Anything below this (year 2001 in ms, year 33658 in s) is taken to be seconds.
_SECONDS_CUTOFF = 1_000_000_000_000
#: Times at or past this (2^53 ms, the year 287,396) are not times Clerk sends: such a
#: value is "unknown time" and the event is ordered by when it arrived. The bound also
#: keeps every stored time inside SQLite's and PostgreSQL's 64-bit integers.
MAX_TIME_MS = 2**53


class Status(StrEnum):
    """Where an event is in its life. Only ``pending`` events are ever delivered."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"


#: Ids of events queued by ``relay reconcile`` start with this (Svix's start with ``msg_``),
#: which is how every listing tells them from webhooks without a column of its own.
RECONCILE_ID_PREFIX = "reconcile_"


def source_of(event_id: str) -> str:
    """Where an event came from: ``"reconcile"`` (``relay reconcile``) or ``"webhook"``."""
    return "reconcile" if event_id.startswith(RECONCILE_ID_PREFIX) else "webhook"


#: Statuses ``relay purge`` may delete: the event needs nothing more.
PURGEABLE = frozenset({Status.DELIVERED, Status.SKIPPED, Status.SUPERSEDED})


def to_ms(value: object) -> int | None:
    """Clerk timestamp (seconds or milliseconds, int or float) as epoch ms, else None.

    None ("unknown time") also for values Clerk would never send: NaN, infinities and
    anything at or past :data:`MAX_TIME_MS`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value <= 0:
        return None
    ms = int(value * 1000) if value < _SECONDS_CUTOFF else int(value)
    return ms if ms < MAX_TIME_MS else None


def storable_text(value: object) -> str | None:
    """A string from the body as a text column can hold it, or None if not a string.

    JSON can carry what UTF-8 text columns cannot: lone surrogates (``"\\ud800"``, which
    SQLite's driver cannot encode) and NUL (which PostgreSQL's ``text`` refuses). Such a
    string is kept as its JSON escape, so it stays recognisable and the event storable;
    the body itself is stored as bytes, untouched.
    """
    if not isinstance(value, str):
        return None
    if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
        return json.dumps(value)[1:-1]
    return value


def object_key(envelope: Mapping[str, Any]) -> str | None:
    """The Clerk object an event is about (``data.object`` + ``data.id``), for ordering.

    Events without an identifiable object (``email.created`` has one; a malformed
    body may not) are not ordered against anything.
    """
    data = envelope.get("data")
    if not isinstance(data, Mapping):
        return None
    obj, oid = storable_text(data.get("object")), storable_text(data.get("id"))
    if obj is None or not oid:
        return None
    return f"{obj}:{oid}"


#: Second order-key part of a deletion: after every state of the object at the same
#: instant. A deleted payload has no ``updated_at``; ordering it as 0 would put
#: ``user.deleted`` before a ``user.updated`` with the same envelope timestamp (Clerk's
#: own examples all share one timestamp) and resurrect the user.
DELETE_ORDER = 2**62


def order_key(
    event_type: str, occurred_at_ms: int | None, received_at_ms: int, updated_at_ms: int | None
) -> tuple[int, int]:
    """``(ord_at, ord_upd)``: when Clerk says it happened, then the object's version.

    Receipt order (the store's ``seq``) breaks the remaining ties.
    """
    ord_at = occurred_at_ms or received_at_ms
    if event_type.endswith(".deleted"):
        return ord_at, DELETE_ORDER
    return ord_at, updated_at_ms or 0


def is_upsert(event_type: str) -> bool:
    """True for events that carry an object's full state (may be superseded by newer state)."""
    return event_type.endswith((".created", ".updated"))


def matches_any(event_type: str, globs: Sequence[str]) -> bool:
    """Whether ``event_type`` matches one of the shell-style globs (``organization.*``)."""
    return any(fnmatch.fnmatchcase(event_type, g) for g in globs)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A verified webhook, ready to be committed. ``body`` is Clerk's bytes, untouched."""

    id: str
    type: str
    body: bytes
    received_at_ms: int
    status: Status = Status.PENDING
    object: str | None = None
    entity_id: str | None = None
    object_key: str | None = None
    occurred_at_ms: int | None = None
    updated_at_ms: int | None = None
    instance_id: str | None = None

    @property
    def order(self) -> tuple[int, int]:
        """``(ord_at, ord_upd)`` as the store keeps them (see :func:`order_key`)."""
        return order_key(self.type, self.occurred_at_ms, self.received_at_ms, self.updated_at_ms)

    @classmethod
    def from_envelope(
        cls,
        event_id: str,
        body: bytes,
        envelope: Mapping[str, Any],
        *,
        received_at_ms: int,
        status: Status = Status.PENDING,
    ) -> NewEvent:
        """Build from the parsed envelope; every ordering field is derived here, once."""
        data = envelope.get("data")
        data = data if isinstance(data, Mapping) else {}
        return cls(
            id=event_id,
            type=storable_text(envelope["type"]) or str(envelope["type"]),
            body=body,
            received_at_ms=received_at_ms,
            status=status,
            object=storable_text(data.get("object")),
            entity_id=storable_text(data.get("id")),
            object_key=object_key(envelope),
            occurred_at_ms=to_ms(envelope.get("timestamp")),
            updated_at_ms=to_ms(data.get("updated_at")),
            instance_id=storable_text(envelope.get("instance_id")),
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt, as the attempts log keeps it."""

    at_ms: int
    target: str
    status_code: int | None
    duration_ms: float
    outcome: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at_ms,
            "target": self.target,
            "statusCode": self.status_code,
            "durationMs": round(self.duration_ms, 1),
            "outcome": self.outcome,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class BodyConflict:
    """A delivery under an already stored svix-id whose body differed (it was dropped)."""

    at_ms: int
    body_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at_ms, "bodySha256": self.body_sha256}


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event with its delivery state."""

    id: str
    seq: int
    type: str
    body: bytes
    status: Status
    received_at_ms: int
    object: str | None
    entity_id: str | None
    object_key: str | None
    occurred_at_ms: int | None
    updated_at_ms: int | None
    instance_id: str | None
    attempt_count: int = 0
    retry_step: int = 0
    next_attempt_at_ms: int | None = None
    last_error: str | None = None
    delivered_at_ms: int | None = None
    force: bool = False
    attempts: tuple[Attempt, ...] = field(default=())
    body_conflicts: tuple[BodyConflict, ...] = field(default=())

    @property
    def order(self) -> tuple[int, int]:
        """``(ord_at, ord_upd)`` as the store keeps them (see :func:`order_key`)."""
        return order_key(self.type, self.occurred_at_ms, self.received_at_ms, self.updated_at_ms)

    @property
    def source(self) -> str:
        """``"webhook"`` or ``"reconcile"`` (see :func:`source_of`)."""
        return source_of(self.id)

    def envelope(self) -> dict[str, Any]:
        """The parsed body. Ingest checked it is a JSON object, so this cannot fail."""
        value = json.loads(self.body)
        assert isinstance(value, dict)  # noqa: S101 - ingest guarantees it
        return value

    def to_dict(self, *, with_attempts: bool = False) -> dict[str, Any]:
        """The stable JSON shape of the CLI's ``--json`` and the admin API."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "status": str(self.status),
            "object": self.object,
            "entityId": self.entity_id,
            "occurredAt": self.occurred_at_ms,
            "receivedAt": self.received_at_ms,
            "attemptCount": self.attempt_count,
            "nextAttemptAt": self.next_attempt_at_ms,
            "lastError": self.last_error,
            "deliveredAt": self.delivered_at_ms,
            "source": self.source,
        }
        if with_attempts:
            out["attempts"] = [a.to_dict() for a in self.attempts]
            out["bodyConflicts"] = [c.to_dict() for c in self.body_conflicts]
        return out


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a list, replay or purge applies to. Empty fields match everything."""

    statuses: tuple[Status, ...] = ()
    type_glob: str | None = None
    entity_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Page:
    """One page of events, newest first; ``next_cursor`` is None on the last page."""

    events: list[Event]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to write after an attempt: the new status and when to try again."""

    status: Status
    next_attempt_at_ms: int | None = None
    error: str | None = None
    #: Whether this attempt uses up a step of the retry schedule. Attempts made while
    #: the target is known to be down or misconfigured are not the event's fault.
    charged: bool = True


class TargetState(StrEnum):
    """Health of a delivery target, as every worker and operator sees it."""

    UP = "up"
    DOWN = "down"
    MISCONFIGURED = "misconfigured"


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """One target's row in the store (see :mod:`relay.delivery.target`). Times are epoch ms."""

    target: str
    state: TargetState = TargetState.UP
    since_ms: int = 0
    reason: str | None = None
    last_success_ms: int | None = None
    next_probe_ms: int | None = None
    probe_interval_ms: int = 0
    probe_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The contract's shape (``relay status --json``, /readyz, the admin API)."""
        return {
            "target": self.target,
            "state": str(self.state),
            "since": self.since_ms,
            "lastSuccessAt": self.last_success_ms,
            "reason": self.reason,
            "probes": self.probe_count,
            "nextProbeAt": self.next_probe_ms,
        }


class RunStatus(StrEnum):
    """Where a reconcile run is: asked for (admin API), running, or finished."""

    REQUESTED = "requested"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ReconcileRun:
    """One ``relay reconcile`` run as its history keeps it (``id`` None until saved)."""

    id: int | None
    trigger: str  # "cli", "schedule" or "admin"
    dry_run: bool
    status: RunStatus
    requested_at_ms: int
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    #: The per-kind counts (``{"users": {"clerk": n, ...}}``) once finished.
    summary: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The admin API's shape."""
        return {
            "id": self.id,
            "trigger": self.trigger,
            "dryRun": self.dry_run,
            "status": str(self.status),
            "requestedAt": self.requested_at_ms,
            "startedAt": self.started_at_ms,
            "finishedAt": self.finished_at_ms,
            "summary": self.summary,
            "error": self.error,
        }
