"""The store contract: one suite every backend must pass unchanged.

A backend's test module subclasses :class:`StoreContract` and provides a ``store``
fixture returning a fresh, migrated store.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest

from harness.factories import make_event
from relay.models import Attempt, EventFilter, Outcome, ReconcileRun, RunStatus, Status
from relay.store import Store, base

NOW = 1_700_000_000_000
LEASE = 30_000


def attempt(outcome: str = "delivered", code: int | None = 200) -> Attempt:
    return Attempt(
        at_ms=NOW, target="http://convex", status_code=code, duration_ms=1.5, outcome=outcome
    )


def deliver_all(store: Store, worker: str = "w1", now: int = NOW) -> list[str]:
    """Claim and mark delivered until nothing is claimable; returns ids in delivery order."""
    order = []
    while batch := store.claim(worker, now_ms=now, lease_ms=LEASE, limit=10):
        for ev in batch:
            store.complete(ev.id, worker, attempt(), Outcome(Status.DELIVERED))
            order.append(ev.id)
    return order


class StoreContract:
    """Behaviour every :class:`relay.store.Store` backend must have."""

    def test_insert_then_get_round_trips_body_bytes(self, store: Store) -> None:
        """The stored body is byte-for-byte what was inserted."""
        ev = make_event(event_id="msg_a")
        assert store.insert(ev) is True
        got = store.get("msg_a")
        assert got is not None
        assert got.body == ev.body
        assert got.status == Status.PENDING
        assert got.object_key == "user:user_1"

    def test_duplicate_insert_is_refused_and_changes_nothing(self, store: Store) -> None:
        """A second insert with the same svix-id returns False and keeps the first."""
        assert store.insert(make_event(event_id="msg_dup", entity_id="user_a"))
        assert store.insert(make_event(event_id="msg_dup", entity_id="user_b")) is False
        got = store.get("msg_dup")
        assert got is not None and got.entity_id == "user_a"

    def test_insert_of_a_due_event_wakes_listening_workers(self, store: Store) -> None:
        """insert() itself wakes listen(): ingest has no separate notify to forget."""
        woke = threading.Event()
        stop = store.listen(woke.set)
        try:
            store.insert(make_event(event_id="msg_wake"))
            assert woke.wait(5)
        finally:
            stop()

    def test_no_ingest_burst_without_a_signal(self, store: Store) -> None:
        """A store nobody signalled a burst through says 0.0: the worker claims freely."""
        assert store.ingest_burst_s() == 0.0

    def test_get_unknown_is_none(self, store: Store) -> None:
        """Unknown ids are None, not an error."""
        assert store.get("msg_nope") is None

    def test_claim_leases_and_hides_event_from_other_workers(self, store: Store) -> None:
        """A claimed event is not claimable again until its lease expires."""
        store.insert(make_event(event_id="msg_1"))
        assert [e.id for e in store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=5)] == ["msg_1"]
        assert store.claim("w2", now_ms=NOW + 1, lease_ms=LEASE, limit=5) == []
        again = store.claim("w2", now_ms=NOW + LEASE + 1, lease_ms=LEASE, limit=5)
        assert [e.id for e in again] == ["msg_1"]

    def test_complete_requires_the_lease(self, store: Store) -> None:
        """A worker whose lease was taken over cannot overwrite the outcome."""
        store.insert(make_event(event_id="msg_1"))
        store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=5)
        store.claim("w2", now_ms=NOW + LEASE + 1, lease_ms=LEASE, limit=5)
        assert store.complete("msg_1", "w1", attempt(), Outcome(Status.DELIVERED)) is False
        assert store.complete("msg_1", "w2", attempt(), Outcome(Status.DELIVERED)) is True
        got = store.get("msg_1")
        assert got is not None and got.status == Status.DELIVERED
        assert len(got.attempts) == 2  # both attempts happened and are logged

    def test_complete_many_applies_each_outcome_under_its_own_lease(self, store: Store) -> None:
        """Several outcomes in one call: each applied, each logged, each lease checked."""
        for n in (1, 2, 3):
            store.insert(make_event(event_id=f"msg_{n}", entity_id=f"user_{n}"))
        store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=5)
        store.release("msg_3", "w1", NOW)
        kept = store.complete_many(
            "w1",
            [
                ("msg_1", attempt(), Outcome(Status.DELIVERED)),
                ("msg_2", attempt("retry", 503), Outcome(Status.PENDING, NOW + 5000, "HTTP 503")),
                ("msg_3", attempt(), Outcome(Status.DELIVERED)),  # no longer ours
            ],
        )
        assert kept == [True, True, False]
        got = {n: store.get(f"msg_{n}") for n in (1, 2, 3)}
        assert got[1] is not None and got[1].status == Status.DELIVERED
        assert got[2] is not None and (got[2].status, got[2].last_error) == (
            Status.PENDING,
            "HTTP 503",
        )
        assert got[3] is not None and got[3].status == Status.PENDING
        assert [len(e.attempts) for e in got.values() if e] == [1, 1, 1]

    def test_an_outcome_is_written_with_its_text_and_numbers_exact(self, store: Store) -> None:
        """What Convex said comes back as it was said: any script, quotes, backslashes,
        JSON-looking text; a failed attempt without a status code; the attempt's own
        error beside the event's (they differ once retries run out); when it was
        delivered, and whether the attempt was charged to the retry budget."""
        said = 'HTTP 400 rejected: nom «é» 名前 😀 \u202e "quoted" \\ back {"a": [1]}'
        for name in "tuv":
            store.insert(make_event(event_id=f"msg_{name}", entity_id=f"user_{name}"))
        store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=5)
        refused = Attempt(NOW + 7, "http://convex", 400, 12.25, "failed", said)
        unreachable = Attempt(NOW + 8, "http://convex", None, 0.5, "retry", "connection refused")
        last = f"retries exhausted; last: {unreachable.error}"
        ok = Attempt(NOW + 9, "http://convex", 200, 3.5, "delivered")
        kept = store.complete_many(
            "w1",
            [
                ("msg_t", refused, Outcome(Status.FAILED, None, said)),
                ("msg_u", unreachable, Outcome(Status.FAILED, None, last, charged=False)),
                ("msg_v", ok, Outcome(Status.DELIVERED, charged=False)),
            ],
        )
        assert kept == [True, True, True]
        t, u, v = store.get("msg_t"), store.get("msg_u"), store.get("msg_v")
        assert t is not None and u is not None and v is not None
        assert (t.status, t.last_error, t.attempts) == (Status.FAILED, said, (refused,))
        assert (u.status, u.last_error, u.attempts) == (Status.FAILED, last, (unreachable,))
        assert (v.status, v.last_error, v.attempts) == (Status.DELIVERED, None, (ok,))
        assert (t.retry_step, u.retry_step, v.retry_step) == (1, 0, 0)  # charged, or not
        assert (t.delivered_at_ms, v.delivered_at_ms) == (None, NOW + 9)
        assert [e.next_attempt_at_ms for e in (t, u, v)] == [None, None, None]

    def test_retry_outcome_keeps_pending_until_due(self, store: Store) -> None:
        """A retry sets next_attempt_at; the event is not claimable before then."""
        store.insert(make_event(event_id="msg_1"))
        store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=5)
        store.complete(
            "msg_1", "w1", attempt("retry", 503), Outcome(Status.PENDING, NOW + 5000, "HTTP 503")
        )
        assert store.claim("w1", now_ms=NOW + 4999, lease_ms=LEASE, limit=5) == []
        got = store.claim("w1", now_ms=NOW + 5000, lease_ms=LEASE, limit=5)
        assert [e.id for e in got] == ["msg_1"]
        assert got[0].attempt_count == 1 and got[0].retry_step == 1
        assert got[0].last_error == "HTTP 503"

    def test_release_makes_event_claimable_at_once(self, store: Store) -> None:
        """A released event can be claimed again before the lease would have expired."""
        store.insert(make_event(event_id="msg_1"))
        store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=5)
        store.release("msg_1", "w1", NOW)
        assert [e.id for e in store.claim("w2", now_ms=NOW, lease_ms=LEASE, limit=5)] == ["msg_1"]

    def test_one_object_is_never_in_flight_twice(self, store: Store) -> None:
        """Only the oldest pending event of an object is claimable; others wait."""
        store.insert(make_event(event_id="msg_a1", entity_id="user_a", timestamp=NOW + 1))
        store.insert(make_event(event_id="msg_a2", entity_id="user_a", timestamp=NOW + 2))
        store.insert(make_event(event_id="msg_b1", entity_id="user_b", timestamp=NOW + 1))
        first = store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)
        assert sorted(e.id for e in first) == ["msg_a1", "msg_b1"]
        assert store.claim("w2", now_ms=NOW, lease_ms=LEASE, limit=10) == []

    def test_order_follows_occurred_at_not_arrival(self, store: Store) -> None:
        """An older event that arrives later is still delivered first."""
        store.insert(make_event(event_id="msg_new", timestamp=NOW + 2000))
        store.insert(make_event(event_id="msg_old", timestamp=NOW + 1000))
        store.insert(make_event(event_id="msg_newest", timestamp=NOW + 3000))
        assert deliver_all(store) == ["msg_old", "msg_new", "msg_newest"]

    def test_order_breaks_ties_by_updated_at_then_receipt(self, store: Store) -> None:
        """Same occurred-at: the object's updated_at decides, then arrival."""
        store.insert(make_event(event_id="msg_b", timestamp=NOW, updated_at=NOW + 5))
        store.insert(make_event(event_id="msg_a", timestamp=NOW, updated_at=NOW + 1))
        store.insert(make_event(event_id="msg_c", timestamp=NOW, updated_at=NOW + 5))
        assert deliver_all(store) == ["msg_a", "msg_b", "msg_c"]

    def test_delete_goes_after_upserts_with_the_same_timestamp(self, store: Store) -> None:
        """A deletion has no updated_at; among same-instant events it is delivered last."""
        store.insert(make_event("user.deleted", event_id="msg_del", timestamp=NOW))
        store.insert(make_event("user.updated", event_id="msg_upd", timestamp=NOW, updated_at=NOW))
        store.insert(
            make_event("user.created", event_id="msg_new", timestamp=NOW, updated_at=NOW - 5)
        )
        assert deliver_all(store) == ["msg_new", "msg_upd", "msg_del"]

    def test_newer_event_waits_while_older_is_retried(self, store: Store) -> None:
        """A retrying older event blocks newer ones for the same object until it ends."""
        store.insert(make_event("user.created", event_id="msg_old", timestamp=NOW + 1))
        store.insert(make_event("user.updated", event_id="msg_new", timestamp=NOW + 2))
        [old] = store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)
        store.complete(
            old.id, "w1", attempt("retry", 503), Outcome(Status.PENDING, NOW + 60_000, "HTTP 503")
        )
        assert store.claim("w1", now_ms=NOW + 1000, lease_ms=LEASE, limit=10) == []
        [again] = store.claim("w1", now_ms=NOW + 60_000, lease_ms=LEASE, limit=10)
        store.complete(again.id, "w1", attempt("failed", 400), Outcome(Status.FAILED, None, "x"))
        assert [e.id for e in store.claim("w1", now_ms=NOW + 60_001, lease_ms=LEASE, limit=10)] == [
            "msg_new"
        ]

    def test_a_blocked_follower_is_parked_once_and_unparked_by_its_head(self, store: Store) -> None:
        """A claim that finds a follower blocked parks it (out of the claim index: no
        later claim looks at it again); finishing the head makes it due at once."""
        store.insert(make_event(event_id="msg_head", timestamp=NOW + 1))
        store.insert(make_event(event_id="msg_next", timestamp=NOW + 2))
        [head] = store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)
        assert head.id == "msg_head"
        parked = store.get("msg_next")
        assert parked is not None and parked.status == Status.PENDING
        assert parked.next_attempt_at_ms is None
        store.complete(head.id, "w1", attempt(), Outcome(Status.DELIVERED))
        unparked = store.get("msg_next")
        assert unparked is not None and unparked.next_attempt_at_ms == NOW
        assert [e.id for e in store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)] == [
            "msg_next"
        ]

    def test_a_failed_head_lets_its_followers_go(self, store: Store) -> None:
        """A head that fails for good does not hold its object's later events back."""
        store.insert(make_event(event_id="msg_bad", timestamp=NOW + 1))
        store.insert(make_event(event_id="msg_ok", timestamp=NOW + 2))
        [bad] = store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)
        store.complete(bad.id, "w1", attempt("failed", 400), Outcome(Status.FAILED, None, "x"))
        assert deliver_all(store) == ["msg_ok"]

    def test_an_older_event_arriving_during_flight_goes_next(self, store: Store) -> None:
        """An older event that arrives while a newer one is in flight waits (parked), and is
        claimable as soon as the flight ends, even when the newer one is retried."""
        store.insert(make_event("user.deleted", event_id="msg_newer", timestamp=NOW + 5))
        [newer] = store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)
        store.insert(make_event("user.deleted", event_id="msg_older", timestamp=NOW + 1))
        assert store.claim("w2", now_ms=NOW, lease_ms=LEASE, limit=10) == []
        store.complete(
            newer.id, "w1", attempt("retry", 503), Outcome(Status.PENDING, NOW + 60_000, "503")
        )
        assert [e.id for e in store.claim("w2", now_ms=NOW + 1, lease_ms=LEASE, limit=10)] == [
            "msg_older"
        ]

    def test_an_expired_lease_never_deadlocks_its_object(self, store: Store) -> None:
        """A dead worker's head (lease expired) and an older event parked behind its lease:
        the next claims deliver both, oldest first."""
        store.insert(make_event("user.deleted", event_id="msg_orphan", timestamp=NOW + 5))
        store.claim("dead", now_ms=NOW, lease_ms=LEASE, limit=10)
        store.insert(make_event("user.deleted", event_id="msg_older", timestamp=NOW + 1))
        assert store.claim("w1", now_ms=NOW + 1, lease_ms=LEASE, limit=10) == []  # parks it
        assert deliver_all(store, now=NOW + LEASE + 1) == ["msg_older", "msg_orphan"]

    def test_claims_walk_past_a_burst_of_blocked_followers(self, store: Store) -> None:
        """More due-but-blocked followers than one claim transaction looks at: the claim
        parks them batch by batch and still finds the claimable event behind them."""
        from relay.store.ordering import SCAN_BATCH

        store.insert(make_event(event_id="msg_head", entity_id="user_busy", timestamp=NOW))
        [head] = store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=1)
        for i in range(SCAN_BATCH + 10):
            store.insert(
                make_event(event_id=f"msg_f{i:04d}", entity_id="user_busy", timestamp=NOW + 1 + i)
            )
        store.insert(make_event(event_id="msg_other", entity_id="user_free", timestamp=NOW))
        assert [e.id for e in store.claim("w2", now_ms=NOW, lease_ms=LEASE, limit=5)] == [
            "msg_other"
        ]
        store.complete(head.id, "w1", attempt(), Outcome(Status.DELIVERED))
        assert [e.id for e in store.claim("w2", now_ms=NOW, lease_ms=LEASE, limit=5)] == [
            "msg_f0000"
        ]

    def test_an_uncharged_retry_keeps_the_retry_step(self, store: Store) -> None:
        """An attempt made while the target is known down counts as an attempt but uses no
        step of the retry schedule."""
        store.insert(make_event(event_id="msg_1"))
        store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=5)
        store.complete(
            "msg_1",
            "w1",
            attempt("retry", 503),
            Outcome(Status.PENDING, NOW, "HTTP 503", charged=False),
        )
        got = store.get("msg_1")
        assert got is not None and (got.attempt_count, got.retry_step) == (1, 0)

    def test_purge_works_in_batches_and_keeps_counts(self, store: Store) -> None:
        """A purge larger than one batch deletes everything it should; counts follow."""
        from relay.store.base import PURGE_BATCH

        n = PURGE_BATCH + 5
        for i in range(n):
            store.insert(make_event(event_id=f"msg_p{i:05d}", entity_id=f"user_{i}"))
        while batch := store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=500):
            store.complete_many("w1", [(e.id, attempt(), Outcome(Status.DELIVERED)) for e in batch])
        assert store.counts()["delivered"] == n
        assert store.purge(older_than_ms=NOW + 1) == n
        assert store.counts()["delivered"] == 0
        assert store.list_events(EventFilter(), limit=5).events == []

    def test_stale_upsert_is_superseded(self, store: Store) -> None:
        """An update older than one already delivered becomes superseded, not delivered."""
        store.insert(make_event("user.updated", event_id="msg_new", timestamp=NOW + 2))
        assert deliver_all(store) == ["msg_new"]
        store.insert(make_event("user.updated", event_id="msg_old", timestamp=NOW + 1))
        assert deliver_all(store) == []
        got = store.get("msg_old")
        assert got is not None and got.status == Status.SUPERSEDED
        assert got.last_error is not None and "msg_new" in got.last_error

    def test_update_after_delivered_delete_is_superseded(self, store: Store) -> None:
        """A late update older than a delivered delete never resurrects the user."""
        store.insert(make_event("user.deleted", event_id="msg_del", timestamp=NOW + 5))
        deliver_all(store)
        store.insert(make_event("user.updated", event_id="msg_late", timestamp=NOW + 3))
        assert deliver_all(store) == []
        got = store.get("msg_late")
        assert got is not None and got.status == Status.SUPERSEDED

    def test_late_delete_is_still_delivered(self, store: Store) -> None:
        """Deletes are never superseded: they carry no state that could be stale."""
        store.insert(make_event("user.updated", event_id="msg_upd", timestamp=NOW + 5))
        deliver_all(store)
        store.insert(make_event("user.deleted", event_id="msg_del", timestamp=NOW + 3))
        assert deliver_all(store) == ["msg_del"]

    def test_forced_replay_of_superseded_is_delivered(self, store: Store) -> None:
        """replay --force delivers a superseded event and it is not superseded again."""
        store.insert(make_event("user.updated", event_id="msg_new", timestamp=NOW + 2))
        deliver_all(store)
        store.insert(make_event("user.updated", event_id="msg_old", timestamp=NOW + 1))
        deliver_all(store)
        assert store.replay(EventFilter(ids=("msg_old",)), now_ms=NOW) == []
        assert store.replay(EventFilter(ids=("msg_old",)), now_ms=NOW, force=True) == ["msg_old"]
        assert deliver_all(store) == ["msg_old"]

    def test_replay_by_filter_only_touches_failed(self, store: Store) -> None:
        """A filtered replay without ids moves failed events back to pending, nothing else."""
        for i, status in enumerate([Status.FAILED, Status.FAILED, Status.SKIPPED]):
            store.insert(make_event(event_id=f"msg_{i}", entity_id=f"user_{i}", status=status))
        deliver_all(store)
        ids = store.replay(EventFilter(), now_ms=NOW + 10)
        assert sorted(ids) == ["msg_0", "msg_1"]
        got = store.get("msg_0")
        assert got is not None and got.status == Status.PENDING and got.retry_step == 0
        assert store.counts()["skipped"] == 1

    def test_replay_by_id_moves_delivered_back(self, store: Store) -> None:
        """Replaying a delivered event by id sends it again."""
        store.insert(make_event(event_id="msg_1"))
        deliver_all(store)
        assert store.replay(EventFilter(ids=("msg_1",)), now_ms=NOW + 1) == ["msg_1"]
        assert deliver_all(store, now=NOW + 1) == ["msg_1"]

    def test_replay_skips_events_in_flight(self, store: Store) -> None:
        """An event leased by a worker right now is not reset under its feet."""
        store.insert(make_event(event_id="msg_1", status=Status.FAILED))
        store.replay(EventFilter(ids=("msg_1",)), now_ms=NOW)
        store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=1)
        assert store.replay(EventFilter(ids=("msg_1",)), now_ms=NOW + 1, force=True) == []

    def test_list_filters_and_pages_newest_first(self, store: Store) -> None:
        """Filters by status, type glob, entity and time; cursor pages without overlap."""
        for i in range(7):
            store.insert(
                make_event(
                    "organization.updated" if i % 2 else "user.updated",
                    event_id=f"msg_{i}",
                    entity_id=f"e_{i % 3}",
                    received_at_ms=NOW + i,
                )
            )
        page = store.list_events(EventFilter(), limit=3)
        assert [e.id for e in page.events] == ["msg_6", "msg_5", "msg_4"]
        assert page.next_cursor is not None
        page2 = store.list_events(EventFilter(), limit=3, cursor=page.next_cursor)
        assert [e.id for e in page2.events] == ["msg_3", "msg_2", "msg_1"]
        page3 = store.list_events(EventFilter(), limit=3, cursor=page2.next_cursor)
        assert [e.id for e in page3.events] == ["msg_0"] and page3.next_cursor is None
        orgs = store.list_events(EventFilter(type_glob="organization.*"), limit=10)
        assert [e.id for e in orgs.events] == ["msg_5", "msg_3", "msg_1"]
        ent = store.list_events(EventFilter(entity_id="e_0"), limit=10)
        assert [e.id for e in ent.events] == ["msg_6", "msg_3", "msg_0"]
        window = store.list_events(EventFilter(since_ms=NOW + 2, until_ms=NOW + 4), limit=10)
        assert [e.id for e in window.events] == ["msg_3", "msg_2"]
        assert store.list_events(EventFilter(statuses=(Status.FAILED,)), limit=10).events == []

    def test_list_by_several_statuses_merges_them_newest_first(self, store: Store) -> None:
        """Events of any status asked for come in one newest-first order across statuses,
        page by page, with the other filters applied (PostgreSQL reads a page of each
        status and merges them)."""
        statuses = [Status.FAILED, Status.PENDING, Status.DELIVERED]
        for i in range(9):
            store.insert(
                make_event(
                    "organization.updated" if i % 4 == 3 else "user.updated",
                    event_id=f"msg_{i}",
                    status=statuses[i % 3],
                    received_at_ms=NOW + i,
                )
            )
        flt = EventFilter(statuses=(Status.PENDING, Status.FAILED))
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page = store.list_events(flt, limit=2, cursor=cursor)
            ids.extend(e.id for e in page.events)
            if (cursor := page.next_cursor) is None:
                break
        assert ids == ["msg_7", "msg_6", "msg_4", "msg_3", "msg_1", "msg_0"]
        users = store.list_events(dataclasses.replace(flt, type_glob="user.*"), limit=3)
        assert [e.id for e in users.events] == ["msg_6", "msg_4", "msg_1"]
        one = store.list_events(EventFilter(statuses=(Status.PENDING,)), limit=10)
        assert [e.id for e in one.events] == ["msg_7", "msg_4", "msg_1"]
        twice = EventFilter(statuses=(Status.PENDING, Status.PENDING))
        assert [e.id for e in store.list_events(twice, limit=10).events] == [
            "msg_7",
            "msg_4",
            "msg_1",
        ]
        # A page that one status fills alone: the newest failed run past the page size.
        for i in range(9, 14):
            store.insert(
                make_event(event_id=f"msg_{i}", status=Status.FAILED, received_at_ms=NOW + i)
            )
        page = store.list_events(flt, limit=3)
        assert [e.id for e in page.events] == ["msg_13", "msg_12", "msg_11"]
        rest = store.list_events(flt, limit=4, cursor=page.next_cursor)
        assert [e.id for e in rest.events] == ["msg_10", "msg_9", "msg_7", "msg_6"]

    def test_type_glob_treats_like_wildcards_literally(self, store: Store) -> None:
        """``%`` and ``_`` in a type glob match themselves, not anything."""
        store.insert(make_event("user.updated", event_id="msg_1"))
        assert store.list_events(EventFilter(type_glob="user%"), limit=10).events == []
        assert len(store.list_events(EventFilter(type_glob="user.*"), limit=10).events) == 1

    def test_purge_deletes_only_finished_old_events(self, store: Store) -> None:
        """purge removes delivered/skipped/superseded before the cutoff, never pending/failed."""
        store.insert(make_event(event_id="msg_done", entity_id="a", received_at_ms=NOW))
        store.insert(
            make_event(
                event_id="msg_skip", entity_id="b", received_at_ms=NOW, status=Status.SKIPPED
            )
        )
        store.insert(
            make_event(event_id="msg_fail", entity_id="c", received_at_ms=NOW, status=Status.FAILED)
        )
        store.insert(make_event(event_id="msg_pend", entity_id="d", received_at_ms=NOW + 10))
        store.claim("w", now_ms=NOW, lease_ms=LEASE, limit=1)  # msg_done only (oldest due)
        store.complete("msg_done", "w", attempt(), Outcome(Status.DELIVERED))
        store.insert(
            make_event(
                event_id="msg_recent",
                entity_id="e",
                received_at_ms=NOW + 100,
                status=Status.SKIPPED,
            )
        )
        assert store.purge(older_than_ms=NOW + 50) == 2
        assert store.get("msg_done") is None and store.get("msg_skip") is None
        assert store.get("msg_fail") is not None and store.get("msg_pend") is not None
        assert store.get("msg_recent") is not None

    def test_counts_and_oldest_pending(self, store: Store) -> None:
        """counts() has every status; oldest_pending_ms is the oldest pending receipt."""
        assert store.counts() == {str(s): 0 for s in Status}
        assert store.oldest_pending_ms() is None
        store.insert(make_event(event_id="msg_1", entity_id="a", received_at_ms=NOW + 5))
        store.insert(make_event(event_id="msg_2", entity_id="b", received_at_ms=NOW + 9))
        store.insert(make_event(event_id="msg_3", entity_id="c", status=Status.SKIPPED))
        assert store.counts()["pending"] == 2 and store.counts()["skipped"] == 1
        assert store.oldest_pending_ms() == NOW + 5

    def test_heartbeat_reports_newest(self, store: Store) -> None:
        """last_heartbeat_ms is the newest heartbeat of any worker."""
        assert store.last_heartbeat_ms() is None
        store.heartbeat("w1", now_ms=NOW)
        store.heartbeat("w2", now_ms=NOW + 7)
        store.heartbeat("w1", now_ms=NOW + 3)
        assert store.last_heartbeat_ms() == NOW + 7

    def test_events_without_object_are_not_ordered(self, store: Store) -> None:
        """Events with no data.object/id are claimable side by side."""
        for i in range(3):
            store.insert(make_event("email.created", event_id=f"msg_{i}", entity_id=""))
        assert len(store.claim("w1", now_ms=NOW, lease_ms=LEASE, limit=10)) == 3

    def test_export_import_round_trip(self, store: Store) -> None:
        """Exported events re-import with status, counters and attempts intact."""
        store.insert(make_event(event_id="msg_1"))
        store.claim("w", now_ms=NOW, lease_ms=LEASE, limit=1)
        store.complete("msg_1", "w", attempt("failed", 400), Outcome(Status.FAILED, None, "bad"))
        [(event, attempts)] = list(store.export())
        assert event.status == Status.FAILED and len(attempts) == 1
        assert store.import_event(event, attempts) is False  # already there

    def test_import_keeps_errors_no_column_here_can_hold(self, store: Store) -> None:
        """A SQLite store written before errors were made storable may hold NUL in them
        (SQLite takes it, PostgreSQL's text does not): `relay migrate-store` still copies
        the event, with the error as its JSON escapes, instead of failing on it at
        every re-run."""
        store.insert(make_event(event_id="msg_old", status=Status.SKIPPED))
        [(event, _)] = list(store.export())
        said = "HTTP 400 rejected: a\x00b"
        failed = dataclasses.replace(event, id="msg_nul", status=Status.FAILED, last_error=said)
        tried = Attempt(NOW, "http://convex", 400, 2.0, "failed", said)
        assert store.import_event(failed, [tried]) is True
        got = store.get("msg_nul")
        assert got is not None and got.status == Status.FAILED
        assert got.last_error == "HTTP 400 rejected: a\\u0000b"
        assert [a.error for a in got.attempts] == [got.last_error]

    def test_export_reads_in_pages_and_keeps_each_events_attempts(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Export reads the store a page at a time (a million events are never in memory
        at once): across page ends every event comes once, in order, with its own
        attempts."""
        monkeypatch.setattr(base, "EXPORT_BATCH", 3)
        for i in range(7):
            store.insert(make_event(event_id=f"msg_{i}", entity_id=f"user_{i}"))
        for event in store.claim("w", now_ms=NOW, lease_ms=LEASE, limit=10):
            if event.id in ("msg_2", "msg_3", "msg_6"):  # page ends and the last page
                store.complete(event.id, "w", attempt("failed", 500), Outcome(Status.FAILED))
        query = store._query  # type: ignore[attr-defined]
        read: list[int] = []

        def counted(statement: str, params: object = ()) -> list[object]:
            rows: list[object] = query(statement, params)
            read.append(len(rows))
            return rows

        monkeypatch.setattr(store, "_query", counted)
        exported = list(store.export())
        assert read and max(read) <= 3
        assert [e.id for e, _ in exported] == [f"msg_{i}" for i in range(7)]
        assert {e.id: len(a) for e, a in exported if a} == {"msg_2": 1, "msg_3": 1, "msg_6": 1}

    def test_ping_answers(self, store: Store) -> None:
        """ping() returns when the database answers."""
        store.ping()
        assert store.counts()["pending"] == 0

    # -- reconcile history and leases (relay/store/runs.py) ------------------------------

    def test_a_lease_has_one_holder_until_it_expires(self, store: Store) -> None:
        """Only one owner holds a name; it may renew; another takes it once it expired."""
        assert store.acquire_lease("reconcile", "w1", now_ms=NOW, ttl_ms=1000)
        assert not store.acquire_lease("reconcile", "w2", now_ms=NOW + 999, ttl_ms=1000)
        assert store.acquire_lease("reconcile", "w1", now_ms=NOW + 500, ttl_ms=1000)  # renew
        assert not store.acquire_lease("reconcile", "w2", now_ms=NOW + 1499, ttl_ms=1000)
        assert store.acquire_lease("reconcile", "w2", now_ms=NOW + 1500, ttl_ms=1000)
        assert not store.acquire_lease("reconcile", "w1", now_ms=NOW + 1600, ttl_ms=1000)
        assert store.acquire_lease("other", "w1", now_ms=NOW, ttl_ms=1000)  # names are apart

    def test_a_released_lease_is_free_and_only_its_holder_can_release(self, store: Store) -> None:
        """release_lease by a non-holder changes nothing; by the holder frees the name."""
        assert store.acquire_lease("reconcile", "w1", now_ms=NOW, ttl_ms=60_000)
        store.release_lease("reconcile", "w2")
        assert not store.acquire_lease("reconcile", "w2", now_ms=NOW, ttl_ms=60_000)
        store.release_lease("reconcile", "w1")
        assert store.acquire_lease("reconcile", "w2", now_ms=NOW, ttl_ms=60_000)

    def test_concurrent_lease_requests_have_exactly_one_winner(self, store: Store) -> None:
        """Eight threads asking at the same instant: exactly one gets the lease."""
        results: list[bool] = []
        barrier = threading.Barrier(8)

        def ask(owner: str) -> None:
            barrier.wait()
            results.append(store.acquire_lease("reconcile", owner, now_ms=NOW, ttl_ms=60_000))

        threads = [threading.Thread(target=ask, args=(f"w{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False] * 7 + [True]

    def test_reconcile_runs_are_saved_updated_and_listed_newest_first(self, store: Store) -> None:
        """A run is inserted, updated in place, and listed newest first, by status too."""
        first = ReconcileRun(None, "cli", False, RunStatus.RUNNING, NOW, started_at_ms=NOW)
        run_id = store.save_reconcile_run(first)
        summary = {"users": {"clerk": 3, "convex": 2, "missing": 1, "stale": 0, "gone": 0}}
        done = ReconcileRun(
            run_id, "cli", False, RunStatus.DONE, NOW, NOW, NOW + 9, summary=summary
        )
        assert store.save_reconcile_run(done) == run_id
        asked = store.save_reconcile_run(
            ReconcileRun(None, "admin", True, RunStatus.REQUESTED, NOW)
        )
        assert asked != run_id
        runs = store.reconcile_runs(limit=10)
        assert [r.id for r in runs] == [asked, run_id]
        assert runs[1] == done
        assert runs[0].dry_run is True and runs[0].summary is None
        assert [r.id for r in store.reconcile_runs(limit=10, status=RunStatus.REQUESTED)] == [asked]
        assert store.reconcile_runs(limit=1) == [runs[0]]

    def test_a_run_failing_with_text_no_column_can_hold_is_saved(self, store: Store) -> None:
        """A run's error quotes Clerk's or Convex's message, which may carry NUL (that
        PostgreSQL's text refuses) or a lone surrogate (that SQLite's driver cannot
        encode): it is kept as their JSON escapes, so the run is not left "running"."""
        run = ReconcileRun(None, "cli", False, RunStatus.RUNNING, NOW, started_at_ms=NOW)
        run_id = store.save_reconcile_run(run)
        failed = ReconcileRun(
            run_id, "cli", False, RunStatus.FAILED, NOW, NOW, NOW + 1, error="HTTP 422 a\x00b\ud800"
        )
        store.save_reconcile_run(failed)
        (saved,) = store.reconcile_runs(limit=1)
        assert saved.status == RunStatus.FAILED
        assert saved.error == "HTTP 422 a\\u0000b\\ud800"

    # -- issue 13 ---------------------------------------------------------------------------

    def test_body_conflicts_are_kept_on_the_event_and_purged_with_it(self, store: Store) -> None:
        """Conflicting bodies recorded under a stored id show on get(), oldest first, and
        go when the event is purged."""
        store.insert(make_event(event_id="msg_c", status=Status.SKIPPED, received_at_ms=NOW))
        store.insert(make_event(event_id="msg_other"))
        assert store.get("msg_c").body_conflicts == ()  # type: ignore[union-attr]
        store.record_body_conflict("msg_c", body_sha256="a" * 64, now_ms=NOW + 1)
        store.record_body_conflict("msg_c", body_sha256="b" * 64, now_ms=NOW + 2)
        got = store.get("msg_c")
        assert got is not None
        assert [(c.at_ms, c.body_sha256) for c in got.body_conflicts] == [
            (NOW + 1, "a" * 64),
            (NOW + 2, "b" * 64),
        ]
        assert got.to_dict(with_attempts=True)["bodyConflicts"][0]["bodySha256"] == "a" * 64
        assert store.body_conflicts("msg_other") == ()
        assert store.purge(older_than_ms=NOW + 1) == 1
        assert store.body_conflicts("msg_c") == ()

    def test_text_a_column_cannot_hold_is_stored_as_its_escape(self, store: Store) -> None:
        """Lone surrogates and NUL in the fields kept as columns are stored escaped (SQLite's
        driver cannot encode the one, PostgreSQL's text refuses the other)."""
        store.insert(make_event("user.\x00x", event_id="msg_odd", entity_id="user_\ud800\x00"))
        got = store.get("msg_odd")
        assert got is not None
        assert (got.type, got.entity_id) == ("user.\\u0000x", "user_\\ud800\\u0000")
        assert got.object_key == "user:user_\\ud800\\u0000"

    def test_console_sessions_start_end_and_expire(self, store: Store) -> None:
        """A started session is valid until it is ended or expires; starting one drops
        expired ones."""
        store.start_console_session("s1", now_ms=NOW, expires_ms=NOW + 100)
        store.start_console_session("s2", now_ms=NOW, expires_ms=NOW + 100)
        assert store.console_session_valid("s1", now_ms=NOW + 99)
        assert not store.console_session_valid("s1", now_ms=NOW + 100)
        assert not store.console_session_valid("unknown", now_ms=NOW)
        store.end_console_session("s1")
        store.end_console_session("unknown")
        assert not store.console_session_valid("s1", now_ms=NOW)
        assert store.console_session_valid("s2", now_ms=NOW)
        store.start_console_session("s3", now_ms=NOW + 200, expires_ms=NOW + 300)
        assert not store.console_session_valid("s2", now_ms=NOW)  # pruned as expired
        assert store.console_session_valid("s3", now_ms=NOW + 250)
