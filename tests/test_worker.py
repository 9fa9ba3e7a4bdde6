"""The worker loop against a real loopback Convex: concurrency, ordering, shutdown, waking."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from harness.convex_standin import ConvexStandIn
from harness.factories import FORWARD_SECRET, make_event
from relay.delivery.worker import REPEAT_SIGNAL_WINDOW_S, Worker
from relay.models import Status
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore
from tests.support.workers import KEY, Clock, make_worker, mutation_worker


def test_one_object_in_order_across_concurrent_slots(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """With concurrency 4 and a running loop, one user's events arrive one at a time, in order."""
    ids = [f"msg_{i:02d}" for i in range(12)]
    order = list(range(12))
    random.Random(5).shuffle(order)
    for i in order:
        store.insert(
            make_event(
                "user.updated",
                event_id=ids[i],
                entity_id="user_same",
                timestamp=1_700_000_000_000 + i,
            )
        )
    for i in range(6):
        store.insert(make_event("user.updated", event_id=f"msg_other{i}", entity_id=f"user_{i}"))
    convex.script.hang_s = 0.02
    worker = make_worker(settings, store, convex, concurrency=4)
    worker.poll_interval_s = 0.05
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = datetime.now(UTC).timestamp() + 20
        while store.counts()["delivered"] < 18 and datetime.now(UTC).timestamp() < deadline:
            threading.Event().wait(0.05)
    finally:
        worker.stop()
        thread.join(10)
    same = [d for d in convex.delivered if not d.startswith("msg_other")]
    assert same == ids
    assert store.counts()["delivered"] == 18


def test_stop_finishes_attempt_in_hand(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """stop() during an attempt lets it finish and records it (warm shutdown)."""
    store.insert(make_event(event_id="msg_1"))
    convex.script.hang_s = 0.5
    worker = make_worker(settings, store, convex)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = datetime.now(UTC).timestamp() + 5
    while not worker._in_flight and datetime.now(UTC).timestamp() < deadline:
        threading.Event().wait(0.01)
    worker.stop()
    thread.join(10)
    event = store.get("msg_1")
    assert event is not None and event.status == Status.DELIVERED


def test_delivery_log_line_has_fields_and_no_secrets(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """One canonical line per attempt with ids and timing, never the secret or the body."""
    store.insert(make_event("user.created", event_id="msg_log", first_name="Secretive"))
    with capture_logs() as logs:
        mutation_worker(settings, store, convex).run_once()
    [line] = [entry for entry in logs if entry["event"] == "delivery_attempted"]
    assert line["status"] == 200 and line["outcome"] == "delivered"
    assert "duration_ms" in line and line["target"].endswith("/api/mutation")
    text = json.dumps(logs, default=str)
    assert KEY not in text and FORWARD_SECRET not in text and "Secretive" not in text


def test_worker_wakes_for_its_own_retry_before_the_next_poll(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """A retry due in 200 ms shortens the loop's wait below the poll interval."""
    clock = Clock()
    store.insert(make_event(event_id="msg_1"))
    convex.fail_next(1, 503)
    worker = make_worker(settings, store, convex, clock=clock, retry_schedule_s=(0.2,))
    worker.poll_interval_s = 5.0
    assert worker._wait_s() == 5.0
    worker.run_once()
    assert 0.0 < worker._wait_s() <= 0.2 * 1.2 + 0.01


class ColdExit(Exception):
    """Stands in for os._exit, which would end the test run."""


def test_signals_are_told_apart_on_the_injected_monotonic_clock(
    settings: Settings, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second SIGTERM inside REPEAT_SIGNAL_WINDOW_S (on the worker's monotonic clock) is
    the same stop; one after it is a user's second signal: exit at once."""
    ticks = [50.0]
    worker = Worker(settings, store, monotonic=lambda: ticks[0])

    def cold_exit(code: int) -> None:
        raise ColdExit(code)

    monkeypatch.setattr(os, "_exit", cold_exit)
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        worker.install_signal_handlers()
        handle = signal.getsignal(signal.SIGTERM)
        assert callable(handle)
        with capture_logs() as logs:
            handle(signal.SIGTERM, None)
            ticks[0] += REPEAT_SIGNAL_WINDOW_S / 2
            handle(signal.SIGTERM, None)
            ticks[0] += REPEAT_SIGNAL_WINDOW_S
            with pytest.raises(ColdExit):
                handle(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
    assert [e["event"] for e in logs] == [
        "worker_stopping",
        "worker_signal_repeated",
        "worker_cold_shutdown",
    ]
    assert worker._stopping.is_set()
