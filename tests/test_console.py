"""The web console: sign-in and out, CSRF, headers, redaction, and no secret on any page."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from harness.factories import FIXTURES, SECRET, make_event
from relay import create_app
from relay.models import NewEvent, Status
from relay.redact import REDACTED, redact, redact_text
from relay.settings import Settings
from relay.store import Store, open_store
from relay.web.auth import FailureLimiter, session_key
from tests.support.adminkit import DEPLOY_KEY, TOKEN, admin_settings

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def relay_settings(tmp_path: Path) -> Settings:
    return admin_settings(tmp_path)


@pytest.fixture
def app(relay_settings: Settings) -> Flask:
    return create_app(relay_settings)


@pytest.fixture
def store(relay_settings: Settings) -> Store:
    s = open_store(relay_settings.database_url)
    s.migrate()
    return s


def csrf(client: FlaskClient, path: str = "/admin/signin") -> str:
    """The CSRF token of the form on ``path``."""
    match = _CSRF.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF field on {path}"
    return match.group(1)


def signed_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    response = client.post("/admin/signin", data={"csrf_token": csrf(client), "token": TOKEN})
    assert response.status_code == 302
    return client


def test_pages_need_a_session(app: Flask) -> None:
    """Every console page redirects to sign-in without a session."""
    client = app.test_client()
    for path in ("/admin/", "/admin/event/msg_1", "/admin/bulk-replay"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].endswith("/admin/signin")


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_ends_it(app: Flask) -> None:
    """A right token gives a signed HttpOnly SameSite=Strict cookie; sign-out ends the session."""
    client = app.test_client()
    token = csrf(client)
    response = client.post("/admin/signin", data={"csrf_token": token, "token": TOKEN})
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http in the test client
    assert TOKEN not in cookie
    page = client.get("/admin/")
    assert page.status_code == 200 and "Sign out" in page.get_data(as_text=True)
    out = client.post("/admin/signout", data={"csrf_token": csrf(client, "/admin/")})
    assert out.status_code == 302
    assert client.get("/admin/").status_code == 302


def test_cookie_is_secure_behind_https(app: Flask) -> None:
    """When the request came over https (directly or via the proxy header) the cookie is Secure."""
    client = app.test_client()
    token = csrf(client)
    response = client.post(
        "/admin/signin",
        data={"csrf_token": token, "token": TOKEN},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "Secure" in response.headers["Set-Cookie"]


def test_session_key_is_shared_by_workers_and_changes_with_the_token(
    relay_settings: Settings,
) -> None:
    """Two app instances (two gunicorn workers) accept each other's cookie; a new token does not."""
    first, second = create_app(relay_settings), create_app(relay_settings)
    client = signed_in(first)
    cookie = client.get_cookie("relay_console", path="/admin")
    assert cookie is not None
    other = second.test_client()
    other.set_cookie("relay_console", cookie.value, path="/admin")
    assert other.get("/admin/").status_code == 200
    rotated = create_app(relay_settings.with_overrides(admin_token=TOKEN + "-rotated"))
    stale = rotated.test_client()
    stale.set_cookie("relay_console", cookie.value, path="/admin")
    assert stale.get("/admin/").status_code == 302
    assert session_key(TOKEN) != session_key(TOKEN + "x")


def test_wrong_token_is_refused_and_rate_limited(app: Flask) -> None:
    """A wrong token re-shows the form (401); repeated guesses get 429 with Retry-After."""
    app.extensions["relay_admin_limiter"] = FailureLimiter(max_failures=3)
    client = app.test_client()
    token = csrf(client)
    for _ in range(3):
        response = client.post("/admin/signin", data={"csrf_token": token, "token": "nope"})
        assert response.status_code == 401
        assert "not right" in response.get_data(as_text=True)
    limited = client.post("/admin/signin", data={"csrf_token": token, "token": TOKEN})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert client.get("/admin/").status_code == 302  # the right token did not get in


