"""Ingest through the Flask app on a real SQLite file: status codes, bodies, durability."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TypedDict

import pytest
from flask.testing import FlaskClient

from harness.factories import SECOND_SECRET, SECRET, fixture_paths, make_envelope, signed_headers
from relay import create_app
from relay.models import Status
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore


class HeadersKw(TypedDict, total=False):
    """Keyword arguments for ``signed_headers`` in the parametrized cases."""

    secret: str


def post(
    client: FlaskClient,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/webhooks/clerk",
) -> tuple[int, dict[str, object]]:
    resp = client.post(
        path, data=body, headers=headers if headers is not None else signed_headers(body)
    )
    return resp.status_code, resp.get_json()


@pytest.mark.parametrize("fixture", fixture_paths(), ids=lambda p: p.stem)
def test_every_clerk_fixture_is_accepted_and_stored_byte_for_byte(
    client: FlaskClient, store: SQLiteStore, fixture: Path
) -> None:
    """Each Clerk example payload is acknowledged and stored exactly as received."""
    body = fixture.read_bytes()
    headers = signed_headers(body)
    status, reply = post(client, body, headers)
    assert status == 200
    assert reply == {"status": "accepted", "id": headers["svix-id"]}
    event = store.get(headers["svix-id"])
    assert event is not None and event.body == body
    assert event.type == json.loads(body)["type"]


@pytest.mark.parametrize("path", ["/webhooks/clerk", "/clerk-users-webhook"])
def test_both_paths_are_the_same_endpoint(client: FlaskClient, path: str) -> None:
    """Convex's documented path works as an alias."""
    body = json.dumps(make_envelope("user.created")).encode()
    assert post(client, body, path=path)[0] == 200


def test_duplicate_svix_id_is_acknowledged_once(client: FlaskClient, store: SQLiteStore) -> None:
    """A redelivery with the same svix-id answers duplicate and stores nothing new."""
    body = json.dumps(make_envelope("user.created")).encode()
    headers = signed_headers(body, msg_id="msg_dupe")
    assert post(client, body, headers) == (200, {"status": "accepted", "id": "msg_dupe"})
    assert post(client, body, signed_headers(body, msg_id="msg_dupe")) == (
        200,
        {"status": "duplicate", "id": "msg_dupe"},
    )
    assert store.counts()["pending"] == 1


def test_second_secret_verifies(client: FlaskClient, settings: Settings, db_url: str) -> None:
    """An app configured with two secrets accepts deliveries signed by the second."""
    app = create_app(settings.with_overrides(webhook_secrets=(SECRET, SECOND_SECRET)))
    body = json.dumps(make_envelope("user.created")).encode()
    assert post(app.test_client(), body, signed_headers(body, secret=SECOND_SECRET))[0] == 200


@pytest.mark.parametrize(
    ("body", "headers_kw", "status", "error"),
    [
        (b'{"type":"user.created"}', {"secret": SECOND_SECRET}, 401, "bad_signature"),
        (b"not json", {}, 400, "bad_body"),
        (b"[1,2]", {}, 400, "bad_body"),
        (b'{"data":{}}', {}, 400, "bad_body"),
        (b'{"type":42}', {}, 400, "bad_body"),
        (b'{"type":""}', {}, 400, "bad_body"),
    ],
    ids=["wrong-secret", "not-json", "array", "no-type", "numeric-type", "empty-type"],
)
def test_bad_requests_get_json_errors(
    client: FlaskClient,
    store: SQLiteStore,
    body: bytes,
    headers_kw: HeadersKw,
    status: int,
    error: str,
) -> None:
    """Invalid input is a 4xx JSON error and nothing is stored."""
    code, reply = post(client, body, signed_headers(body, **headers_kw))
    assert (code, reply["error"]) == (status, error)
    assert isinstance(reply["detail"], str) and reply["detail"]
    assert sum(store.counts().values()) == 0


