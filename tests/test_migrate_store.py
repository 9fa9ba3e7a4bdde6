"""migrate_store: a SQLite file copied into another store, completely and idempotently."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.factories import make_event
from harness.postgres_server import fresh_schema
from relay.migrate import migrate_store
from relay.models import Event, Outcome, Status
from relay.store import Store
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore
from tests.support.store_contract import LEASE, NOW, attempt, deliver_all

RETRY_AT = NOW + 60_000


@pytest.fixture
def source(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A SQLite store with an event in every state, some with attempts."""
    s = SQLiteStore(tmp_path / "old.db")
    s.migrate()
    # delivered, then a stale update of the same user that gets superseded
    s.insert(make_event("user.updated", event_id="msg_done", entity_id="u1", timestamp=NOW + 5))
    assert deliver_all(s) == ["msg_done"]
    s.insert(make_event("user.updated", event_id="msg_stale", entity_id="u1", timestamp=NOW + 1))
    assert deliver_all(s) == []
    # failed after a retry: two attempts, the last error kept
    s.insert(make_event("user.created", event_id="msg_fail", entity_id="u2"))
    s.claim("w", now_ms=NOW, lease_ms=LEASE, limit=1)
    s.complete("msg_fail", "w", attempt("retry", 503), Outcome(Status.PENDING, NOW + 10, "503"))
    s.claim("w", now_ms=NOW + 10, lease_ms=LEASE, limit=1)
    s.complete("msg_fail", "w", attempt("failed", 400), Outcome(Status.FAILED, None, "HTTP 400"))
    s.insert(make_event(event_id="msg_skip", entity_id="u3", status=Status.SKIPPED))
    # pending and retrying later, with one attempt
    s.insert(make_event(event_id="msg_retry", entity_id="u5", received_at_ms=NOW - 1))
    assert [e.id for e in s.claim("w", now_ms=NOW, lease_ms=LEASE, limit=1)] == ["msg_retry"]
    s.complete("msg_retry", "w", attempt("retry", 503), Outcome(Status.PENDING, RETRY_AT, "503"))
    # pending and in flight at the old relay when the copy runs
    s.insert(make_event(event_id="msg_leased", entity_id="u6"))
    assert [e.id for e in s.claim("w", now_ms=NOW, lease_ms=LEASE, limit=1)] == ["msg_leased"]
    # pending: two for one user, arriving out of order
    s.insert(make_event(event_id="msg_p2", entity_id="u4", timestamp=NOW + 2))
    s.insert(make_event(event_id="msg_p1", entity_id="u4", timestamp=NOW + 1))
    yield s
    s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty destination store of each backend (not migrated: migrate_store does it)."""
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "new.db")
        yield s
        s.close()
        return
    with fresh_schema() as url:
        s = PostgresStore(url)
        yield s
        s.close()


def comparable(event: Event) -> dict[str, object]:
    """Everything an event carries except its store-local sequence number."""
    return {
        **event.to_dict(with_attempts=True),
        "body": event.body,
        "retry_step": event.retry_step,
        "force": event.force,
        "object_key": event.object_key,
        "updated_at": event.updated_at_ms,
        "instance_id": event.instance_id,
    }


def test_every_event_is_copied_with_status_counters_and_attempts(
    source: SQLiteStore, dest: Store
) -> None:
    """Each event arrives as it was: status, counters, errors, attempts, body bytes."""
    seen: list[int] = []
    report = migrate_store(source, dest, progress=seen.append)
    ids = [e.id for e, _ in source.export()]
    assert report.examined == report.copied == len(ids) == 8
    assert report.already_present == 0
    assert report.attempts_copied == 4  # msg_done 1, msg_fail 2, msg_retry 1
    assert seen == list(range(1, 9))
    for event_id in ids:
        old, new = source.get(event_id), dest.get(event_id)
        assert old is not None and new is not None
        if event_id == "msg_leased":  # leases are not copied: due at once over there
            assert new.next_attempt_at_ms == new.received_at_ms
            new = dataclasses.replace(new, next_attempt_at_ms=old.next_attempt_at_ms)
        assert comparable(new) == comparable(old)
    assert dest.counts() == source.counts()
    failed = dest.get("msg_fail")
    assert failed is not None and failed.status == Status.FAILED
    assert [a.outcome for a in failed.attempts] == ["retry", "failed"]
    assert failed.attempt_count == 2 and failed.last_error == "HTTP 400"
    stale = dest.get("msg_stale")
    assert stale is not None and stale.status == Status.SUPERSEDED


def test_running_again_copies_nothing_but_the_tail(source: SQLiteStore, dest: Store) -> None:
    """A second run copies 0; events that arrived since are the only ones copied next."""
    migrate_store(source, dest)
    again = migrate_store(source, dest)
    assert (again.copied, again.already_present, again.attempts_copied) == (0, 8, 0)
    source.insert(make_event(event_id="msg_tail", entity_id="u7"))
    tail = migrate_store(source, dest)
    assert (tail.copied, tail.already_present) == (1, 8)
    assert dest.get("msg_tail") is not None


def test_pending_events_are_claimable_on_the_destination_in_order(
    source: SQLiteStore, dest: Store
) -> None:
    """The copy's pending events are delivered there, per object oldest first.

    Leases are not copied: the event in flight at the source is claimable at once.
    """
    migrate_store(source, dest)
    assert [e.id for e in dest.claim("new", now_ms=NOW, lease_ms=LEASE, limit=10)] == [
        "msg_leased",
        "msg_p1",
    ]
    delivered = deliver_all(dest, worker="new", now=RETRY_AT)
    assert sorted(delivered) == ["msg_leased", "msg_p1", "msg_p2", "msg_retry"]
    assert delivered.index("msg_p1") < delivered.index("msg_p2")
    assert dest.counts()["pending"] == 0
