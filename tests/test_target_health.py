"""Target health on both stores: an outage, a misconfigured target, a bad payload.

A real worker (its loop, on threads) delivers to the loopback Convex stand-in from a
real SQLite file or PostgreSQL schema. The probe gap is scaled to a fraction of a
second instead of the default seconds, so an outage plays out in a few seconds.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.convex_standin import ConvexStandIn
from harness.factories import SECRET, make_event
from harness.postgres_server import fresh_schema
from harness.relay_process import wait_until
from relay.delivery.target import DOWN_AFTER, MISCONFIGURED_AFTER
from relay.delivery.worker import Worker
from relay.models import Status, TargetState
from relay.settings import Settings
from relay.store import Store, open_store

BACKENDS = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
PROBE_S = 0.4
NOW_MS = int(time.time() * 1000)


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        store = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
        store.migrate()
        yield store
        store.close()
        return
    with fresh_schema() as url:
        store = open_store(url)
        store.migrate()
        yield store
        store.close()


def worker_for(settings: Settings, store: Store, convex: ConvexStandIn, **kw: object) -> Worker:
    fields: dict[str, object] = {
        "convex_site_url": convex.url,
        "retry_schedule_s": (0.5,) * 40,
        "delivery_timeout_s": 2.0,
        "probe_interval_max_s": PROBE_S,
        "concurrency": 4,
        **kw,
    }
    return Worker(settings.with_overrides(**fields), store, poll_interval_s=0.1)


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)


def user_events(users: int, per_user: int, start: int, tag: str) -> list[tuple[str, str, int]]:
    """``(event id, user id, occurred-at)`` for ``per_user`` updates of each user."""
    return [
        (f"msg_{tag}_{u:03d}_{i:02d}", f"user_{u:03d}", start + i)
        for u in range(users)
        for i in range(per_user)
    ]


def insert_all(store: Store, events: list[tuple[str, str, int]]) -> None:
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)  # arrival order is not Clerk's order
    for event_id, user, at in shuffled:
        store.insert(
            make_event(
                event_id=event_id,
                entity_id=user,
                timestamp=at,
                updated_at=at,
                received_at_ms=int(time.time() * 1000),
            )
        )


def state_of(store: Store, worker: Worker) -> TargetState | None:
    health = store.target_health(worker.settings.target_url)
    return None if health is None else health.state


def test_an_outage_opens_the_circuit_probes_once_per_gap_and_drains_on_recovery(
    settings: Settings, any_store: Store, convex: ConvexStandIn
) -> None:
    """Convex down: after the circuit opens at most one request per probe gap reaches it;
    nothing is charged to the events; the first request after recovery delivers, and the
    whole backlog follows in per-object order, each event once."""
    store = any_store
    before = user_events(20, 4, NOW_MS, "a")
    insert_all(store, before)
    convex.down(503)
    worker = worker_for(settings, store, convex)
    with running(worker):
        wait_until(lambda: state_of(store, worker) == TargetState.DOWN, 20, "the circuit")
        health = store.target_health(worker.settings.target_url)
        assert health is not None and health.reason is not None and "503" in health.reason
        opened_at = health.since_ms / 1000
        during = user_events(20, 3, NOW_MS + 100, "b")  # events keep arriving
        insert_all(store, during)
        time.sleep(6 * PROBE_S)  # the outage goes on for a few probe gaps
        recovered_at = time.time()
        convex.up()
        everything = [e[0] for e in before + during]
        wait_until(
            lambda: all(
                (ev := store.get(i)) is not None and ev.status == Status.DELIVERED
                for i in everything
            ),
            30,
            "the backlog to drain",
        )
    with convex.lock:
        received = list(convex.received)
        delivered = list(convex.delivered)
    # After the in-flight attempts of the moment it opened, one request per probe gap.
    settled_at = opened_at + 1.0
    while_down = [r for r in received if settled_at < r.at < recovered_at]
    assert len(while_down) <= (recovered_at - settled_at) / PROBE_S + 1
    assert while_down, "the worker never probed the down target"
    first_after = min((r for r in received if r.at >= recovered_at), key=lambda r: r.at)
    assert first_after.status == 200  # the first probe after recovery delivered
    assert first_after.at - recovered_at < PROBE_S + 1.0
    assert sorted(delivered) == sorted(everything)  # each once
    for user in {e[1] for e in before + during}:
        mine = sorted((e for e in before + during if e[1] == user), key=lambda e: e[2])
        assert [i for i in delivered if i in {e[0] for e in mine}] == [e[0] for e in mine]
    # Only attempts made before the circuit opened were charged.
    steps = [ev.retry_step for i in everything if (ev := store.get(i)) is not None]
    assert sum(steps) <= DOWN_AFTER + worker.settings.concurrency
    assert state_of(store, worker) == TargetState.UP


def test_a_wrong_forwarding_secret_holds_events_until_it_is_fixed(
    settings: Settings, any_store: Store, convex: ConvexStandIn
) -> None:
    """The template answers 400 "Error occured" to every event: the target is marked
    misconfigured, every event stays pending (none failed, none charged), and fixing the
    secret in Convex delivers them all without a replay."""
    store = any_store
    events = user_events(6, 2, NOW_MS, "s")
    insert_all(store, events)
    worker = worker_for(settings, store, convex, forward_secret=SECRET)  # Convex knows another
    with running(worker):
        wait_until(lambda: state_of(store, worker) == TargetState.MISCONFIGURED, 20, "misconfig")
        health = store.target_health(worker.settings.target_url)
        assert health is not None and "CLERK_WEBHOOK_SECRET" in (health.reason or "")
        time.sleep(3 * PROBE_S)
        for event_id, _, _ in events:
            event = store.get(event_id)
            assert event is not None and event.status == Status.PENDING
            assert event.retry_step == 0
        convex.webhook = type(convex.webhook)(SECRET)  # the operator fixes Convex's env
        wait_until(lambda: sorted(convex.delivered) == sorted(e[0] for e in events), 20, "delivery")
    assert state_of(store, worker) == TargetState.UP


def test_a_bad_deploy_key_holds_events_until_it_is_fixed(
    settings: Settings, any_store: Store, convex: ConvexStandIn
) -> None:
    """401 BadAdminKey on the function API: misconfigured, held, delivered once fixed."""
    store = any_store
    for i in range(MISCONFIGURED_AFTER + 2):
        store.insert(make_event("user.created", event_id=f"msg_k{i}", entity_id=f"user_k{i}"))
    worker = worker_for(
        settings,
        store,
        convex,
        target="mutation",
        convex_url=convex.url,
        convex_deploy_key="prod:old|key",
    )
    with running(worker):
        wait_until(lambda: state_of(store, worker) == TargetState.MISCONFIGURED, 20, "misconfig")
        assert store.counts()["failed"] == 0
        convex.deploy_key = "prod:old|key"  # the operator rotates the key Convex expects
        wait_until(lambda: store.counts()["delivered"] == MISCONFIGURED_AFTER + 2, 20, "delivery")
    assert store.counts()["failed"] == 0


def test_a_payload_convex_rejects_fails_alone_among_successes(
    settings: Settings, any_store: Store, convex: ConvexStandIn
) -> None:
    """A 400 about one payload fails that event at once; a 404 for one event while others
    are delivered fails it after one hold. Neither stops the rest or marks the target."""
    store = any_store
    convex.refuse["msg_bad400"] = (400, {"error": "Unrecognised event payload"})
    convex.refuse["msg_bad404"] = (404, {"code": "No HttpAction routed"})
    ids = [f"msg_ok{i:02d}" for i in range(12)]
    store.insert(make_event(event_id="msg_bad400", entity_id="user_x"))
    store.insert(make_event(event_id="msg_bad404", entity_id="user_y"))
    for i, event_id in enumerate(ids):
        store.insert(make_event(event_id=event_id, entity_id=f"user_ok{i}"))
    worker = worker_for(settings, store, convex)
    with running(worker):
        wait_until(lambda: sorted(convex.delivered) == sorted(ids), 20, "the good ones")
        # the held one comes back after a probe gap; others keep succeeding meanwhile
        store.insert(make_event(event_id="msg_later", entity_id="user_later"))
        wait_until(
            lambda: (ev := store.get("msg_bad404")) is not None and ev.status == Status.FAILED,
            20,
            "the 404 event to fail",
        )
    bad400 = store.get("msg_bad400")
    assert bad400 is not None and bad400.status == Status.FAILED and bad400.attempt_count == 1
    bad404 = store.get("msg_bad404")
    assert bad404 is not None and bad404.attempt_count == 2
    assert state_of(store, worker) in (None, TargetState.UP)


def test_an_event_pending_past_the_maximum_age_fails_on_its_next_failure(
    settings: Settings, store: Store, convex: ConvexStandIn
) -> None:
    """RELAY_MAX_PENDING_AGE: an event that has waited longer than that fails at its next
    failed attempt (a younger one in the same outage keeps retrying)."""
    now_ms = int(time.time() * 1000)
    store.insert(make_event(event_id="msg_old", entity_id="u1", received_at_ms=now_ms - 90_000))
    store.insert(make_event(event_id="msg_young", entity_id="u2", received_at_ms=now_ms))
    convex.down(503)
    worker = worker_for(settings, store, convex, max_pending_age_s=60.0)
    worker.run_once()
    old, young = store.get("msg_old"), store.get("msg_young")
    assert old is not None and old.status == Status.FAILED
    assert "undelivered after" in (old.last_error or "")
    assert young is not None and young.status == Status.PENDING


@pytest.mark.parametrize("outage_s", [60.0, 6 * 3600.0])
def test_after_any_outage_the_next_probe_is_at_most_one_gap_away(
    store: Store, outage_s: float
) -> None:
    """A 60 s and a 6 h outage on a scaled clock: probes back off to the maximum gap and
    stay there, so whenever Convex returns, the next probe (which delivers) is at most
    RELAY_PROBE_INTERVAL_MAX away, and probes never come faster than the first gap."""
    from relay.delivery.target import Gate, TargetHealthTracker

    STEP_S = 1.0
    clock = [1_800_000_000.0]
    tracker = TargetHealthTracker(
        store, "https://x.convex.site/w", probe_interval_max_s=5.0, clock=lambda: clock[0]
    )
    store.set_target_state(
        tracker.target, TargetState.DOWN, now_ms=tracker.now_ms(), probe_interval_ms=1000
    )
    start, probes, gaps = clock[0], 0, []
    last_probe = start
    while clock[0] - start < outage_s:
        clock[0] += STEP_S
        tracker._read_at = float("-inf")  # a scaled clock outruns the read cache
        gate, _ = tracker.gate()
        if gate is Gate.PROBE:
            probes += 1
            gaps.append(clock[0] - last_probe)
            last_probe = clock[0]
    assert max(gaps) <= 5.0 + STEP_S
    assert probes <= outage_s / 1.0 + 1  # never more than one per (smallest) gap
    recovered = clock[0]
    while True:  # Convex is back: when is the next probe?
        clock[0] += STEP_S
        tracker._read_at = float("-inf")
        if tracker.gate()[0] is Gate.PROBE:
            break
    assert clock[0] - recovered <= 5.0 + STEP_S
