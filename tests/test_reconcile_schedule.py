"""Scheduled and requested reconciles: the lease, what is due, the run history.

A real SQLite store and the Clerk emulator; Convex's state is not read (HTTP-action
target without a deploy key), which is enough to see runs start, finish and count.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from harness.clerk_emulator import SECRET_KEY, ClerkEmulator
from harness.clerk_objects import T0, clerk_user
from harness.factories import SECRET
from relay.models import ReconcileRun, RunStatus
from relay.reconcile.schedule import LEASE_NAME, LEASE_TTL_MS, ReconcileScheduler, request_run
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore

HOUR_MS = 3_600_000


class Clock:
    def __init__(self) -> None:
        self.ms = T0 + 10 * HOUR_MS

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clerk() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as emulator:
        emulator.put_users(clerk_user(f"user_{i}", updated_at=T0 + i) for i in range(4))
        yield emulator


def settings(clerk: ClerkEmulator, **overrides: object) -> Settings:
    base = Settings(
        webhook_secrets=(SECRET,),
        convex_site_url="http://127.0.0.1:9",
        clerk_secret_key=SECRET_KEY,
        clerk_api_url=clerk.url,
        clerk_rate_per_s=1000.0,
    )
    return base.with_overrides(**overrides)


def scheduler(
    clerk: ClerkEmulator, store: SQLiteStore, clock: Clock, owner: str = "w1", **overrides: object
) -> ReconcileScheduler:
    return ReconcileScheduler(settings(clerk, **overrides), store, owner=owner, now_ms=clock)


def test_nothing_runs_unless_scheduled_or_requested(
    clerk: ClerkEmulator, store: SQLiteStore
) -> None:
    """RELAY_RECONCILE_EVERY unset and nothing requested: a check does nothing."""
    assert scheduler(clerk, store, Clock()).tick() is None
    assert store.reconcile_runs(limit=5) == []
    assert clerk.requests == []


def test_a_requested_run_is_run_and_recorded(clerk: ClerkEmulator, store: SQLiteStore) -> None:
    """The admin API's request is picked up, run, and kept with its counts; lease freed."""
    clock = Clock()
    asked = request_run(store, dry_run=False, now_ms=clock())
    finished = scheduler(clerk, store, clock).tick()
    assert finished is not None and finished.id == asked.id
    assert finished.status is RunStatus.DONE and finished.trigger == "admin"
    assert finished.summary == {
        "users": {"clerk": 4, "convex": None, "missing": 4, "stale": 0, "gone": None, "queued": 4},
        "organizations": {
            "clerk": 0,
            "convex": None,
            "missing": 0,
            "stale": 0,
            "gone": None,
            "queued": 0,
        },
        "memberships": {
            "clerk": 0,
            "convex": None,
            "missing": 0,
            "stale": 0,
            "gone": None,
            "queued": 0,
        },
    }
    assert store.reconcile_runs(limit=5) == [finished]
    assert store.acquire_lease(LEASE_NAME, "someone-else", now_ms=clock(), ttl_ms=1000)


def test_a_dry_run_request_queues_nothing(clerk: ClerkEmulator, store: SQLiteStore) -> None:
    """A requested dry run reports the differences and leaves the outbox empty."""
    clock = Clock()
    request_run(store, dry_run=True, now_ms=clock())
    finished = scheduler(clerk, store, clock).tick()
    assert finished is not None and finished.summary is not None
    assert finished.summary["users"]["missing"] == 4 and finished.summary["users"]["queued"] == 0
    assert store.counts()["pending"] == 0


def test_only_the_lease_holder_runs(clerk: ClerkEmulator, store: SQLiteStore) -> None:
    """While another worker holds the lease, a requested run waits for it."""
    clock = Clock()
    request_run(store, dry_run=False, now_ms=clock())
    assert store.acquire_lease(LEASE_NAME, "w2", now_ms=clock(), ttl_ms=LEASE_TTL_MS)
    assert scheduler(clerk, store, clock).tick() is None
    assert store.reconcile_runs(limit=1)[0].status is RunStatus.REQUESTED
    clock.ms += LEASE_TTL_MS  # w2 died: its lease expires
    finished = scheduler(clerk, store, clock).tick()
    assert finished is not None and finished.status is RunStatus.DONE


