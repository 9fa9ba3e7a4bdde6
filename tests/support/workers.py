"""Worker factories shared by the delivery tests: a settable clock, workers aimed at a
stand-in Convex, and stores seeded with due events."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from harness.convex_standin import ConvexStandIn
from harness.factories import make_event
from relay.delivery.worker import Worker
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore

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


def mutation_worker(
    settings: Settings,
    store: SQLiteStore,
    convex: ConvexStandIn,
    *,
    clock: Clock | None = None,
    **overrides: object,
) -> Worker:
    return make_worker(
        settings,
        store,
        convex,
        clock=clock,
        target="mutation",
        convex_url=convex.url,
        convex_deploy_key=KEY,
        **overrides,
    )


StoreT = TypeVar("StoreT", bound=SQLiteStore)


def seeded(store_class: type[StoreT], path: Path, events: int) -> StoreT:
    """A migrated store of ``store_class`` holding ``events`` due events, one per user."""
    store = store_class(path)
    store.migrate()
    for n in range(events):
        store.insert(make_event(event_id=f"msg_{n:02d}", entity_id=f"user_{n}"))
    return store


def msg_1_failing(
    store: SQLiteStore, convex: ConvexStandIn, n: int, status: int, **answer: Any
) -> Clock:
    """Store msg_1 and have Convex answer its next ``n`` attempts with ``status``; the
    settable clock to run the worker on."""
    clock = Clock()
    store.insert(make_event(event_id="msg_1"))
    convex.fail_next(n, status, **answer)
    return clock
