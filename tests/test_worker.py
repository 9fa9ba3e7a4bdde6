"""The worker against a real loopback Convex: outcomes, retries, re-signing, ordering."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs
from svix.webhooks import Webhook

from harness.convex_standin import ConvexStandIn
from harness.factories import FORWARD_SECRET, SECRET, make_event
from harness.relay_process import wait_until
from relay.delivery.worker import Worker
from relay.models import Status
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore
from tests.support.store_contract import attempt

KEY = "prod:standin|key"


class Clock:
    """A settable clock so retries come due without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def make_worker(
    settings: Settings,
    store: SQLiteStore,
    convex: ConvexStandIn,
    *,
    clock: Clock | None = None,
    **overrides: object,
) -> Worker:
    fields: dict[str, object] = {
        "convex_site_url": convex.url,
        "retry_schedule_s": (5.0, 60.0),
        "delivery_timeout_s": 2.0,
        **overrides,
    }
    s = settings.with_overrides(**fields)
    return Worker(s, store, clock=clock or Clock(), rng=random.Random(1))


def msg_1_failing(
    store: SQLiteStore, convex: ConvexStandIn, n: int, status: int, **answer: Any
) -> Clock:
    """Store msg_1 and have Convex answer its next ``n`` attempts with ``status``; the
    settable clock to run the worker on."""
    clock = Clock()
    store.insert(make_event(event_id="msg_1"))
    convex.fail_next(n, status, **answer)
    return clock


def mutation_worker(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn, **overrides: object
) -> Worker:
    return make_worker(
        settings,
        store,
        convex,
        target="mutation",
        convex_url=convex.url,
        convex_deploy_key=KEY,
        **overrides,
    )