@pytest.mark.parametrize(
    "path", ["/admin/signin", "/admin/signout", "/admin/event/msg_1/replay", "/admin/bulk-replay"]
)
@pytest.mark.parametrize("token", [None, "forged-token"])
def test_post_without_the_csrf_token_is_refused(
    app: Flask, store: Store, path: str, token: str | None
) -> None:
    """Every POST form needs this session's CSRF token; missing or wrong is a 400 and no effect."""
    store.insert(make_event(event_id="msg_1", status=Status.FAILED))
    client = signed_in(app)
    data = {"token": TOKEN} if token is None else {"token": TOKEN, "csrf_token": token}
    response = client.post(path, data=data)
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    assert store.get("msg_1").status is Status.FAILED  # type: ignore[union-attr]
    assert client.get("/admin/").status_code == 200  # still signed in


def test_security_headers_on_console_pages(app: Flask) -> None:
    """CSP self, no framing, same-origin referrers, no caching, on pages and the sign-in form."""
    client = signed_in(app)
    for path in ("/admin/", "/admin/signin", "/admin/static/console.css"):
        response = client.get(path)
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cache-Control"] == "no-store"


def test_list_filters_and_counts(app: Flask, store: Store) -> None:
    """The list shows counts per status and narrows by status and type glob."""
    store.insert(make_event("user.updated", event_id="msg_u", status=Status.FAILED))
    store.insert(make_event("organization.created", event_id="msg_o", status=Status.FAILED))
    store.insert(make_event("user.created", event_id="msg_d", status=Status.DELIVERED))
    client = signed_in(app)
    page = client.get("/admin/?status=failed&type=user.*&entity=&since=").get_data(as_text=True)
    assert "msg_u" in page and "msg_o" not in page and "msg_d" not in page
    assert re.search(r"failed <b>2</b>", page)
    assert re.search(r"delivered <b>1</b>", page)
    bad = client.get("/admin/?since=whenever")
    assert bad.status_code == 400 and "since" in bad.get_data(as_text=True)


def test_event_page_redacts_private_fields_and_one_time_codes(app: Flask, store: Store) -> None:
    """private_metadata, event_attributes and OTP codes (even inside the email text) are hidden."""
    envelope = json.loads((FIXTURES / "clerk" / "email.created.json").read_text())
    body = json.dumps(envelope).encode()
    store.insert(NewEvent.from_envelope("msg_email", body, envelope, received_at_ms=1))
    store.insert(
        make_event(
            event_id="msg_user",
            private_metadata={"stripeId": "cus_hidden"},
            public_metadata={"plan": "pro"},
        )
    )
    client = signed_in(app)
    email_page = client.get("/admin/event/msg_email").get_data(as_text=True)
    assert "123456" not in email_page
    assert "user_agent" not in email_page and "client_ip" not in email_page
    assert "johndoe@acme.com" in email_page  # ordinary fields stay readable
    user_page = client.get("/admin/event/msg_user").get_data(as_text=True)
    assert "cus_hidden" not in user_page and "stripeId" not in user_page
    assert "pro" in user_page and REDACTED in user_page


def test_replay_one_and_selection_through_the_console(app: Flask, store: Store) -> None:
    """The replay button queues one event; the confirmation page counts, then replays the rest."""
    for n in range(3):
        store.insert(make_event(event_id=f"msg_f{n}", status=Status.FAILED, entity_id=f"u{n}"))
    client = signed_in(app)
    token = csrf(client, "/admin/event/msg_f0")
    done = client.post(
        "/admin/event/msg_f0/replay", data={"csrf_token": token}, follow_redirects=True
    )
    assert "Queued for delivery" in done.get_data(as_text=True)
    assert store.get("msg_f0").status is Status.PENDING  # type: ignore[union-attr]
    again = client.post("/admin/event/msg_f0/replay", data={"csrf_token": token})
    assert again.status_code == 409 and "already pending" in again.get_data(as_text=True)

    confirm = client.get("/admin/bulk-replay?status=failed").get_data(as_text=True)
    assert "<b>2</b> event(s) will be queued" in confirm
    client.post("/admin/bulk-replay", data={"csrf_token": token, "status": "failed"})
    assert store.counts()["failed"] == 0 and store.counts()["pending"] == 3


