"""Shared fixtures: a real SQLite store, settings, the app, and the Convex stand-ins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from harness.convex_standin import ConvexStandIn
from harness.factories import FORWARD_SECRET, SECRET
from harness.relay_process import TrackingStandIn
from relay import create_app
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'relay.db'}"


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        webhook_secrets=(SECRET,),
        convex_site_url="http://127.0.0.1:9",
        forward_secret=FORWARD_SECRET,
        database_url=db_url,
        log_format="json",
        # The factories stamp events in 2023; a real-time worker must not fail them
        # as "pending too long" (tests of RELAY_MAX_PENDING_AGE set it themselves).
        max_pending_age_s=100 * 365 * 86400.0,
    )


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(db_url: str) -> Iterator[SQLiteStore]:
    s = SQLiteStore.from_url(db_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def convex() -> Iterator[ConvexStandIn]:
    """A loopback Convex whose HTTP action verifies with the relay's forward secret."""
    with ConvexStandIn(FORWARD_SECRET).running() as standin:
        yield standin


@pytest.fixture(scope="module")
def standin() -> Iterator[TrackingStandIn]:
    """A loopback Convex for a module's relay processes, recording every request (modules
    that need another kind of stand-in define their own ``standin``)."""
    with TrackingStandIn(FORWARD_SECRET).running() as cx:
        yield cx


@pytest.fixture
def standin_up(standin: TrackingStandIn) -> None:
    """The test starts with a Convex that answers 200 at once (``usefixtures`` it)."""
    standin.up()