def test_missing_headers_are_400(client: FlaskClient) -> None:
    """No svix headers at all is a 400 naming them."""
    code, reply = post(client, b'{"type":"user.created"}', {})
    assert code == 400 and "svix-id" in str(reply["detail"])


def test_tampered_body_is_401(client: FlaskClient) -> None:
    """Changing the body after signing is caught on the raw bytes."""
    body = b'{"type":"user.created","data":{"id":"user_1"}}'
    headers = signed_headers(body)
    code, _ = post(client, body.replace(b"user_1", b"user_9"), headers)
    assert code == 401


def test_body_over_limit_is_413(settings: Settings) -> None:
    """A body over RELAY_MAX_BODY is refused with 413 JSON before verification."""
    app = create_app(settings.with_overrides(max_body_bytes=1024))
    body = json.dumps(make_envelope("user.created", pad="x" * 2000)).encode()
    code, reply = post(app.test_client(), body)
    assert code == 413 and reply["error"] == "payload_too_large"


def test_unknown_event_type_is_accepted(client: FlaskClient, store: SQLiteStore) -> None:
    """Types Clerk adds later are acknowledged and stored, not rejected."""
    body = json.dumps(make_envelope("billingWidget.exploded")).encode()
    headers = signed_headers(body)
    assert post(client, body, headers)[0] == 200
    assert store.get(headers["svix-id"]) is not None


def test_unrouted_type_is_stored_skipped_on_mutation_target(
    settings: Settings, store: SQLiteStore
) -> None:
    """With the template's routes, session events are kept but marked skipped."""
    app = create_app(
        settings.with_overrides(
            target="mutation", convex_url="https://x.convex.cloud", convex_deploy_key="prod:x|y"
        )
    )
    body = json.dumps(make_envelope("session.created", entity_id="sess_1")).encode()
    headers = signed_headers(body)
    assert post(app.test_client(), body, headers)[0] == 200
    event = store.get(headers["svix-id"])
    assert event is not None and event.status == Status.SKIPPED


def test_relay_events_filter_marks_others_skipped(settings: Settings, store: SQLiteStore) -> None:
    """RELAY_EVENTS globs decide what is delivered; the rest is stored as skipped."""
    app = create_app(settings.with_overrides(events=("user.*",)))
    body = json.dumps(make_envelope("organization.created", entity_id="org_1")).encode()
    headers = signed_headers(body)
    post(app.test_client(), body, headers)
    event = store.get(headers["svix-id"])
    assert event is not None and event.status == Status.SKIPPED


