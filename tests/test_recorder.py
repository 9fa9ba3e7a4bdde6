"""Writing outcomes down: batched on the recorder thread, retried instead of redelivered."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.convex_standin import ConvexStandIn
from harness.factories import make_event
from harness.relay_process import wait_until
from relay.delivery.recorder import Recorder
from relay.delivery.worker import Worker
from relay.errors import StoreError
from relay.models import Outcome, Status
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore
from tests.support.store_contract import attempt
from tests.support.workers import make_worker, seeded


class FlakyCompleteStore(SQLiteStore):
    """A real SQLite store whose first outcome writes fail like a full disk."""

    failures = 2

    def complete_many(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise StoreError("database or disk is full")
        return super().complete_many(*args, **kwargs)


def test_outcome_write_is_retried_not_redelivered(
    settings: Settings, tmp_path: object, convex: ConvexStandIn
) -> None:
    """If recording a 200 fails briefly, the worker retries the write instead of resending."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    store = FlakyCompleteStore(tmp_path / "flaky.db")
    store.migrate()
    store.insert(make_event(event_id="msg_1"))
    s = settings.with_overrides(convex_site_url=convex.url)
    Worker(s, store, rng=random.Random(1)).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.DELIVERED
    assert convex.delivered == ["msg_1"] and store.failures == 0


class BatchRecordingStore(SQLiteStore):
    """A real SQLite store that remembers how many outcomes each write carried."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []
        self.writers: set[str] = set()

    def complete_many(self, worker_id, results):  # type: ignore[no-untyped-def]
        self.batches.append(len(results))
        self.writers.add(threading.current_thread().name)
        return super().complete_many(worker_id, results)


def test_recorder_writes_outcomes_that_wait_together_in_one_transaction(
    settings: Settings, tmp_path: Path, convex: ConvexStandIn
) -> None:
    """Outcomes queued while the recorder is busy are written by one complete_many."""

    store = seeded(BatchRecordingStore, tmp_path / "batches.db", 3)
    worker = make_worker(settings, store, convex)
    claimed = store.claim(worker.worker_id, now_ms=worker.now_ms(), lease_ms=60_000, limit=5)
    recorder = Recorder(store, worker.worker_id)
    recorder.start()
    gate, holding = threading.Event(), threading.Event()

    def hold() -> None:  # the recorder's current job: nothing else is taken until it ends
        holding.set()
        gate.wait(10)

    busy = threading.Thread(target=recorder.call, args=(hold,), daemon=True)
    kept: list[bool] = []
    senders = [
        threading.Thread(
            target=lambda e=event: kept.append(
                recorder.complete(e.id, attempt(), Outcome(Status.DELIVERED), 2**62)
            ),
            daemon=True,
        )
        for event in claimed
    ]
    try:
        busy.start()
        wait_until(holding.is_set, 10, "the recorder to start the blocking call")
        for sender in senders:
            sender.start()
        wait_until(lambda: recorder._jobs.qsize() == 3, 10, "three queued outcomes")
    finally:
        gate.set()
        for thread in (busy, *senders):
            thread.join(timeout=10)
        recorder.stop()
    assert kept == [True, True, True]
    assert store.batches == [3]
    assert all(store.get(e.id).status == Status.DELIVERED for e in claimed)  # type: ignore[union-attr]


def test_running_worker_writes_outcomes_on_its_recorder_thread(
    settings: Settings, tmp_path: Path, convex: ConvexStandIn
) -> None:
    """Under run(), every outcome is written by the recorder, each event exactly once."""
    store = seeded(BatchRecordingStore, tmp_path / "batches.db", 12)
    worker = make_worker(settings, store, convex)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    wait_until(lambda: store.counts().get("delivered") == 12, 10, "12 deliveries")
    worker.stop()
    runner.join(timeout=10)
    assert sorted(convex.delivered) == [f"msg_{n:02d}" for n in range(12)]
    assert sum(store.batches) == 12
    assert store.writers == {"relay-record"}


class HeldWritesStore(SQLiteStore):
    """A real SQLite store whose outcome writes wait until the test lets them through."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.open = threading.Event()

    def complete_many(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert self.open.wait(20), "the test never let the writes through"
        return super().complete_many(*args, **kwargs)


def test_a_slot_is_free_once_its_outcome_is_handed_over_and_at_most_concurrency_wait(
    settings: Settings, tmp_path: Path, convex: ConvexStandIn
) -> None:
    """With writes held, a worker of concurrency 2 hands 2 outcomes to the recorder,
    frees their slots and sends 2 more attempts, which then wait for room: 4 sent, none
    written. Let through, every event is written once; none is sent twice."""
    store = seeded(HeldWritesStore, tmp_path / "held.db", 6)
    worker = make_worker(settings, store, convex, concurrency=2)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: len(convex.delivered) == 4, 10, "4 attempts sent")
        # Nothing else goes out while the writes are held (the two newest attempts
        # hold the slots, waiting for room among the unwritten outcomes).
        assert not wait_until_or_none(lambda: len(convex.delivered) > 4, 0.5)
        assert store.counts().get("delivered", 0) == 0
        store.open.set()
        wait_until(lambda: store.counts().get("delivered") == 6, 10, "6 deliveries")
    finally:
        store.open.set()
        worker.stop()
        runner.join(timeout=10)
    assert sorted(convex.delivered) == [f"msg_{n:02d}" for n in range(6)]


def wait_until_or_none(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds (False if not)."""
    try:
        return bool(wait_until(predicate, timeout))
    except AssertionError:
        return False


# -- write retries on the injected clock and sleep -------------------------------------------


class FakeTime:
    """A wall clock and a sleep that moves it: backoff without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_write_retries_back_off_through_the_injected_sleep(tmp_path: Path) -> None:
    """A write that fails twice is retried after backoffs taken by the injected sleep."""
    store = FlakyCompleteStore(tmp_path / "flaky.db")
    store.migrate()
    store.insert(make_event(event_id="msg_1"))
    time = FakeTime()
    assert store.claim("w1", now_ms=int(time.now * 1000), lease_ms=60_000, limit=1)
    recorder = Recorder(store, "w1", clock=time, sleep=time.sleep)
    deadline_ms = int(time.now * 1000) + 30_000
    assert recorder.complete("msg_1", attempt(), Outcome(Status.DELIVERED), deadline_ms)
    assert len(time.slept) == 2 and all(0 <= s <= 5.0 for s in time.slept)
    assert store.failures == 0


class FullDiskStore(SQLiteStore):
    """A real SQLite store whose outcome writes always fail like a full disk."""

    writes = 0

    def complete_many(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.writes += 1
        raise StoreError("database or disk is full")


def test_write_retries_stop_at_the_deadline_on_the_injected_clock(tmp_path: Path) -> None:
    """A write that never succeeds is given up once the injected clock passes the
    deadline, and the store's error reaches the caller."""
    store = FullDiskStore(tmp_path / "full.db")
    store.migrate()
    time = FakeTime()
    recorder = Recorder(store, "w1", clock=time, sleep=time.sleep)
    deadline_ms = int(time.now * 1000) + 30_000
    with pytest.raises(StoreError, match="disk is full"):
        recorder.complete("msg_1", attempt(), Outcome(Status.DELIVERED), deadline_ms)
    assert time.now * 1000 >= deadline_ms
    assert sum(time.slept[:-1]) * 1000 < 30_000  # the last backoff crossed the deadline
    assert store.writes == len(time.slept) + 1