def test_banner_for_backlog_and_silent_worker(app: Flask, store: Store) -> None:
    """An old pending event and a missing or stale heartbeat each raise a banner."""
    client = signed_in(app)
    assert "No delivery worker has reported" in client.get("/admin/").get_data(as_text=True)
    now_ms = int(time.time() * 1000)
    store.heartbeat("w1", now_ms=now_ms)
    page = client.get("/admin/").get_data(as_text=True)
    assert "banner warn" not in page
    store.heartbeat("w1", now_ms=now_ms - 3_600_000)
    store.insert(make_event(event_id="msg_old", received_at_ms=now_ms - 7_200_000))
    page = client.get("/admin/").get_data(as_text=True)
    assert "last seen" in page and "oldest pending event has waited 2h" in page


def test_no_secret_on_any_page(app: Flask, store: Store) -> None:
    """Signing secrets, deploy key and admin token never appear, even when a payload holds them."""
    store.insert(
        make_event(
            event_id="msg_s",
            status=Status.FAILED,
            note=f"leaked {SECRET} and {DEPLOY_KEY} and {TOKEN}",
            api_key="k-123456789",
            jwt="eyJhbGciOi.eyJzdWIiOi.sig",
        )
    )
    client = signed_in(app)
    pages = [
        "/admin/signin",
        "/admin/",
        "/admin/event/msg_s",
        "/admin/bulk-replay",
        "/admin/event/msg_missing",
        "/admin/?status=failed",
    ]
    for path in pages:
        text = client.get(path).get_data(as_text=True)
        for secret in (SECRET, DEPLOY_KEY, TOKEN, "k-123456789", "eyJhbGciOi.eyJzdWIiOi"):
            assert secret not in text, (path, secret)


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("Authorization: Bearer abcdefgh12345", "abcdefgh12345"),
        ("key sk_live_abcdefgh1234 here", "sk_live_abcdefgh1234"),
        ("prod:happy-otter-123|eyJ2aWQiOiJ4In0=", "eyJ2aWQiOiJ4In0="),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
    ],
)
def test_redact_text_hides_credential_shapes(text: str, hidden: str) -> None:
    """Strings shaped like credentials are redacted wherever they appear."""
    assert hidden not in redact_text(text)
    assert REDACTED in redact_text(text)


def test_redact_keeps_booleans_and_ordinary_fields() -> None:
    """Flags like password_enabled stay readable; only values under secret-like keys go."""
    out = redact(
        {
            "password_enabled": True,
            "password": "hunter22",
            "id": "user_1",
            "nested": [{"private_metadata": {"a": 1}, "token": None}],
        }
    )
    assert out == {
        "password_enabled": True,
        "password": REDACTED,
        "id": "user_1",
        "nested": [{"private_metadata": REDACTED, "token": None}],
    }


def test_banner_when_the_target_is_down(app: Flask, store: Store) -> None:
    """A target that is not up raises a banner saying why and that events are kept."""
    from relay.models import TargetState

    client = signed_in(app)
    assert "Convex is" not in client.get("/admin/").get_data(as_text=True)
    from relay.web.context import runtime

    with app.app_context():
        target = runtime().settings.target_url
    now_ms = int(time.time() * 1000)
    store.set_target_state(
        target, TargetState.DOWN, now_ms=now_ms - 120_000, reason="HTTP 503 server error"
    )
    page = client.get("/admin/").get_data(as_text=True)
    assert "Convex is down since 2m ago: HTTP 503 server error" in page


# -- every stored event can be viewed and replayed (issue 13 item 11) -----------------------