def test_store_failure_is_503_and_nothing_acknowledged(settings: Settings, tmp_path: Path) -> None:
    """A database that cannot be written gives 503 JSON, never 500 or 200."""
    db_dir = tmp_path / "ro"
    db_dir.mkdir()
    db = db_dir / "relay.db"
    app = create_app(settings.with_overrides(database_url=f"sqlite:///{db}"))
    client = app.test_client()
    body = json.dumps(make_envelope("user.created")).encode()
    assert post(client, body)[0] == 200  # store opened and migrated
    # Every later insert fails the way a full disk does (SQLITE_FULL's message).
    store = SQLiteStore(db)
    store._conn().execute(
        "CREATE TRIGGER no_more BEFORE INSERT ON events "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    store.close()
    body2 = json.dumps(make_envelope("user.updated")).encode()
    code, reply = post(client, body2)
    assert code == 503 and reply["error"] == "store_unavailable"
    assert "Traceback" not in json.dumps(reply)
    assert SQLiteStore(db).counts()["pending"] == 1


def test_errors_are_json_everywhere(client: FlaskClient) -> None:
    """404 and 405 are JSON like every other error."""
    r404 = client.get("/no/such/page")
    r405 = client.get("/webhooks/clerk")
    assert r404.status_code == 404 and r404.get_json()["error"] == "not_found"
    assert r405.status_code == 405 and r405.get_json()["error"] == "method_not_allowed"


def test_acknowledged_event_is_committed_for_other_connections(
    client: FlaskClient, db_url: str
) -> None:
    """By the time the 200 is sent, another connection sees the row (no open transaction)."""
    import sqlite3

    body = json.dumps(make_envelope("user.created")).encode()
    headers = signed_headers(body)
    post(client, body, headers)
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    rows = conn.execute("SELECT id FROM events").fetchall()
    conn.close()
    assert rows == [(headers["svix-id"],)]


def test_forwarded_for_is_trusted_only_when_configured(settings: Settings) -> None:
    """X-Forwarded-For sets the client address only with RELAY_TRUSTED_PROXIES."""
    from flask import request

    seen: list[str | None] = []
    for hops in (0, 1):
        app = create_app(settings.with_overrides(trusted_proxies=hops))
        app.before_request(lambda: seen.append(request.remote_addr))
        app.test_client().get(
            "/healthz",
            headers={"X-Forwarded-For": "203.0.113.9"},
            environ_base={"REMOTE_ADDR": "10.0.0.1"},
        )
    assert seen == ["10.0.0.1", "203.0.113.9"]


# -- hostile numbers and nesting (issue 13, items 1 and 2) ---------------------------------


def _body(timestamp: str = "1795752300000", updated_at: str = "1795752300000") -> bytes:
    data = f'{{"id":"user_x","object":"user","updated_at":{updated_at}}}'
    return f'{{"type":"user.updated","timestamp":{timestamp},"data":{data}}}'.encode()


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (_body(timestamp="NaN"), "NaN is not a JSON number"),
        (_body(updated_at="Infinity"), "Infinity is not a JSON number"),
        (_body(updated_at="-Infinity"), "-Infinity is not a JSON number"),
        (_body(timestamp="1e400"), "out of range"),
        (_body(updated_at="-1e400"), "out of range"),
        (b'{"type":"user.updated","data":' + b"[" * 1000 + b"]" * 1000 + b"}", "deeper than"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper than"),
        (b'{"type":"user.updated","x":' + b"[" * 128 + b"]" * 128 + b"}", "deeper than"),
    ],
    ids=[
        "nan",
        "infinity",
        "minus-infinity",
        "1e400",
        "minus-1e400",
        "1000-deep",
        "100k-deep",
        "129-deep",
    ],
)
def test_signed_bodies_json_cannot_hold_are_400_not_500(
    client: FlaskClient, store: SQLiteStore, body: bytes, detail: str
) -> None:
    """NaN, infinities, overflowing floats and nesting past MAX_NESTING are a 400 naming
    the problem (json.loads takes the first three and recurses on the last)."""
    code, reply = post(client, body)
    assert (code, reply["error"]) == (400, "bad_body")
    assert detail in str(reply["detail"])
    assert sum(store.counts().values()) == 0


def test_nesting_up_to_the_limit_is_accepted(client: FlaskClient, store: SQLiteStore) -> None:
    """128 levels (counting the envelope) are still an event; brackets inside strings
    do not count."""
    from relay.web.ingest import MAX_NESTING

    inner = b"[" * (MAX_NESTING - 1) + b"]" * (MAX_NESTING - 1)
    body = b'{"type":"user.updated","s":"' + b"[{" * 500 + b'\\"[","x":' + inner + b"}"
    headers = signed_headers(body)
    assert post(client, body, headers)[0] == 200
    assert store.get(headers["svix-id"]) is not None


