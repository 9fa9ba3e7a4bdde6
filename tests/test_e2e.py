"""End to end: signed webhooks into a real ``relay serve``, out to a loopback Convex.

Every relay here is a real process group (supervisor, gunicorn, delivery worker) on a
real SQLite file; Convex is the stand-in server, whose HTTP action verifies the
relay's re-signed Svix headers exactly as Convex's template does.
"""

from __future__ import annotations

import json
import os
import random
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from svix.webhooks import Webhook, WebhookVerificationError

from harness.factories import FORWARD_SECRET, SECOND_SECRET, SECRET, fixture_paths, make_envelope
from harness.relay_process import RelayProcess, TrackingStandIn, relay_env, wait_until
from relay.models import Event, Status, order_key, to_ms
from relay.store.sqlite import SQLiteStore
from tests.support.e2e import new_id, settled

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("standin_up")]

DEPLOY_KEY = "prod:standin|key"


def assert_json_error(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in response.text


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_relay(
    tmp_path_factory: pytest.TempPathFactory, standin: TrackingStandIn
) -> Iterator[RelayProcess]:
    """HTTP-action target, forward secret distinct from Clerk's, short timeouts and body cap."""
    workdir = tmp_path_factory.mktemp("http-relay")
    env = relay_env(
        workdir,
        CONVEX_SITE_URL=standin.url,
        RELAY_FORWARD_SECRET=FORWARD_SECRET,
        RELAY_DELIVERY_TIMEOUT="1s",
        RELAY_MAX_BODY="64KiB",
    )
    with RelayProcess(workdir, env) as relay:
        yield relay


@pytest.fixture(scope="module")
def http_store(http_relay: RelayProcess) -> Iterator[SQLiteStore]:
    store = http_relay.open_store()
    yield store
    store.close()


@pytest.fixture(scope="module")
def mutation_relay(
    tmp_path_factory: pytest.TempPathFactory, standin: TrackingStandIn
) -> Iterator[RelayProcess]:
    """Function-API target with the default routes (Convex's official Clerk template)."""
    workdir = tmp_path_factory.mktemp("mutation-relay")
    env = relay_env(workdir, CONVEX_URL=standin.url, CONVEX_DEPLOY_KEY=DEPLOY_KEY)
    with RelayProcess(workdir, env) as relay:
        yield relay


@pytest.fixture(scope="module")
def mutation_store(mutation_relay: RelayProcess) -> Iterator[SQLiteStore]:
    store = mutation_relay.open_store()
    yield store
    store.close()


def mutations_for(standin: TrackingStandIn, entity_id: str) -> list[dict[str, Any]]:
    """Successful function-API calls about one Clerk object, in arrival order."""
    calls = []
    for r in standin.successes():
        if r.path == "/api/mutation":
            call = r.json()
            args = call["args"]
            if (args.get("data") or {}).get("id") == entity_id or args.get(
                "clerkUserId"
            ) == entity_id:
                calls.append({**call, "authorization": r.headers.get("authorization")})
    return calls


# -- HTTP-action target ------------------------------------------------------------------------


def _order_key(path: Path) -> tuple[int, int, str]:
    envelope = json.loads(path.read_bytes())
    data = envelope.get("data") or {}
    at, upd = order_key(
        envelope["type"], to_ms(envelope.get("timestamp")), 0, to_ms(data.get("updated_at"))
    )
    return at, upd, path.name


def test_every_clerk_fixture_is_forwarded_byte_for_byte_and_re_signed(
    http_relay: RelayProcess, http_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """Each Clerk payload reaches the HTTP action with its bytes, its svix-id and a fresh
    signature made with RELAY_FORWARD_SECRET (not Clerk's secret)."""
    sent: dict[str, tuple[bytes, dict[str, str]]] = {}
    # In each object's own order, so no upsert is (rightly) superseded by a newer one.
    for path in sorted(fixture_paths(), key=_order_key):
        body = path.read_bytes()
        msg_id = new_id(path.stem.replace(".", "_").replace("-", "_"))
        sent_at = int(datetime.now(UTC).timestamp())
        response = http_relay.post_event(body, msg_id)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted", "id": msg_id}
        sent[msg_id] = (body, {"sent_at": str(sent_at)})
    assert len(sent) == len(fixture_paths()) >= 46

    for msg_id in sent:
        assert settled(http_store, msg_id).status == Status.DELIVERED

    forwarded = {r.headers["svix-id"]: r for r in standin.successes() if r.headers.get("svix-id")}
    for msg_id, (body, meta) in sent.items():
        got = forwarded[msg_id]
        assert got.path == "/clerk-users-webhook"
        assert got.body == body
        assert got.headers["content-type"] == "application/json"
        assert int(meta["sent_at"]) <= int(got.headers["svix-timestamp"]) <= got.at + 1
        Webhook(FORWARD_SECRET).verify(got.body, got.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(got.body, got.headers)
        assert standin.delivery_count(msg_id) == 1


def test_both_paths_are_the_same_endpoint(
    http_relay: RelayProcess, http_store: SQLiteStore
) -> None:
    """POST /clerk-users-webhook (Convex's documented path) accepts like /webhooks/clerk."""
    msg_id = new_id()
    envelope = make_envelope("user.created", entity_id=f"user_{uuid.uuid4().hex[:8]}")
    response = http_relay.post_event(envelope, msg_id, path="/clerk-users-webhook")
    assert response.json() == {"status": "accepted", "id": msg_id}
    assert settled(http_store, msg_id).status == Status.DELIVERED


def test_unknown_event_type_is_accepted_and_delivered(
    http_relay: RelayProcess, http_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """An event type the relay has never heard of is stored and forwarded (RELAY_EVENTS=*)."""
    msg_id = new_id()
    envelope = {"type": "brandNewThing.happened", "object": "event", "data": {"id": "bnt_1"}}
    response = http_relay.post_event(envelope, msg_id)
    assert response.json() == {"status": "accepted", "id": msg_id}
    assert settled(http_store, msg_id).status == Status.DELIVERED
    assert standin.delivery_count(msg_id) == 1


def test_duplicate_svix_id_is_acknowledged_and_delivered_once(
    http_relay: RelayProcess, http_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """A redelivery by Clerk (same svix-id) answers 200 duplicate and is not sent again."""
    msg_id = new_id()
    envelope = make_envelope("user.updated", entity_id=f"user_{uuid.uuid4().hex[:8]}")
    first = http_relay.post_event(envelope, msg_id)
    again = http_relay.post_event(envelope, msg_id)
    assert first.json() == {"status": "accepted", "id": msg_id}
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "id": msg_id}
    assert settled(http_store, msg_id).status == Status.DELIVERED
    late = http_relay.post_event(envelope, msg_id)  # after delivery, too
    assert late.json() == {"status": "duplicate", "id": msg_id}
    # A later event delivered means the worker had every chance to send the copy.
    sentinel = new_id()
    http_relay.post_event(make_envelope("user.created", entity_id="user_sentinel"), sentinel)
    assert settled(http_store, sentinel).status == Status.DELIVERED
    assert standin.delivery_count(msg_id) == 1
    assert http_relay.show(msg_id)["attemptCount"] == 1


def _stale() -> dict[str, Any]:
    return {"at": datetime.now(UTC) - timedelta(minutes=6)}


def _future() -> dict[str, Any]:
    return {"at": datetime.now(UTC) + timedelta(minutes=6)}


@pytest.mark.parametrize(
    ("case", "kwargs", "status"),
    [
        ("wrong secret", {"secret": SECOND_SECRET}, 401),
        ("stale timestamp", "stale", 401),
        ("future timestamp", "future", 401),
    ],
)
def test_unverifiable_webhooks_are_401_and_not_stored(
    http_relay: RelayProcess, http_store: SQLiteStore, case: str, kwargs: Any, status: int
) -> None:
    """A signature from another secret, or outside the 5-minute window, is 401 and not kept."""
    kw = {"stale": _stale, "future": _future}[kwargs]() if isinstance(kwargs, str) else kwargs
    msg_id = new_id()
    response = http_relay.post_event(make_envelope("user.created"), msg_id, **kw)
    assert_json_error(response, status)
    assert "secret" not in response.json()["detail"].lower().replace("signing", "")
    assert http_store.get(msg_id) is None


def _signed(body: bytes, msg_id: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(SECRET).sign(msg_id, now, body.decode()),
        "content-type": "application/json",
    }


@pytest.mark.parametrize(
    ("case", "mutate", "status"),
    [
        ("no svix headers", lambda h, b: ({"content-type": "application/json"}, b), 400),
        ("timestamp not a number", lambda h, b: ({**h, "svix-timestamp": "soon"}, b), 400),
        ("signature without v1", lambda h, b: ({**h, "svix-signature": "v2,abc"}, b), 400),
        ("garbled v1 signature", lambda h, b: ({**h, "svix-signature": "v1,@@@"}, b), 401),
        ("body not JSON", lambda h, b: (None, b"not json at all"), 400),
        ("body a JSON array", lambda h, b: (None, b"[1, 2, 3]"), 400),
        ("type missing", lambda h, b: (None, b'{"data": {}}'), 400),
        ("body not UTF-8", lambda h, b: (h, b'{"type": "user.created", "x": "\xff"}'), 400),
        ("body over RELAY_MAX_BODY", lambda h, b: (None, b" " * 70_000 + b), 413),
    ],
)
def test_malformed_requests_get_json_errors_and_store_nothing(
    http_relay: RelayProcess, http_store: SQLiteStore, case: str, mutate: Any, status: int
) -> None:
    """Bad headers or bodies get 400/401/413 as JSON, never a traceback, and nothing is kept."""
    msg_id = new_id()
    body = json.dumps(make_envelope("user.created")).encode()
    headers, body = mutate(_signed(body, msg_id), body)
    if headers is None:  # a bad body, correctly signed: the body itself is the problem
        headers = _signed(body, msg_id)
    response = http_relay.post("/webhooks/clerk", body, headers)
    assert_json_error(response, status)
    assert http_store.get(msg_id) is None


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("POST", "/webhooks/clerk/extra", 404),
        ("GET", "/webhooks/clerk", 405),
        ("PUT", "/clerk-users-webhook", 405),
    ],
)
def test_unknown_routes_and_methods_are_json(
    http_relay: RelayProcess, method: str, path: str, status: int
) -> None:
    """404 and 405 are JSON errors like every other error."""
    response = http_relay._session.request(method, f"{http_relay.url}{path}", timeout=10)
    assert_json_error(response, status)


# -- retries -----------------------------------------------------------------------------------


def test_server_errors_are_retried_until_delivered(
    http_relay: RelayProcess, http_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """Two 503s then a 200: delivered, with all three attempts in `relay show --json`."""
    standin.fail_next(2, 503)
    msg_id = new_id()
    http_relay.post_event(make_envelope("user.created", entity_id="user_retry503"), msg_id)
    assert settled(http_store, msg_id).status == Status.DELIVERED
    shown = http_relay.show(msg_id)
    assert shown["status"] == "delivered"
    assert shown["attemptCount"] == 3
    assert [a["outcome"] for a in shown["attempts"]] == ["retry", "retry", "delivered"]
    assert [a["statusCode"] for a in shown["attempts"]] == [503, 503, 200]
    assert "503" in shown["attempts"][0]["error"]
    assert shown["lastError"] is None


def test_retry_after_is_honoured(
    http_relay: RelayProcess, http_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """A 429 with Retry-After: 3 is not retried sooner, although the schedule says 200 ms."""
    standin.fail_next(1, 429, retry_after="3")
    msg_id = new_id()
    http_relay.post_event(make_envelope("user.created", entity_id="user_retry429"), msg_id)
    event = settled(http_store, msg_id)
    assert event.status == Status.DELIVERED
    first, second = event.attempts
    assert (first.status_code, first.outcome) == (429, "retry")
    assert second.at_ms - first.at_ms >= 3000


def test_client_error_fails_at_once_with_the_reason(
    http_relay: RelayProcess, http_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """A 400 from Convex is not retried: failed after one attempt, Convex's reason kept."""
    standin.fail_next(1, 400, body={"code": "BadJsonBody", "message": "no good"})
    msg_id = new_id()
    http_relay.post_event(make_envelope("user.created", entity_id="user_400"), msg_id)
    event = settled(http_store, msg_id)
    assert event.status == Status.FAILED
    assert event.attempt_count == 1
    assert event.last_error is not None and "400" in event.last_error
    assert "no good" in event.last_error


def test_hanging_convex_times_out_and_is_retried(
    http_relay: RelayProcess, http_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """An attempt longer than RELAY_DELIVERY_TIMEOUT (1s) is cut, logged as timed out, retried."""
    standin.script.hang_s = 3.0
    msg_id = new_id()
    http_relay.post_event(make_envelope("user.created", entity_id="user_hang"), msg_id)
    wait_until(lambda: (e := http_store.get(msg_id)) and e.attempt_count >= 1, 20, "an attempt")
    standin.up()
    event = settled(http_store, msg_id)
    assert event.status == Status.DELIVERED
    assert event.attempts[0].outcome == "retry"
    assert event.attempts[0].status_code is None
    assert "timed out" in (event.attempts[0].error or "")


def test_retries_exhausted_ends_failed(
    http_relay: RelayProcess, http_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """After the last gap of RELAY_RETRY_SCHEDULE (3 gaps = 4 attempts) the event is failed."""
    standin.fail_next(4, 502)
    msg_id = new_id()
    http_relay.post_event(make_envelope("user.created", entity_id="user_exhaust"), msg_id)
    event = settled(http_store, msg_id)
    assert event.status == Status.FAILED
    assert event.attempt_count == 4
    assert event.last_error is not None and "retries exhausted" in event.last_error
    assert standin.delivery_count(msg_id) == 0


# -- mutation target ---------------------------------------------------------------------------


def test_default_routes_call_the_official_template_functions(
    mutation_relay: RelayProcess, mutation_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """user.created/updated -> users:upsertFromClerk {data}; user.deleted ->
    users:deleteFromClerk {clerkUserId}; with Authorization: Convex <deploy key>."""
    uid = f"user_{uuid.uuid4().hex[:10]}"
    ids = {}
    for n, event_type in enumerate(["user.created", "user.updated", "user.deleted"]):
        envelope = make_envelope(event_type, entity_id=uid, timestamp=1_700_000_000_000 + n)
        ids[event_type] = new_id()
        assert mutation_relay.post_event(envelope, ids[event_type]).status_code == 200
    for msg_id in ids.values():
        assert settled(mutation_store, msg_id).status == Status.DELIVERED

    calls = mutations_for(standin, uid)
    assert [c["path"] for c in calls] == [
        "users:upsertFromClerk",
        "users:upsertFromClerk",
        "users:deleteFromClerk",
    ]
    assert calls[0]["args"]["data"]["id"] == uid
    assert calls[0]["format"] == "json"
    assert calls[2]["args"] == {"clerkUserId": uid}
    assert {c["authorization"] for c in calls} == {f"Convex {DEPLOY_KEY}"}


@pytest.mark.parametrize("event_type", ["organization.created", "session.created", "email.created"])
def test_unrouted_types_are_skipped_not_sent(
    mutation_relay: RelayProcess,
    mutation_store: SQLiteStore,
    standin: TrackingStandIn,
    event_type: str,
) -> None:
    """With the default routes, non-user events are stored as skipped and never sent."""
    msg_id = new_id()
    entity = f"x_{uuid.uuid4().hex[:10]}"
    response = mutation_relay.post_event(make_envelope(event_type, entity_id=entity), msg_id)
    assert response.json() == {"status": "accepted", "id": msg_id}
    event = settled(mutation_store, msg_id)
    assert event.status == Status.SKIPPED
    assert event.attempt_count == 0
    assert mutations_for(standin, entity) == []


def test_function_error_fails_at_once_with_its_message(
    mutation_relay: RelayProcess, mutation_store: SQLiteStore, standin: TrackingStandIn
) -> None:
    """A 200 reply {"status": "error"} is a function error: failed, message kept, no retry."""
    standin.function_error_next(1, "Uncaught Error: email is required")
    msg_id = new_id()
    uid = f"user_{uuid.uuid4().hex[:10]}"
    mutation_relay.post_event(make_envelope("user.created", entity_id=uid), msg_id)
    event = settled(mutation_store, msg_id)
    assert event.status == Status.FAILED
    assert event.attempt_count == 1
    assert "email is required" in (event.last_error or "")


def test_custom_routes_with_globs(tmp_path: Path, standin: TrackingStandIn) -> None:
    """RELAY_ROUTES `organization.*=orgs:sync` routes org events; other types are skipped."""
    env = relay_env(
        tmp_path,
        CONVEX_URL=standin.url,
        CONVEX_DEPLOY_KEY=DEPLOY_KEY,
        RELAY_ROUTES="user.created,user.updated=users:upsertFromClerk;organization.*=orgs:sync",
    )
    org = f"org_{uuid.uuid4().hex[:10]}"
    with RelayProcess(tmp_path, env) as relay:
        store = relay.open_store()
        ids = {
            t: new_id()
            for t in (
                "organization.created",
                "organization.deleted",
                "organizationMembership.created",
                "user.deleted",
            )
        }
        for n, (event_type, msg_id) in enumerate(ids.items()):
            envelope = make_envelope(event_type, entity_id=org, timestamp=1_700_000_000_000 + n)
            assert relay.post_event(envelope, msg_id).status_code == 200
        statuses = {t: settled(store, i).status for t, i in ids.items()}
        store.close()
    assert statuses == {
        "organization.created": Status.DELIVERED,
        "organization.deleted": Status.DELIVERED,
        "organizationMembership.created": Status.SKIPPED,  # `organization.*` needs the dot
        "user.deleted": Status.SKIPPED,  # not routed in this RELAY_ROUTES
    }
    calls = mutations_for(standin, org)
    assert [c["path"] for c in calls] == ["orgs:sync", "orgs:sync"]
    assert calls[0]["args"]["data"]["id"] == org


# -- ordering --------------------------------------------------------------------------------


def test_events_of_one_object_are_delivered_in_order_one_at_a_time(tmp_path: Path) -> None:
    """Events posted shuffled while Convex is down are delivered, once it is back, in
    occurredAt order per user, never two in flight for one user (users in parallel)."""
    with TrackingStandIn(FORWARD_SECRET).running() as cx:
        cx.down()
        env = relay_env(
            tmp_path,
            CONVEX_SITE_URL=cx.url,
            RELAY_FORWARD_SECRET=FORWARD_SECRET,
            RELAY_CONCURRENCY="8",
            RELAY_RETRY_SCHEDULE=",".join(["300ms"] * 40),
        )
        users = [f"user_order{n}_{uuid.uuid4().hex[:6]}" for n in range(3)]
        expected: dict[str, list[str]] = {}
        posts = []
        for uid in users:
            types = ["user.created", *["user.updated"] * 5, "user.deleted"]
            expected[uid] = []
            for n, event_type in enumerate(types):
                at = 1_700_000_000_000 + n * 1000
                envelope = make_envelope(
                    event_type, entity_id=uid, timestamp=at, updated_at=at, first_name=f"v{n}"
                )
                msg_id = new_id("ord")
                expected[uid].append(msg_id)
                posts.append((envelope, msg_id))
        random.Random(7).shuffle(posts)
        with RelayProcess(tmp_path, env) as relay:
            store = relay.open_store()
            for envelope, msg_id in posts:
                response = relay.post_event(envelope, msg_id)
                assert response.json() == {"status": "accepted", "id": msg_id}
            wait_until(lambda: len(cx.received) >= 2, 20, "attempts against the down Convex")
            cx.up()
            events = {i: settled(store, i, timeout=60) for ids in expected.values() for i in ids}
            store.close()
        assert {e.status for e in events.values()} == {Status.DELIVERED}
        order = [r.headers["svix-id"] for r in cx.successes()]
        for uid in users:
            assert [i for i in order if i in expected[uid]] == expected[uid]
            assert cx.max_in_flight[uid] == 1


# -- shutdown ----------------------------------------------------------------------------------


@contextmanager
def attempt_in_flight(
    tmp_path: Path, entity_id: str
) -> Iterator[tuple[TrackingStandIn, RelayProcess, str]]:
    """A relay whose one delivery attempt is in flight: Convex takes 2 s to answer it.
    Yields the stand-in, the relay and the event's id."""
    with TrackingStandIn(FORWARD_SECRET).running() as cx:
        cx.script.hang_s = 2.0
        env = relay_env(
            tmp_path,
            CONVEX_SITE_URL=cx.url,
            RELAY_FORWARD_SECRET=FORWARD_SECRET,
            RELAY_DELIVERY_TIMEOUT="10s",
        )
        msg_id = new_id()
        with RelayProcess(tmp_path, env) as relay:
            relay.post_event(make_envelope("user.created", entity_id=entity_id), msg_id)
            wait_until(lambda: msg_id in cx.entered, 20, "the attempt to reach Convex")
            yield cx, relay, msg_id


def stored(relay: RelayProcess, event_id: str) -> Event | None:
    """The event as the relay's database holds it (the relay may have exited)."""
    store = relay.open_store()
    event = store.get(event_id)
    store.close()
    return event


def test_sigterm_finishes_the_attempt_in_flight_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM while Convex takes 2 s to answer: the attempt completes, is recorded, exit 0."""
    with attempt_in_flight(tmp_path, "user_term") as (cx, relay, msg_id):
        assert relay.stop() == 0
    assert cx.delivery_count(msg_id) == 1
    event = stored(relay, msg_id)
    assert event is not None
    assert event.status == Status.DELIVERED
    assert [a.status_code for a in event.attempts] == [200]
    assert "worker_stopped" in relay.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["systemd", "ctrl-c"])
def test_a_signal_to_the_whole_process_group_is_a_warm_stop(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """systemd (KillMode=control-group) and a terminal's Ctrl-C signal every process of
    relay serve at once, and serve forwards SIGTERM too: the worker takes the repeat as
    the same stop, finishes the attempt in flight and everything exits 0."""
    with attempt_in_flight(tmp_path, "user_group") as (cx, relay, msg_id):
        assert relay.proc is not None
        os.killpg(relay.pid, signum)
        returncode = relay.proc.wait(40)
        log = relay.log()
    assert returncode == 0, log
    assert "worker_cold_shutdown" not in log
    if signum == signal.SIGINT:  # two SIGTERMs may merge into one in the kernel
        assert "worker_signal_repeated" in log
    assert cx.delivery_count(msg_id) == 1
    event = stored(relay, msg_id)
    assert event is not None and event.status == Status.DELIVERED
