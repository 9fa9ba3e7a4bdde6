"""Durable storage of events, behind one small interface with one module per backend.

The verbs are what ingest, the worker, the CLI and the admin API need, no more.
Every backend passes the same contract suite (``tests/support/store_contract.py``).

Claims are leases: a claimed event stays ``pending`` with ``lease_owner`` and
``lease_expires_at`` set, so a worker that dies mid-delivery loses nothing; its
claim expires and another worker takes the event.

Per-object ordering is enforced by :meth:`Store.claim` itself, so it holds for any
number of workers on any number of machines. The rule, and how a claim keeps its cost
flat however large the backlog, is :mod:`relay.store.ordering`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from relay.models import (
    Attempt,
    BodyConflict,
    Event,
    EventFilter,
    NewEvent,
    Outcome,
    Page,
    ReconcileRun,
    RunStatus,
    TargetHealth,
    TargetState,
)

if TYPE_CHECKING:
    from relay.store.committer import Committer


class Store(Protocol):
    """What every backend provides. All times are epoch milliseconds passed in by the caller."""

    url_for_display: str

    def migrate(self) -> None:
        """Create or upgrade the schema; safe to call on every start."""

    def insert(self, event: NewEvent) -> bool:
        """Commit durably, then wake listening workers if the event is new and due;
        False when the id is already stored (nothing changes)."""

    def claim(self, worker_id: str, *, now_ms: int, lease_ms: int, limit: int) -> list[Event]:
        """Lease up to ``limit`` due events, honouring per-object order."""

    def complete(self, event_id: str, worker_id: str, attempt: Attempt, outcome: Outcome) -> bool:
        """Log the attempt and apply the outcome; False if the lease was lost meanwhile."""

    def complete_many(
        self, worker_id: str, results: Sequence[tuple[str, Attempt, Outcome]]
    ) -> list[bool]:
        """:meth:`complete` for several ``(event_id, attempt, outcome)`` in one transaction."""

    def release(self, event_id: str, worker_id: str, now_ms: int) -> None:
        """Give a leased event back, due at ``now_ms`` (shutdown before an attempt started)."""

    def get(self, event_id: str) -> Event | None:
        """One event with every attempt, or None."""

    def list_events(self, flt: EventFilter, *, limit: int, cursor: str | None = None) -> Page:
        """Events matching ``flt``, newest first, ``limit`` per page."""

    def replay(self, flt: EventFilter, *, now_ms: int, force: bool = False) -> list[str]:
        """Make matching events pending and due now; returns their ids.

        Without ``force`` only ``failed`` events (and any named by id except
        ``superseded`` ones) are replayed; ``force`` also replays superseded and
        delivered events and stops them being superseded again.
        """

    def purge(self, *, older_than_ms: int) -> int:
        """Delete delivered/skipped/superseded events received before the cutoff."""

    def counts(self) -> dict[str, int]:
        """Number of events per status (every status present, zeros included)."""

    def oldest_pending_ms(self) -> int | None:
        """``received_at`` of the oldest pending event, or None."""

    def heartbeat(self, worker_id: str, *, now_ms: int) -> None:
        """Record that a delivery worker is alive."""

    def last_heartbeat_ms(self) -> int | None:
        """The newest heartbeat of any worker, or None."""

    def notify(self) -> None:
        """Tell waiting workers there is new work (best effort, never raises)."""

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` whenever :meth:`notify` is called anywhere; returns a stop function."""

    def ingest_burst_s(self) -> float:
        """Seconds the latest "ingest is in a burst" signal still holds; 0.0 when there is
        none. Only meaningful in the process that listens; a backend without
        the signal always says 0.0."""

    def export(self) -> Iterable[tuple[Event, list[Attempt]]]:
        """Every event with its attempts, oldest first (for ``relay migrate-store``)."""

    def import_event(self, event: Event, attempts: list[Attempt]) -> bool:
        """Insert an exported event as it is (status, counters, attempts); False if present."""

    def target_health(self, target: str) -> TargetHealth | None:
        """The health row of one delivery target, or None before anything was recorded."""

    def targets(self) -> list[TargetHealth]:
        """Every target's health row."""

    def set_target_state(
        self,
        target: str,
        state: TargetState,
        *,
        now_ms: int,
        reason: str | None = None,
        probe_interval_ms: int = 0,
    ) -> bool:
        """Move a target to ``state`` (first probe ``probe_interval_ms`` from now when not
        up); True only for the caller whose call changed it (exactly one of several)."""

    def take_probe(self, target: str, *, now_ms: int, max_interval_ms: int) -> bool:
        """Take the next probe of a target that is not up, if it is due: True for exactly
        one caller; the gap to the next one doubles up to ``max_interval_ms``."""

    def target_succeeded(self, target: str, *, now_ms: int) -> None:
        """Record a delivery to the target (its "last success")."""

    def release_held(self, *, now_ms: int) -> int:
        """Make every pending event that waits on a backoff due now (the target is back);
        returns how many, and wakes the workers."""

    def acquire_lease(self, name: str, owner: str, *, now_ms: int, ttl_ms: int) -> bool:
        """Take or renew the lease ``name`` until ``now_ms + ttl_ms``; False while another
        owner holds it unexpired (exactly one of several callers wins)."""

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""

    def save_reconcile_run(self, run: ReconcileRun) -> int:
        """Insert (``run.id`` None) or update a reconcile run; returns its id."""

    def reconcile_runs(self, *, limit: int, status: RunStatus | None = None) -> list[ReconcileRun]:
        """Reconcile runs, newest first, optionally only those in ``status``."""

    def record_body_conflict(self, event_id: str, *, body_sha256: str, now_ms: int) -> None:
        """Note that a delivery under ``event_id``'s svix-id carried a different body
        (the stored one is kept); :meth:`get` shows them as ``body_conflicts``."""

    def body_conflicts(self, event_id: str) -> tuple[BodyConflict, ...]:
        """The recorded conflicting bodies of one event, oldest first."""

    def start_console_session(self, session_hash: str, *, now_ms: int, expires_ms: int) -> None:
        """Record a signed-in console session (by the hash of its id); drops expired ones."""

    def console_session_valid(self, session_hash: str, *, now_ms: int) -> bool:
        """Whether that session was started, has not ended and has not expired."""

    def end_console_session(self, session_hash: str) -> None:
        """End a console session (sign-out); unknown ones are ignored."""

    def group_committer(self) -> Committer | None:
        """The group committer ``relay serve`` runs for this store's ingest, if it has one
        (SQLite: one fsync shared by concurrent webhooks; see :mod:`relay.store.committer`)."""

    def committer_lost(self) -> bool:
        """Whether this process's ingest lost its group committer (readiness says so)."""

    def ping(self) -> None:
        """Raise :class:`~relay.errors.StoreError` unless the database answers."""

    def close(self) -> None:
        """Release connections; the store may not be used afterwards."""


def open_store(url: str, *, sync_commits: bool = True) -> Store:
    """The backend for ``RELAY_DATABASE_URL`` (``sqlite:///path`` or ``postgresql://...``).

    ``sync_commits=False`` lets this store's commits return before they reach the disk
    (SQLite ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``): a process
    crash still loses nothing, an OS crash or power cut may undo the last moments.
    Only for writes whose loss is harmless: the delivery worker's leases and outcomes,
    whose loss means an event is delivered once more (Convex handlers dedupe by id).
    Ingest's commits, the ones Clerk is told about, always wait for the disk.
    """
    if url.startswith("sqlite:"):
        from relay.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url, sync_commits=sync_commits)
    if url.startswith(("postgresql:", "postgres:")):
        from relay.store.postgres import PostgresStore

        return PostgresStore.from_url(url, sync_commits=sync_commits)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")