@pytest.mark.parametrize(
    ("timestamp", "updated_at", "times"),
    [
        ("1795752300000", "99999999999999999999", (1795752300000, None)),  # the reported body
        ("1e300", "1795752300000", (None, 1795752300000)),
        (str(2**63 + 1), str(2**64), (None, None)),
        ("-5", "1.5e308", (None, None)),
        ("true", '"yesterday"', (None, None)),
    ],
    ids=["updated-at-2^66", "timestamp-1e300", "above-2^63", "negative-and-huge", "wrong-types"],
)
def test_times_clerk_never_sends_are_stored_as_unknown_time(
    client: FlaskClient,
    store: SQLiteStore,
    timestamp: str,
    updated_at: str,
    times: tuple[int | None, int | None],
) -> None:
    """A signed event whose times are out of any real range is kept (never a 500): it is
    ordered as "unknown time", by when it arrived."""
    body = _body(timestamp, updated_at)
    headers = signed_headers(body)
    code, reply = post(client, body, headers)
    assert (code, reply) == (200, {"status": "accepted", "id": headers["svix-id"]})
    event = store.get(headers["svix-id"])
    assert event is not None and event.body == body
    assert (event.occurred_at_ms, event.updated_at_ms) == times
    assert event.order == (times[0] or event.received_at_ms, times[1] or 0)


def test_readiness_fails_while_ingest_cannot_store(settings: Settings, tmp_path: Path) -> None:
    """While inserts fail (disk full), /readyz is 503 naming the ingest check; the next
    event stored clears it."""
    db = tmp_path / "relay.db"
    app = create_app(settings.with_overrides(database_url=f"sqlite:///{db}"))
    client = app.test_client()
    assert post(client, json.dumps(make_envelope("user.created")).encode())[0] == 200
    store = SQLiteStore(db)
    store.heartbeat("w1", now_ms=int(time.time() * 1000))
    assert "ingest" not in client.get("/readyz").get_json().get("failing", [])
    store._conn().execute(
        "CREATE TRIGGER no_more BEFORE INSERT ON events "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    assert post(client, json.dumps(make_envelope("user.updated")).encode())[0] == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["failing"] == ["ingest"]
    assert "failed" in ready.get_json()["checks"]["ingest"]
    store._conn().execute("DROP TRIGGER no_more")
    store.close()
    assert post(client, json.dumps(make_envelope("user.deleted")).encode())[0] == 200
    assert client.get("/readyz").get_json()["checks"]["ingest"] == "ok"


def test_same_svix_id_with_another_body_keeps_the_first_and_says_so(
    client: FlaskClient, store: SQLiteStore
) -> None:
    """A redelivery whose signed body differs is answered duplicate and dropped, but
    logged with both hashes, counted and shown on the event (it used to pass silently)."""
    import hashlib

    from structlog.testing import capture_logs

    from relay import metrics

    first = json.dumps(make_envelope("user.updated", first_name="Ada")).encode()
    second = json.dumps(make_envelope("user.updated", first_name="Eve")).encode()
    assert post(client, first, signed_headers(first, msg_id="msg_twice"))[0] == 200
    before = metrics.BODY_CONFLICTS._value.get()
    with capture_logs() as logs:
        code, reply = post(client, second, signed_headers(second, msg_id="msg_twice"))
        same = post(client, first, signed_headers(first, msg_id="msg_twice"))
    assert (code, reply) == (200, {"status": "duplicate", "id": "msg_twice"})
    assert same == (200, {"status": "duplicate", "id": "msg_twice"})
    [warning] = [e for e in logs if e["event"] == "duplicate_body_differs"]
    assert warning["log_level"] == "warning"
    assert warning["stored_sha256"] == hashlib.sha256(first).hexdigest()
    assert warning["received_sha256"] == hashlib.sha256(second).hexdigest()
    assert "Eve" not in json.dumps(logs)  # hashes, never the payload
    assert metrics.BODY_CONFLICTS._value.get() == before + 1
    event = store.get("msg_twice")
    assert event is not None and event.body == first
    shown = event.to_dict(with_attempts=True)["bodyConflicts"]
    assert [c["bodySha256"] for c in shown] == [hashlib.sha256(second).hexdigest()]
