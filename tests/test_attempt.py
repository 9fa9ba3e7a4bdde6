"""One attempt of a claimed event: the outcome each answer leads to.

First through the worker against a real loopback Convex, then the Attempter alone
with a fake transport at the network edge (no sockets, a fixed clock).
"""

from __future__ import annotations

import random

import pytest

from harness.convex_standin import ConvexStandIn
from harness.factories import SECRET, make_event
from relay.delivery.attempt import Attempter
from relay.delivery.deliverer import Deliverer
from relay.delivery.target import TargetHealthTracker
from relay.delivery.transport import ConnectionFailed, TimedOut
from relay.models import Event, Status
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore
from tests.support.fake_transport import FakeTransport, failing, replying
from tests.support.workers import KEY, make_worker, msg_1_failing, mutation_worker


def test_retry_then_deliver_logs_every_attempt(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """503 then 200: two attempts in the log, delivered, next attempt was scheduled."""
    clock = msg_1_failing(store, convex, 1, 503)
    worker = make_worker(settings, store, convex, clock=clock)
    worker.run_once()
    pending = store.get("msg_1")
    assert pending is not None and pending.status == Status.PENDING
    assert pending.next_attempt_at_ms is not None
    assert pending.next_attempt_at_ms >= int(clock.now * 1000) + 5000
    assert worker.run_once() == 0  # not due yet
    clock.now += 6.1
    assert worker.run_once() == 1
    done = store.get("msg_1")
    assert done is not None and done.status == Status.DELIVERED
    assert [a.status_code for a in done.attempts] == [503, 200]
    assert done.attempts[0].outcome == "retry" and "503" in (done.attempts[0].error or "")


def test_retry_after_is_honoured(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """429 with Retry-After: 120 schedules the next attempt no sooner than 120 s."""
    clock = msg_1_failing(store, convex, 1, 429, retry_after="120")
    make_worker(settings, store, convex, clock=clock).run_once()
    event = store.get("msg_1")
    assert event is not None and event.next_attempt_at_ms is not None
    assert event.next_attempt_at_ms >= int(clock.now * 1000) + 120_000


def test_exhausted_retries_fail_with_last_reason(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """After the schedule runs out the event is failed and says why."""
    clock = msg_1_failing(store, convex, 3, 502)
    worker = make_worker(settings, store, convex, clock=clock)
    for _ in range(3):
        worker.run_once()
        clock.now += 100
    event = store.get("msg_1")
    assert event is not None and event.status == Status.FAILED
    assert event.last_error is not None and event.last_error.startswith("retries exhausted")
    assert len(event.attempts) == 3


def test_4xx_fails_at_once(settings: Settings, store: SQLiteStore, convex: ConvexStandIn) -> None:
    """A 400 about the payload will not get better by retrying: failed immediately."""
    store.insert(make_event(event_id="msg_1"))
    convex.fail_next(1, 400, body={"error": "Unrecognised event payload"})
    make_worker(settings, store, convex).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.FAILED
    assert event.last_error == "HTTP 400 rejected: Unrecognised event payload"


def test_wrong_forward_secret_is_refused_by_convex(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """Signing with a secret Convex does not know: the template's 400 holds the event
    (pending, nothing charged) with a reason that names the secret, instead of failing it."""
    store.insert(make_event(event_id="msg_1"))
    make_worker(settings, store, convex, forward_secret=SECRET).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.PENDING and event.retry_step == 0
    assert "CLERK_WEBHOOK_SECRET" in (event.last_error or "")
    assert convex.received[0].status == 400


def test_function_error_in_200_is_a_failure(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """A 200 carrying {"status": "error"} fails the event with Convex's message."""
    store.insert(make_event("user.created", event_id="msg_1"))
    convex.function_error_next(1, "Uncaught Error: users table is on fire")
    mutation_worker(settings, store, convex).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.FAILED
    assert "users table is on fire" in (event.last_error or "")


def test_wrong_deploy_key_holds_the_event(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """401 BadAdminKey is the target's configuration, not the event's: held pending
    (nothing charged), reason kept."""
    store.insert(make_event("user.created", event_id="msg_1"))
    make_worker(
        settings,
        store,
        convex,
        target="mutation",
        convex_url=convex.url,
        convex_deploy_key="prod:wrong|key",
    ).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.PENDING and event.retry_step == 0
    assert "admin key was invalid" in (event.last_error or "")


def test_unrouted_type_is_skipped_by_worker(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """An event with no route (e.g. stored before routes changed) ends skipped, unsent."""
    store.insert(make_event("session.created", event_id="msg_1", entity_id="sess_1"))
    mutation_worker(settings, store, convex).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.SKIPPED
    assert convex.received == []


def test_unsafe_value_fails_without_sending(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """A payload over Convex's limits fails with the limit and place named; nothing is sent."""
    deep: dict[str, object] = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    store.insert(make_event("user.updated", event_id="msg_deep", public_metadata=deep))
    mutation_worker(settings, store, convex, payload="normalized").run_once()
    event = store.get("msg_deep")
    assert event is not None and event.status == Status.FAILED
    assert "nesting" in (event.last_error or "") and "publicMetadata" in (event.last_error or "")
    assert convex.received == []


@pytest.mark.parametrize("events_glob", [("organization.*",)])
def test_relay_events_skips_at_delivery(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn, events_glob: tuple[str]
) -> None:
    """An event outside RELAY_EVENTS is skipped by the worker even if stored pending."""
    store.insert(make_event("user.created", event_id="msg_1"))
    make_worker(settings, store, convex, events=events_glob).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.SKIPPED


# -- the outcome mapping, with a fake transport at the network edge ---------------------------

NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
SCHEDULE_S = (5.0, 60.0)


def attempter(
    settings: Settings, store: SQLiteStore, transport: FakeTransport, **overrides: object
) -> Attempter:
    """An Attempter on a fixed clock whose deliverer's network is ``transport``."""
    s = settings.with_overrides(retry_schedule_s=SCHEDULE_S, **overrides)
    health = TargetHealthTracker(
        store, s.target_url, probe_interval_max_s=s.probe_interval_max_s, clock=lambda: NOW_S
    )
    deliverer = Deliverer(s, transport)
    return Attempter(s, deliverer, health, clock=lambda: NOW_S, rng=random.Random(1))


def claimed(store: SQLiteStore, event_type: str = "user.created", **fields: object) -> Event:
    """One event, stored and claimed as the worker would have it."""
    store.insert(make_event(event_type, event_id="msg_1", **fields))  # type: ignore[arg-type]
    [event] = store.claim("w1", now_ms=NOW_MS, lease_ms=60_000, limit=1)
    return event


@pytest.mark.parametrize(
    ("transport", "status", "logged", "error"),
    [
        (replying(200), Status.DELIVERED, "delivered", None),
        (replying(503), Status.PENDING, "retry", "HTTP 503 server error"),
        (replying(408), Status.PENDING, "retry", "HTTP 408 request timeout"),
        (
            replying(400, b'{"error": "Unrecognised event payload"}'),
            Status.FAILED,
            "failed",
            "HTTP 400 rejected: Unrecognised event payload",
        ),
        (replying(307), Status.FAILED, "failed", "HTTP 307 redirect: check the Convex URL"),
        (failing(ConnectionFailed()), Status.PENDING, "retry", "connection failed"),
        (failing(TimedOut()), Status.PENDING, "retry", "timed out"),
    ],
    ids=["200", "503", "408", "400", "307", "connection-failed", "timed-out"],
)
def test_each_answer_leads_to_its_outcome(
    settings: Settings,
    store: SQLiteStore,
    transport: FakeTransport,
    status: Status,
    logged: str,
    error: str | None,
) -> None:
    """The answer (or the failure on the way) decides the event's next state and the
    attempts-log row; retries are scheduled on the schedule's first step."""
    result = attempter(settings, store, transport).attempt(claimed(store))
    assert len(transport.requests) == 1
    assert (result.outcome.status, result.attempt.outcome) == (status, logged)
    assert result.attempt.error == result.outcome.error == error
    assert result.attempt.at_ms == NOW_MS
    if status is Status.PENDING:
        assert result.next_attempt_in_s is not None
        assert 0 < result.next_attempt_in_s <= SCHEDULE_S[0] * 1.5
        expected = NOW_MS + int(result.next_attempt_in_s * 1000)
        assert result.outcome.next_attempt_at_ms == expected
    else:
        assert result.next_attempt_in_s is None


def test_retry_after_sets_the_next_attempt(settings: Settings, store: SQLiteStore) -> None:
    """A 429's Retry-After (any header case) pushes the next attempt at least that far."""
    transport = replying(429, headers={"retry-after": "120"})
    result = attempter(settings, store, transport).attempt(claimed(store))
    assert result.outcome.status is Status.PENDING
    assert result.outcome.next_attempt_at_ms is not None
    assert result.outcome.next_attempt_at_ms >= NOW_MS + 120_000


def test_a_suspect_answer_holds_the_event_uncharged(settings: Settings, store: SQLiteStore) -> None:
    """A 401 is probably the target's configuration: held pending, not charged, logged
    as a retry (the attempts log keeps the contract's verdicts)."""
    result = attempter(settings, store, replying(401)).attempt(claimed(store))
    assert result.outcome.status is Status.PENDING and result.outcome.charged is False
    assert result.attempt.outcome == "retry"


def test_a_retry_past_the_pending_age_fails(settings: Settings, store: SQLiteStore) -> None:
    """An event pending longer than RELAY_MAX_PENDING_AGE fails instead of retrying."""
    event = claimed(store, received_at_ms=NOW_MS - 8 * 86400 * 1000)
    result = attempter(settings, store, replying(503), max_pending_age_s=7 * 86400.0).attempt(event)
    assert result.outcome.status is Status.FAILED
    assert result.outcome.error == "undelivered after 7 days; last: HTTP 503 server error"


def test_a_function_error_in_a_200_fails(settings: Settings, store: SQLiteStore) -> None:
    """On the function API a 200 saying {"status": "error"} fails with Convex's message."""
    body = b'{"status": "error", "errorMessage": "users table is on fire"}'
    result = attempter(
        settings,
        store,
        replying(200, body),
        target="mutation",
        convex_url="http://convex.invalid",
        convex_deploy_key=KEY,
    ).attempt(claimed(store))
    assert result.outcome.status is Status.FAILED
    assert result.attempt.outcome == "failed" and result.attempt.status_code == 200
    assert result.outcome.error == "HTTP 200 Convex function error: users table is on fire"


@pytest.mark.parametrize(
    ("event_type", "overrides", "status", "reason"),
    [
        ("user.created", {"events": ("organization.*",)}, Status.SKIPPED, "not in RELAY_EVENTS"),
        (
            "session.created",
            {"target": "mutation", "convex_url": "http://convex.invalid", "convex_deploy_key": KEY},
            Status.SKIPPED,
            "no RELAY_ROUTES entry for this type",
        ),
    ],
    ids=["not-in-relay-events", "no-route"],
)
def test_events_that_must_not_be_sent_are_decided_without_sending(
    settings: Settings,
    store: SQLiteStore,
    event_type: str,
    overrides: dict[str, object],
    status: Status,
    reason: str,
) -> None:
    """Skipped events never reach the transport; their row says why, with no status code."""
    transport = replying(200)
    result = attempter(settings, store, transport, **overrides).attempt(claimed(store, event_type))
    assert transport.requests == []
    assert (result.outcome.status, result.outcome.error) == (status, reason)
    assert (result.attempt.outcome, result.attempt.status_code) == (str(status), None)
    assert result.attempt.error == reason and result.next_attempt_in_s is None