def test_http_action_gets_original_bytes_id_and_fresh_signature(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """The HTTP action receives Clerk's body unchanged, Clerk's svix-id, and a new signature."""
    event = make_event("user.created", event_id="msg_orig")
    store.insert(event)
    assert make_worker(settings, store, convex).run_once() == 1
    [got] = convex.received
    assert got.status == 200 and got.body == event.body
    assert got.headers["svix-id"] == "msg_orig"
    # The signature is by the forward secret, made now, not Clerk's original.
    Webhook(FORWARD_SECRET).verify(got.body, got.headers)
    assert abs(int(got.headers["svix-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    stored = store.get("msg_orig")
    assert stored is not None and stored.status == Status.DELIVERED


def test_event_days_old_is_accepted_by_convex(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """An event received three days ago still passes Convex's 5-minute svix check."""
    three_days_ms = 3 * 86400 * 1000
    old = make_event(
        "user.created",
        event_id="msg_old",
        received_at_ms=int(datetime.now(UTC).timestamp() * 1000) - three_days_ms,
    )
    store.insert(old)
    make_worker(settings, store, convex).run_once()
    assert convex.received[0].status == 200
    assert convex.delivered == ["msg_old"]


def test_every_attempt_is_signed_at_its_own_time(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """A retry carries the worker's clock at send time and a signature over it."""
    clock = Clock()
    event = make_event("user.created", event_id="msg_late")
    store.insert(event)
    convex.fail_next(1, 503)
    worker = make_worker(settings, store, convex, clock=clock)
    worker.run_once()
    clock.now += 86400
    worker.run_once()
    first, second = convex.received
    assert int(second.headers["svix-timestamp"]) == int(clock.now)
    expected = Webhook(FORWARD_SECRET).sign(
        "msg_late", datetime.fromtimestamp(int(clock.now), UTC), event.body.decode()
    )
    assert second.headers["svix-signature"] == expected != first.headers["svix-signature"]


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
    clock = msg_1_failing(store, convex, 1, 400, body={"error": "Unrecognised event payload"})
    make_worker(settings, store, convex, clock=clock).run_once()
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


def test_timeout_is_retried(settings: Settings, store: SQLiteStore, convex: ConvexStandIn) -> None:
    """A Convex that does not answer within the attempt timeout is retried."""
    store.insert(make_event(event_id="msg_1"))
    convex.script.hang_s = 1.5
    make_worker(settings, store, convex, delivery_timeout_s=0.3).run_once()
    convex.script.hang_s = 0
    event = store.get("msg_1")
    assert event is not None and event.status == Status.PENDING
    assert event.attempts[0].error == "timed out"


def test_connection_refused_is_retried(settings: Settings, store: SQLiteStore) -> None:
    """Convex down (nothing listening) is a retry, not a failure."""
    store.insert(make_event(event_id="msg_1"))
    s = settings.with_overrides(convex_site_url="http://127.0.0.1:9", retry_schedule_s=(5.0,))
    Worker(s, store, rng=random.Random(1)).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.PENDING
    assert event.last_error == "connection failed"


def test_redirect_is_not_followed(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """A 3xx means a misconfigured URL: recorded as the answer, never followed."""
    clock = msg_1_failing(store, convex, 1, 307)
    make_worker(settings, store, convex, clock=clock).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status != Status.DELIVERED
    assert event.attempts[0].status_code == 307
    assert len(convex.received) == 1


def test_attempt_names_the_relay_in_its_user_agent(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    store.insert(make_event(event_id="msg_1"))
    make_worker(settings, store, convex).run_once()
    assert convex.received[0].headers["user-agent"].startswith("clerk-convex-relay/")


@contextmanager
def raw_server(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback TCP server that hands each connection to ``handle``; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    handle(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_connection_closed_without_answer_is_retried(
    settings: Settings, store: SQLiteStore
) -> None:
    """A peer that reads the request and hangs up is a transport failure, retried."""
    store.insert(make_event(event_id="msg_1"))

    def hang_up(conn: socket.socket) -> None:
        conn.recv(65536)

    with raw_server(hang_up) as url:
        s = settings.with_overrides(convex_site_url=url, retry_schedule_s=(5.0,))
        Worker(s, store, rng=random.Random(1)).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.PENDING
    assert event.last_error == "connection failed"


def test_proxy_from_the_environment_is_used_unless_no_proxy(
    settings: Settings, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY carries deliveries (absolute-form request line); NO_PROXY bypasses it."""
    lines: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        lines.append(conn.recv(65536).split(b"\r\n", 1)[0])
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    store.insert(make_event(event_id="msg_1"))
    s = settings.with_overrides(convex_site_url="http://convex.invalid", retry_schedule_s=(5.0,))
    with raw_server(proxy) as url:
        for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", url)
        Worker(s, store, rng=random.Random(1)).run_once()
        assert lines == [b"POST http://convex.invalid/clerk-users-webhook HTTP/1.1"]
        store.insert(make_event(event_id="msg_2", entity_id="user_2"))
        monkeypatch.setenv("no_proxy", "convex.invalid")
        Worker(s, store, rng=random.Random(1)).run_once()
    assert len(lines) == 1
    assert store.get("msg_1").status == Status.DELIVERED  # type: ignore[union-attr]
    second = store.get("msg_2")
    assert second is not None and second.last_error == "connection failed"


def test_mutation_target_uses_template_routes_and_deploy_key(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """user.created -> users:upsertFromClerk {data}; user.deleted -> deleteFromClerk."""
    store.insert(make_event("user.created", event_id="msg_c", entity_id="user_9", timestamp=1))
    store.insert(make_event("user.deleted", event_id="msg_d", entity_id="user_9", timestamp=2))
    worker = mutation_worker(settings, store, convex)
    worker.run_once()
    worker.run_once()
    create, delete = (r.json() for r in convex.received)
    assert create["path"] == "users:upsertFromClerk" and create["format"] == "json"
    assert create["args"]["data"]["id"] == "user_9"
    assert delete == {
        "path": "users:deleteFromClerk",
        "args": {"clerkUserId": "user_9"},
        "format": "json",
    }
    assert convex.received[0].headers["authorization"] == f"Convex {KEY}"


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


def test_normalized_mutation_sends_event_args(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """RELAY_PAYLOAD=normalized sends {event: <normalized>} with camelCase data."""
    store.insert(
        make_event(
            "user.updated", event_id="msg_n", entity_id="user_5", first_name="Ada", last_name=None
        )
    )
    mutation_worker(settings, store, convex, payload="normalized").run_once()
    args = convex.received[0].json()["args"]
    assert set(args) == {"event"}
    ev = args["event"]
    assert (ev["id"], ev["type"], ev["entityId"], ev["object"]) == (
        "msg_n",
        "user.updated",
        "user_5",
        "user",
    )
    assert ev["data"]["firstName"] == "Ada" and ev["data"]["name"] == "Ada"


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


def test_raw_mutation_escapes_unsafe_metadata_keys(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """Raw mode on the function API escapes keys Convex rejects instead of failing inside it."""
    store.insert(
        make_event("user.updated", event_id="msg_k", public_metadata={"$plan": "pro", "naïve": 1})
    )
    mutation_worker(settings, store, convex).run_once()
    meta = convex.received[0].json()["args"]["data"]["public_metadata"]
    assert "$plan" not in meta and all(k.isascii() for k in meta)
    assert sorted(map(str, meta.values())) == ["1", "pro"]


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


@pytest.mark.parametrize("events_glob", [("organization.*",)])
def test_relay_events_skips_at_delivery(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn, events_glob: tuple[str]
) -> None:
    """An event outside RELAY_EVENTS is skipped by the worker even if stored pending."""
    store.insert(make_event("user.created", event_id="msg_1"))
    make_worker(settings, store, convex, events=events_glob).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.SKIPPED


class FlakyCompleteStore(SQLiteStore):
    """A real SQLite store whose first outcome writes fail like a full disk."""

    failures = 2

    def complete_many(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            from relay.errors import StoreError

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


def test_worker_wakes_for_its_own_retry_before_the_next_poll(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """A retry due in 200 ms shortens the loop's wait below the poll interval."""
    clock = msg_1_failing(store, convex, 1, 503)
    worker = make_worker(settings, store, convex, clock=clock, retry_schedule_s=(0.2,))
    worker.poll_interval_s = 5.0
    assert worker._wait_s() == 5.0
    worker.run_once()
    assert 0.0 < worker._wait_s() <= 0.2 * 1.2 + 0.01


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


StoreT = TypeVar("StoreT", bound=SQLiteStore)


def seeded(store_class: type[StoreT], path: Path, events: int) -> StoreT:
    """A migrated store of ``store_class`` holding ``events`` due events, one per user."""
    store = store_class(path)
    store.migrate()
    for n in range(events):
        store.insert(make_event(event_id=f"msg_{n:02d}", entity_id=f"user_{n}"))
    return store


def test_recorder_writes_outcomes_that_wait_together_in_one_transaction(
    settings: Settings, tmp_path: Path, convex: ConvexStandIn
) -> None:
    """Outcomes queued while the recorder is busy are written by one complete_many."""
    from relay.delivery.worker import Recorder
    from relay.models import Outcome

    store = seeded(BatchRecordingStore, tmp_path / "batches.db", 3)
    worker = make_worker(settings, store, convex)
    claimed = store.claim(worker.worker_id, now_ms=worker.now_ms(), lease_ms=60_000, limit=5)
    recorder = Recorder(worker)
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
    worker.burst_claim_every_s = 3600  # only the end of the burst can release the rest
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
    """Under an endless burst the worker still claims every burst_claim_every_s."""
    store = seeded(BurstingStore, tmp_path / "burst.db", 12)
    worker = make_worker(settings, store, convex, concurrency=4)
    worker.burst_claim_every_s = 0.2
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
    worker's own clock says burst_claim_every_s has passed (not the machine's uptime)."""
    store = seeded(BurstingStore, tmp_path / "burst.db", 8)
    clock = Clock()
    worker = make_worker(settings, store, convex, clock=clock, concurrency=4)
    # Minutes, not more: the stand-in checks the signature's timestamp against real time.
    worker.burst_claim_every_s = 240
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
