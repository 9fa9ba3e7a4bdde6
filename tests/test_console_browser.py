"""The console in a real browser against a running ``relay serve``: fail, find, replay, deliver."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harness.convex_standin import ConvexStandIn
from harness.factories import SECRET, make_envelope, signed_headers
from tests.support.adminkit import BEARER, TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Where screenshots go. docs/ keeps the committed ones; a plain run writes to a temporary
#: directory so it does not dirty the tree. Refresh them with RELAY_SCREENSHOTS=docs.
DOCS = Path(__file__).resolve().parents[1] / "docs"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
#: Upper bound for anything the relay does asynchronously (start-up, a delivery).
WAIT_S = 30.0


def _require_browser() -> Any:
    """The Playwright sync API, or a skip (a failure under CI) naming what is missing."""
    missing = []
    sync_api: ModuleType | None
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
        missing.append("the playwright package (pip install playwright)")
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install -y chromium)")
    if missing:
        reason = "needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_api


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not up yet (a worker still booting on a loaded machine may not answer)
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _request(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def standin() -> Iterator[ConvexStandIn]:
    with ConvexStandIn(SECRET).running() as s:
        yield s


@pytest.fixture
def relay_url(tmp_path: Path, standin: ConvexStandIn) -> Iterator[str]:
    """A real ``relay serve`` (gunicorn + worker) on a free port, stopped with SIGTERM."""
    _require_browser()
    port = _free_port()
    env = {
        **os.environ,
        "CLERK_WEBHOOK_SECRET": SECRET,
        "CONVEX_SITE_URL": standin.url,
        "RELAY_ADMIN_TOKEN": TOKEN,
        "PORT": str(port),
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "RELAY_RETRY_SCHEDULE": "100ms",
        "LOG_FORMAT": "json",
    }
    log = (tmp_path / "relay.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until(
            "relay serve to answer /healthz",
            lambda: proc.poll() is None and _request(f"{url}/healthz")[0] == 200,
        )
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _send(url: str, event_type: str, msg_id: str, **data: Any) -> None:
    body = json.dumps(make_envelope(event_type, timestamp=int(time.time() * 1000), **data))
    status, answer = _request(
        f"{url}/webhooks/clerk", data=body.encode(), headers=signed_headers(body, msg_id=msg_id)
    )
    assert status == 200, answer


def _status(url: str, event_id: str) -> str | None:
    status, body = _request(f"{url}/admin/events/{event_id}", headers=BEARER)
    return body["status"] if status == 200 else None


def test_operator_replays_a_failed_event_in_the_browser(
    relay_url: str, standin: ConvexStandIn, tmp_path: Path
) -> None:
    """Sign in, filter to failed, open the event, replay it, see it delivered, sign out."""
    sync_api = _require_browser()
    shots = DOCS if os.environ.get("RELAY_SCREENSHOTS") == "docs" else tmp_path
    standin.fail_next(1, 400, body={"error": "Unrecognised event payload"})
    _send(
        relay_url,
        "user.updated",
        "msg_browser_fail",
        entity_id="user_2rJb7ys9",
        first_name="Ada",
        last_name="Lovelace",
        private_metadata={"stripeCustomerId": "cus_secret_1"},
    )
    _until("the event to fail", lambda: _status(relay_url, "msg_browser_fail") == "failed")
    others = [
        ("user.created", "user_2sQf81aZ"),
        ("organization.created", "org_2tLx90Qm"),
        ("session.created", "sess_2uPz13Kd"),
    ]
    for n, (event_type, entity) in enumerate(others):
        _send(relay_url, event_type, f"msg_browser_ok{n}", entity_id=entity)

        def delivered(n: int = n) -> bool:
            return _status(relay_url, f"msg_browser_ok{n}") == "delivered"

        _until("a delivery", delivered)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(f"{relay_url}/admin/")
            assert page.url.endswith("/admin/signin")
            page.fill("#token", "not-the-token")
            page.click("button[type=submit]")
            assert "not right" in page.content()
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            assert page.url.endswith("/admin/")
            assert page.locator(".counts").inner_text().count("failed 1") == 1
            page.screenshot(path=str(shots / "console-list.png"), full_page=True)

            page.select_option("select[name=status]", "failed")
            page.click("text=Filter")
            rows = page.locator("table.events tbody tr")
            assert rows.count() == 1
            assert "user.updated" in rows.first.inner_text()

            # A forged POST (no CSRF token) from this very session is refused.
            forged = page.request.post(
                f"{relay_url}/admin/event/msg_browser_fail/replay", form={"force": "1"}
            )
            assert forged.status == 400
            assert _status(relay_url, "msg_browser_fail") == "failed"

            rows.first.locator("a").click()
            assert "/admin/event/msg_browser_fail" in page.url
            assert "cus_secret_1" not in page.content()
            assert page.locator("table.attempts tbody tr").count() == 1
            page.click("button:has-text('Replay')")
            assert "Queued for delivery" in page.content()
            deadline = time.monotonic() + WAIT_S
            while "s-delivered" not in page.locator("h1").inner_html():
                assert time.monotonic() < deadline, "the replayed event was not delivered"
                time.sleep(0.2)
                page.reload()
            assert page.locator("table.attempts tbody tr").count() == 2
            assert standin.delivered.count("msg_browser_fail") == 1
            page.screenshot(path=str(shots / "console-event.png"), full_page=True)

            phone = browser.new_page(viewport=PHONE, is_mobile=True, device_scale_factor=2)
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{relay_url}/admin/")
            assert phone.url.endswith("/admin/")
            phone.screenshot(path=str(shots / "console-phone.png"), full_page=True)

            page.click("button:has-text('Sign out')")
            assert page.url.endswith("/admin/signin")
            page.goto(f"{relay_url}/admin/")
            assert page.url.endswith("/admin/signin")
        finally:
            browser.close()
    for name in ("console-list.png", "console-event.png", "console-phone.png"):
        assert (shots / name).stat().st_size > 10_000, name
