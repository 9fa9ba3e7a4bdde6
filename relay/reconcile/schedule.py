"""Reconciles without a person at a terminal: on a schedule, or asked for by the admin API.

Every ``relay worker`` (``relay serve`` runs one) with ``CLERK_SECRET_KEY`` set runs a
:class:`ReconcileScheduler` thread. Each check takes the store lease ``reconcile``
first, so with any number of workers on any number of machines exactly one runs a
reconcile at a time; a worker that dies mid-run lets the lease expire and its run
is marked failed by the next holder (a re-run resumes: queued events are never
queued twice). What runs: a run the admin API requested, else, with
``RELAY_RECONCILE_EVERY`` set, a scheduled one once the newest full run is that old.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog

from relay.errors import Conflict, RelayError
from relay.models import ReconcileRun, RunStatus
from relay.reconcile.reconciler import Counts, Kind, Reconciler, kinds_for
from relay.settings import Settings
from relay.store import Store

log = structlog.get_logger("relay.reconcile")

LEASE_NAME = "reconcile"
#: The lease outlives a stalled holder by this much; a running reconcile renews it
#: at least every :data:`RENEW_EVERY_MS`.
LEASE_TTL_MS = 10 * 60_000
RENEW_EVERY_MS = 30_000
#: How often a worker looks for due or requested runs (the first time soon after start).
CHECK_EVERY_S = 15.0
FIRST_CHECK_AFTER_S = 1.0
#: Runs looked at to find the newest full (not dry) run.
_HISTORY = 50


def execute(
    store: Store,
    reconciler: Reconciler,
    run: ReconcileRun,
    kinds: Sequence[Kind],
    *,
    raise_errors: bool = False,
) -> tuple[ReconcileRun, dict[str, Counts] | None]:
    """Run ``run`` and keep its record in the store (running, then done or failed);
    the finished record and the counts. A failure is recorded, then re-raised if
    ``raise_errors``. The reconciler's clients are closed afterwards."""
    now_ms = reconciler.now_ms
    run = replace(run, status=RunStatus.RUNNING, started_at_ms=now_ms())
    run = replace(run, id=store.save_reconcile_run(run))
    try:
        result = reconciler.run(kinds)
    except RelayError as exc:
        failed = replace(run, status=RunStatus.FAILED, finished_at_ms=now_ms(), error=str(exc))
        store.save_reconcile_run(failed)
        if raise_errors:
            raise
        return failed, None
    finally:
        reconciler.close()
    done = replace(run, status=RunStatus.DONE, finished_at_ms=now_ms(), summary=_summary(result))
    store.save_reconcile_run(done)
    return done, result


def _summary(result: dict[str, Counts]) -> dict[str, dict[str, int | None]]:
    return {kind: counts.to_dict() for kind, counts in result.items()}


