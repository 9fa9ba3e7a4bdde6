"""Helpers for end-to-end tests against a real ``relay serve``: event ids and waiting for
an event to settle."""

from __future__ import annotations

import uuid

from harness.relay_process import wait_until
from relay.models import Event, Status
from relay.store import Store

#: The statuses an event does not leave by itself.
TERMINAL = {Status.DELIVERED, Status.FAILED, Status.SKIPPED, Status.SUPERSEDED}


def new_id(tag: str = "e2e") -> str:
    """A fresh svix-id, tagged for whoever reads a failing test's log."""
    return f"msg_{tag}_{uuid.uuid4().hex[:12]}"


def settled(store: Store, event_id: str, timeout: float = 30.0) -> Event:
    """Wait until the event reaches a terminal status; return it with its attempts."""

    def done() -> Event | None:
        event = store.get(event_id)
        return event if event is not None and event.status in TERMINAL else None

    event = wait_until(done, timeout, f"{event_id} to settle")
    assert event is not None  # wait_until returns only a truthy value
    return event