def _post_raw(client: FlaskClient, body: bytes, msg_id: str) -> None:
    from harness.factories import signed_headers

    response = client.post(
        "/webhooks/clerk", data=body, headers=signed_headers(body, msg_id=msg_id)
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def _view_and_replay(client: FlaskClient, event_id: str) -> str:
    """The event's console page, admin API entry, and a console and an API replay."""
    from urllib.parse import quote

    from tests.support.adminkit import BEARER

    path = quote(event_id, safe="/")
    page = client.get(f"/admin/event/{path}")
    assert page.status_code == 200, page.get_data(as_text=True)
    api = client.get(f"/admin/events/{path}", headers=BEARER)
    assert api.status_code == 200 and api.get_json()["id"] == event_id
    token = csrf(client, f"/admin/event/{path}")
    replayed = client.post(f"/admin/event/{path}/replay", data={"csrf_token": token, "force": "1"})
    assert replayed.status_code == 302
    assert store_of(client).get(event_id).status is Status.PENDING  # type: ignore[union-attr]
    # Now pending, so the API refuses (409 naming the event), which it can only do
    # because the route found it.
    again = client.post(f"/admin/events/{path}/replay", json={"force": True}, headers=BEARER)
    assert again.status_code == 409 and again.get_json()["error"] == "conflict"
    return page.get_data(as_text=True)


def store_of(client: FlaskClient) -> Store:
    from relay.web.context import Runtime

    runtime: Runtime = client.application.extensions["relay"]
    return runtime.store


@pytest.fixture
def skipping_app(relay_settings: Settings) -> Flask:
    """Events are stored skipped (so they can be replayed at once, with force)."""
    return create_app(relay_settings.with_overrides(events=("nothing.*",)))


def test_an_event_with_lone_surrogates_can_be_viewed_and_replayed(
    skipping_app: Flask, store: Store
) -> None:
    """JSON's "\\ud800" (a lone surrogate) in any field is accepted, stored, shown as its
    escape on the event page (it cannot be sent as UTF-8) and replayed."""
    client = signed_in(skipping_app)
    body = (
        b'{"type":"user.updated","timestamp":1700000000000,"data":{"object":"user",'
        b'"id":"user_\\ud800","first_name":"A\\udfffB","email":"\\u0000x"}}'
    )
    _post_raw(client, body, "msg_surrogate")
    event = store.get("msg_surrogate")
    assert event is not None and event.entity_id == "user_\\ud800"
    page = _view_and_replay(client, "msg_surrogate")
    assert "A\\udfffB" in page


def test_an_svix_id_with_slashes_can_be_viewed_and_replayed(
    skipping_app: Flask, store: Store
) -> None:
    """svix-ids are any printable text; one holding '/' is still one event's address."""
    client = signed_in(skipping_app)
    body = json.dumps({"type": "user.updated", "data": {"object": "user", "id": "u"}}).encode()
    _post_raw(client, body, "msg/with/slashes")
    assert "msg/with/slashes" in _view_and_replay(client, "msg/with/slashes")


def test_an_event_stored_before_the_nesting_cap_can_be_viewed_and_replayed(
    skipping_app: Flask, store: Store
) -> None:
    """An event nesting 600 levels (ingest took such bodies before it capped nesting)
    is shown without its payload instead of failing the page."""
    client = signed_in(skipping_app)
    deep = b'{"type":"user.updated","data":{"object":"user","id":"u","x":'
    deep += b"[" * 600 + b"]" * 600 + b"}}"
    store.insert(
        NewEvent.from_envelope(
            "msg_deep",
            deep,
            {"type": "user.updated"},
            received_at_ms=int(time.time() * 1000),
            status=Status.SKIPPED,
        )
    )
    assert "nests too deeply" in _view_and_replay(client, "msg_deep")


def test_the_event_page_lists_bodies_that_differed(app: Flask, store: Store) -> None:
    """Conflicting bodies recorded for an event are listed on its page by hash."""
    store.insert(make_event(event_id="msg_conflict"))
    store.record_body_conflict("msg_conflict", body_sha256="f" * 64, now_ms=1_700_000_000_000)
    page = signed_in(app).get("/admin/event/msg_conflict").get_data(as_text=True)
    assert "Different bodies under this id (1)" in page and "f" * 64 in page


def test_signing_out_ends_every_copy_of_the_session(relay_settings: Settings) -> None:
    """A cookie copied before sign-out (another tab, a stolen copy, another worker) is
    refused after it: the session is ended in the store, not only in the browser."""
    first, second = create_app(relay_settings), create_app(relay_settings)
    client = signed_in(first)
    cookie = client.get_cookie("relay_console", path="/admin")
    assert cookie is not None
    out = client.post("/admin/signout", data={"csrf_token": csrf(client, "/admin/")})
    assert out.status_code == 302
    for app in (first, second):
        copy = app.test_client()
        copy.set_cookie("relay_console", cookie.value, path="/admin")
        response = copy.get("/admin/")
        assert response.status_code == 302
        assert response.headers["Location"].endswith("/admin/signin")
    assert signed_in(first).get("/admin/").status_code == 200  # signing in again works