class ReconcileScheduler:
    """The check a worker makes every :data:`CHECK_EVERY_S`; :meth:`tick` is one check."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        owner: str | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self.settings = settings
        self.check_every_s = check_every_s
        self.store = store
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.now_ms = now_ms
        self._stop = threading.Event()
        self._renewed_ms = 0

    def tick(self) -> ReconcileRun | None:
        """Run what is due, if this worker gets the lease; the finished run, if any."""
        now = self.now_ms()
        if not self.store.acquire_lease(LEASE_NAME, self.owner, now_ms=now, ttl_ms=LEASE_TTL_MS):
            return None
        self._renewed_ms = now
        try:
            self._fail_interrupted(now)
            run = self._next(now)
            if run is None:
                return None
            log.info("reconcile_started", run_id=run.id, trigger=run.trigger, dry_run=run.dry_run)
            finished = self._execute(run)
            log.info(
                "reconcile_finished",
                run_id=finished.id,
                status=str(finished.status),
                error=finished.error,
                **(finished.summary or {}),
            )
            return finished
        finally:
            self.store.release_lease(LEASE_NAME, self.owner)

    def _execute(self, run: ReconcileRun) -> ReconcileRun:
        try:
            reconciler = Reconciler.from_settings(
                self.settings, self.store, now_ms=self.now_ms, dry_run=run.dry_run
            )
            kinds = kinds_for(self.settings, None)
        except RelayError as exc:
            failed = replace(
                run, status=RunStatus.FAILED, finished_at_ms=self.now_ms(), error=str(exc)
            )
            self.store.save_reconcile_run(failed)
            return failed
        reconciler.on_progress = self._renew
        finished, _ = execute(self.store, reconciler, run, kinds)
        return finished

    def _renew(self, _kind: str, _done: int) -> None:
        now = self.now_ms()
        if now - self._renewed_ms >= RENEW_EVERY_MS:
            self.store.acquire_lease(LEASE_NAME, self.owner, now_ms=now, ttl_ms=LEASE_TTL_MS)
            self._renewed_ms = now

    def _fail_interrupted(self, now: int) -> None:
        """Scheduled or requested runs still "running" lost their worker: we hold the lease."""
        for run in self.store.reconcile_runs(limit=_HISTORY, status=RunStatus.RUNNING):
            if run.trigger != "cli":  # CLI runs hold no lease; they may be running now
                self.store.save_reconcile_run(
                    replace(
                        run,
                        status=RunStatus.FAILED,
                        finished_at_ms=now,
                        error="interrupted (its worker stopped); the next run resumes",
                    )
                )

    def _next(self, now: int) -> ReconcileRun | None:
        requested = self.store.reconcile_runs(limit=1, status=RunStatus.REQUESTED)
        if requested:
            return requested[0]
        every_s = self.settings.reconcile_every_s
        if not every_s:
            return None
        full = [r for r in self.store.reconcile_runs(limit=_HISTORY) if not r.dry_run]
        newest = max((r.started_at_ms or r.requested_at_ms for r in full), default=None)
        if newest is not None and now - newest < every_s * 1000:
            return None
        return ReconcileRun(None, "schedule", False, RunStatus.REQUESTED, now)

    def start(self) -> Callable[[], None]:
        """Check in a daemon thread until the returned function is called."""

        def loop() -> None:
            # The first check comes soon after start: a schedule that is due (or never
            # ran) should not wait a whole interval after every deploy.
            delay = min(self.check_every_s, FIRST_CHECK_AFTER_S)
            while not self._stop.wait(delay):
                delay = self.check_every_s
                try:
                    finished = self.tick()
                except Exception:  # one bad check must not end the schedule
                    log.exception("reconcile_check_failed")
                else:
                    log.debug("reconcile_checked", owner=self.owner, ran=finished is not None)

        thread = threading.Thread(target=loop, name="reconcile-scheduler", daemon=True)
        thread.start()

        def stop() -> None:
            self._stop.set()
            thread.join(timeout=5)

        return stop


def request_run(store: Store, *, dry_run: bool, now_ms: int) -> ReconcileRun:
    """Ask the workers for a run (admin API): saved as ``requested``, picked up within
    :data:`CHECK_EVERY_S` by whichever worker holds the lease."""
    run = ReconcileRun(None, "admin", dry_run, RunStatus.REQUESTED, now_ms)
    return replace(run, id=store.save_reconcile_run(run))


#: Runs the admin API and the console list.
RECONCILE_RUNS_SHOWN = 20


def ask_for_reconcile(
    store: Store, settings: Settings, *, dry_run: bool, now_ms: int
) -> ReconcileRun:
    """Record a requested run for the workers (shared with the console)."""
    if not settings.clerk_secret_key:
        raise Conflict("reconcile is off: set CLERK_SECRET_KEY (and run a relay worker)")
    if store.reconcile_runs(limit=1, status=RunStatus.REQUESTED):
        raise Conflict("a requested reconcile is already waiting for a worker")
    return request_run(store, dry_run=dry_run, now_ms=now_ms)
