"""``/admin/reconcile``: ask the workers for a reconcile run, see the last runs.

The app on a real SQLite file; a run asked for here is picked up by a real
:class:`ReconcileScheduler` reading the Clerk emulator, as a worker would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from harness.clerk_emulator import SECRET_KEY, ClerkEmulator
from harness.clerk_objects import T0, clerk_user
from relay import create_app
from relay.reconcile.schedule import ReconcileScheduler
from relay.settings import Settings
from relay.store import open_store
from tests.support.adminkit import BEARER, admin_settings


@pytest.fixture
def clerk() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as emulator:
        emulator.put_users(clerk_user(f"user_{i}", updated_at=T0 + i) for i in range(3))
        yield emulator


@pytest.fixture
def reconcile_settings(tmp_path: Path, clerk: ClerkEmulator) -> Settings:
    return admin_settings(
        tmp_path,
        clerk_secret_key=SECRET_KEY,
        clerk_api_url=clerk.url,
        clerk_rate_per_s=1000.0,
        reconcile_every_s=86400.0,
    )


@pytest.fixture
def client(reconcile_settings: Settings) -> FlaskClient:
    return create_app(reconcile_settings).test_client()


def test_a_requested_run_is_run_by_a_worker_and_listed(
    client: FlaskClient, reconcile_settings: Settings
) -> None:
    """POST answers 202 with the requested run; after a worker's check it is done, with counts."""
    empty = client.get("/admin/reconcile", headers=BEARER).get_json()
    assert empty == {"runs": [], "configured": True, "everySeconds": 86400.0}
    asked = client.post("/admin/reconcile", json={"dryRun": True}, headers=BEARER)
    assert asked.status_code == 202
    run = asked.get_json()
    assert (run["status"], run["trigger"], run["dryRun"], run["summary"]) == (
        "requested",
        "admin",
        True,
        None,
    )
    store = open_store(reconcile_settings.database_url)
    try:
        finished = ReconcileScheduler(reconcile_settings, store, owner="w1").tick()
    finally:
        store.close()
    assert finished is not None and finished.id == run["id"]
    [listed] = client.get("/admin/reconcile", headers=BEARER).get_json()["runs"]
    assert listed["status"] == "done" and listed["dryRun"] is True
    assert listed["summary"]["users"] == {
        "clerk": 3,
        "convex": None,
        "missing": 3,
        "stale": 0,
        "gone": None,
        "queued": 0,
    }
    assert listed["startedAt"] >= listed["requestedAt"] and listed["finishedAt"] is not None


def test_one_waiting_request_at_a_time(client: FlaskClient) -> None:
    """A second request while one waits is 409; the body must be {"dryRun": bool}."""
    assert client.post("/admin/reconcile", headers=BEARER).status_code == 202
    again = client.post("/admin/reconcile", json={"dryRun": False}, headers=BEARER)
    assert again.status_code == 409 and "already waiting" in again.get_json()["detail"]
    bad = client.post("/admin/reconcile", json={"dryRun": "yes"}, headers=BEARER)
    assert bad.status_code == 400


def test_without_a_clerk_key_reconcile_is_off(tmp_path: Path) -> None:
    """No CLERK_SECRET_KEY: listed as not configured, requests refused with 409."""
    client = create_app(admin_settings(tmp_path)).test_client()
    assert client.get("/admin/reconcile", headers=BEARER).get_json()["configured"] is False
    refused = client.post("/admin/reconcile", headers=BEARER)
    assert refused.status_code == 409 and "CLERK_SECRET_KEY" in refused.get_json()["detail"]


def test_the_token_is_required(client: FlaskClient) -> None:
    """Both routes are behind the admin bearer token."""
    assert client.get("/admin/reconcile").status_code == 401
    assert client.post("/admin/reconcile").status_code == 401


def test_the_console_page_lists_runs_and_requests_one(reconcile_settings: Settings) -> None:
    """Signed in: the page says nothing ran yet; a dry-run button press requests one."""
    from .test_console import csrf, signed_in

    client = signed_in(create_app(reconcile_settings))
    page = client.get("/admin/reconcile-runs").get_data(as_text=True)
    assert "No reconcile has run yet" in page and "Runs every 24h" in page
    token = csrf(client, "/admin/reconcile-runs")
    response = client.post(
        "/admin/reconcile-runs", data={"csrf_token": token, "dry_run": "1"}, follow_redirects=True
    )
    page = response.get_data(as_text=True)
    assert "Dry run requested" in page
    assert "admin (dry run)" in page and "requested" in page
    again = client.post(
        "/admin/reconcile-runs", data={"csrf_token": token, "dry_run": "0"}, follow_redirects=True
    )
    assert "already waiting" in again.get_data(as_text=True)
    forged = client.post("/admin/reconcile-runs", data={"dry_run": "0"})
    assert forged.status_code == 400  # csrf_failed


def test_the_console_page_says_when_reconcile_is_off(tmp_path: Path) -> None:
    """Without CLERK_SECRET_KEY the page explains how to turn reconcile on; no buttons."""
    from .test_console import signed_in

    page = signed_in(create_app(admin_settings(tmp_path))).get("/admin/reconcile-runs")
    text = page.get_data(as_text=True)
    assert "Reconcile is off" in text and "Run now" not in text