def test_two_workers_checking_at_once_run_it_once(clerk: ClerkEmulator, store: SQLiteStore) -> None:
    """Two schedulers ticking together: one run, one set of queued events."""
    clock = Clock()
    request_run(store, dry_run=False, now_ms=clock())
    results: list[ReconcileRun | None] = []
    barrier = threading.Barrier(2)

    def tick(owner: str) -> None:
        barrier.wait()
        results.append(scheduler(clerk, store, clock, owner).tick())

    threads = [threading.Thread(target=tick, args=(o,)) for o in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    assert [r.status for r in store.reconcile_runs(limit=5)] == [RunStatus.DONE]
    assert len(clerk.listed("/users")) == 1


def test_every_runs_when_the_newest_full_run_is_old_enough(
    clerk: ClerkEmulator, store: SQLiteStore
) -> None:
    """RELAY_RECONCILE_EVERY=1h: a run now, none 59 minutes later, another at 1 hour."""
    clock = Clock()
    first = scheduler(clerk, store, clock, reconcile_every_s=3600.0).tick()
    assert first is not None and first.trigger == "schedule" and first.status is RunStatus.DONE
    clock.ms += HOUR_MS - 60_000
    assert scheduler(clerk, store, clock, reconcile_every_s=3600.0).tick() is None
    clock.ms += 60_000
    second = scheduler(clerk, store, clock, reconcile_every_s=3600.0).tick()
    assert second is not None and second.id != first.id
    assert second.summary is not None and second.summary["users"]["queued"] == 0  # same ids


def test_a_run_left_running_by_a_dead_worker_is_marked_failed(
    clerk: ClerkEmulator, store: SQLiteStore
) -> None:
    """The next lease holder marks an orphaned scheduled run failed; CLI runs are left alone."""
    clock = Clock()
    orphan = store.save_reconcile_run(
        ReconcileRun(None, "schedule", False, RunStatus.RUNNING, clock(), clock())
    )
    cli = store.save_reconcile_run(
        ReconcileRun(None, "cli", False, RunStatus.RUNNING, clock(), clock())
    )
    assert scheduler(clerk, store, clock).tick() is None  # nothing due, but it cleaned up
    runs = {r.id: r for r in store.reconcile_runs(limit=5)}
    assert runs[orphan].status is RunStatus.FAILED and "interrupted" in (runs[orphan].error or "")
    assert runs[cli].status is RunStatus.RUNNING


def test_a_failed_run_is_recorded_without_the_key(clerk: ClerkEmulator, store: SQLiteStore) -> None:
    """Clerk refuses the key: the run is failed with Clerk's answer, the key not in it."""
    clock = Clock()
    request_run(store, dry_run=False, now_ms=clock())
    wrong = "sk_test_" + "Nope" * 8
    finished = scheduler(clerk, store, clock, clerk_secret_key=wrong).tick()
    assert finished is not None and finished.status is RunStatus.FAILED
    assert "401" in (finished.error or "") and wrong not in (finished.error or "")


def test_the_scheduler_thread_checks_until_stopped(
    clerk: ClerkEmulator, store: SQLiteStore
) -> None:
    """start() checks in a thread: a request is picked up without anyone calling tick()."""
    request_run(store, dry_run=False, now_ms=Clock()())
    sched = ReconcileScheduler(settings(clerk), store, owner="w1", check_every_s=0.05)
    stop = sched.start()
    try:
        from harness.relay_process import wait_until

        wait_until(lambda: store.reconcile_runs(limit=1)[0].status is RunStatus.DONE, 20, "the run")
    finally:
        stop()
