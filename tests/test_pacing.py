"""Burst pacing: an ingest burst holds claims back, never for ever, on the worker's clock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from harness.convex_standin import ConvexStandIn
from harness.relay_process import wait_until
from relay.delivery.pacing import BurstPacing
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore
from tests.support.workers import Clock, make_worker, seeded


class BurstingStore(SQLiteStore):
    """A store whose ingest says it is in a burst for as long as ``bursting`` is set."""

    bursting = True

    def ingest_burst_s(self) -> float:
        return 0.2 if self.bursting else 0.0


def test_an_ingest_burst_holds_claims_back_until_it_ends(
    settings: Settings, tmp_path: Path, convex: ConvexStandIn
) -> None:
    """During a burst the worker claims once, then leaves the CPUs to ingest; when the
    burst ends it delivers the rest at once."""
    store = seeded(BurstingStore, tmp_path / "burst.db", 8)
    worker = make_worker(settings, store, convex, concurrency=4)
    worker.pacing.every_s = 3600  # only the end of the burst can release the rest
    runner = threading.Thread(target=worker.run, daemon=True)
    with capture_logs() as logs:
        runner.start()
        try:
            wait_until(lambda: store.counts().get("delivered") == 4, 10, "the first claim")
            wait_until(lambda: any(e["event"] == "deliveries_deferred" for e in logs), 10)
            assert store.counts().get("delivered") == 4
            store.bursting = False
            wait_until(lambda: store.counts().get("delivered") == 8, 10, "the rest")
        finally:
            worker.stop()
            runner.join(timeout=10)
    assert sorted(convex.delivered) == [f"msg_{n:02d}" for n in range(8)]
    resumed = [e for e in logs if e["event"] == "deliveries_resumed"]
    assert len(resumed) == 1 and resumed[0]["deferred_s"] >= 0


def test_a_burst_that_never_ends_cannot_starve_delivery(
    settings: Settings, tmp_path: Path, convex: ConvexStandIn
) -> None:
    """Under an endless burst the worker still claims every pacing.every_s."""
    store = seeded(BurstingStore, tmp_path / "burst.db", 12)
    worker = make_worker(settings, store, convex, concurrency=4)
    worker.pacing.every_s = 0.2
    clock = worker.clock
    assert isinstance(clock, Clock)

    def delivered_all() -> bool:
        clock.now += 0.05  # the worker paces itself by its clock
        return store.counts().get("delivered") == 12

    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        wait_until(delivered_all, 10, "every delivery")
    finally:
        worker.stop()
        runner.join(timeout=10)
    assert store.bursting  # delivered while the burst was still on


def test_burst_pacing_follows_the_injected_clock(
    settings: Settings, tmp_path: Path, convex: ConvexStandIn
) -> None:
    """The first claim of a burst is never held back, and the next comes when the
    worker's own clock says pacing.every_s has passed (not the machine's uptime)."""
    store = seeded(BurstingStore, tmp_path / "burst.db", 8)
    clock = Clock()
    worker = make_worker(settings, store, convex, clock=clock, concurrency=4)
    # Minutes, not more: the stand-in checks the signature's timestamp against real time.
    worker.pacing.every_s = 240
    runner = threading.Thread(target=worker.run, daemon=True)
    with capture_logs() as logs:
        runner.start()
        try:
            wait_until(lambda: store.counts().get("delivered") == 4, 10, "the first claim")
            wait_until(lambda: any(e["event"] == "deliveries_deferred" for e in logs), 10)
            assert store.counts().get("delivered") == 4
            clock.now += 240  # four minutes on the worker's clock; the burst still on
            wait_until(lambda: store.counts().get("delivered") == 8, 10, "the next claim")
        finally:
            worker.stop()
            runner.join(timeout=10)
    assert store.bursting


# -- the policy alone, on a settable clock -----------------------------------------------------


class Ticking:
    """A settable clock starting at zero (like a monotonic clock on a fresh machine)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_a_burst_nothing_is_held_back() -> None:
    """No burst: every claim may go ahead, and the loop's wait is not shortened."""
    clock = Ticking()
    pacing = BurstPacing(clock=clock, every_s=1.0)
    pacing.claimed()
    assert not pacing.holds_back(0.0)
    assert pacing.wait_s() is None


def test_the_first_claim_of_a_burst_goes_ahead_even_at_time_zero() -> None:
    """Never having claimed is not "claimed at 0.0": a burst cannot hold back the first claim."""
    pacing = BurstPacing(clock=Ticking(), every_s=1.0)
    assert not pacing.holds_back(5.0)


def test_during_a_burst_claims_come_every_s_apart_on_the_clock() -> None:
    """After a claim, a burst holds the next one back until every_s has passed on the
    injected clock; the loop is told to look again exactly then."""
    clock = Ticking()
    pacing = BurstPacing(clock=clock, every_s=1.0)
    pacing.claimed()
    clock.now = 0.4
    assert pacing.holds_back(5.0)
    assert pacing.wait_s() == pytest.approx(0.6)
    clock.now = 1.0
    assert not pacing.holds_back(5.0)


def test_the_loop_looks_again_when_the_burst_may_be_over() -> None:
    """A burst shorter than the pacing gap: the wait ends with the burst."""
    clock = Ticking()
    pacing = BurstPacing(clock=clock, every_s=10.0)
    pacing.claimed()
    clock.now = 1.0
    assert pacing.holds_back(0.25)
    assert pacing.wait_s() == pytest.approx(0.25)


def test_deferring_and_resuming_are_logged_once_each() -> None:
    """One deliveries_deferred when a burst starts holding claims back, one
    deliveries_resumed (with how long, on the clock) when it is over."""
    clock = Ticking()
    pacing = BurstPacing(clock=clock, every_s=10.0)
    pacing.claimed()
    with capture_logs() as logs:
        clock.now = 1.0
        assert pacing.holds_back(2.0)
        clock.now = 2.0
        assert pacing.holds_back(2.0)
        clock.now = 3.5
        assert not pacing.holds_back(0.0)
        assert not pacing.holds_back(0.0)
    assert [(e["event"], e.get("deferred_s")) for e in logs] == [
        ("deliveries_deferred", None),
        ("deliveries_resumed", 2.5),
    ]
    assert pacing.wait_s() is None
