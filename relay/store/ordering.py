"""Per-object ordering: which pending event of an object may go out, and how a claim
finds it without walking the backlog.

The rule
--------
Events of one Clerk object (``object_key``, e.g. ``user:user_123``) are delivered one
at a time, oldest first. "Oldest" is the order key ``(ord_at, ord_upd, seq)``: when
Clerk says the change happened, then the object's ``updated_at`` (a deletion sorts
after every state at the same instant), then receipt order (see
:func:`relay.models.order_key`). The oldest pending event of an object is its
**head**; only a head is ever leased, and only while no other event of the object is
leased. Events without an object key have no order to keep: each is its own head.

A claimable upsert (``*.created``/``*.updated``) whose object already had a *newer*
event delivered is marked ``superseded`` instead of sent (unless replayed with
``force``): it would write older state over newer.

Why claims stay flat
--------------------
A naive claim asks "is there an older pending event?" for every due row, so a backlog
of due-but-blocked followers is walked on every claim (procrastinate#1242, #1599).
Here a follower is looked at **once**: the claim that finds it blocked *parks* it
(``status = 'pending'`` with ``next_attempt_at`` NULL), which takes it out of the
claim index. Whoever finishes with an object's head (a completion, a release, a
supersede) *unparks* the object's next head. So a claim reads only:

* due rows through the partial index ``(next_attempt_at, seq) WHERE status = 'pending'``,
  which holds heads and rows not yet looked at, never parked followers, and never
  leased rows (a lease moves ``next_attempt_at`` to the lease's expiry, so a dead
  worker's event comes due again by itself);
* per candidate, two probes of ``(object_key, status, ord_at, ord_upd, seq)``: the
  object's head, and whether another of its events is leased.

Invariant: for every object with pending events, its head is not parked, or another
of its events is leased (and that lease's completion unparks the head). Parking a
candidate restores it when needed by unparking the head in the same transaction.

Each claim transaction visits at most :data:`SCAN_BATCH` rows, so ingest never waits
long behind one; a claim that parked a whole batch goes on with the next. The first
round reads only a few rows more than the claim asks for (:func:`batch_size`): while
a backlog drains, almost every due row is a head, and a worker claiming 4 at a time
must not decide 256 candidates to lease 4 of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.models import Event, is_upsert
from relay.store import sql

#: Due rows one claim transaction looks at, at most (besides what it returns).
SCAN_BATCH = 256
#: Claim transactions one ``claim()`` call runs before returning what it has.
MAX_SCAN_ROUNDS = 64
#: Due rows the first round reads, at least (then twice what the claim asks for).
FIRST_BATCH_MIN = 16

#: The object's head: its oldest pending event.
HEAD = """(SELECT h.seq FROM events h
           WHERE h.object_key = e.object_key AND h.status = 'pending'
           ORDER BY h.ord_at, h.ord_upd, h.seq LIMIT 1)"""
#: Whether another event of the object is leased right now.
LEASED = """EXISTS (SELECT 1 FROM events l
                    WHERE l.object_key = e.object_key AND l.status = 'pending'
                      AND l.lease_expires_at > {now} AND l.seq <> e.seq)"""
#: The id of a newer event of the object that was already delivered, if any.
NEWER_DELIVERED = """(SELECT d.id FROM events d
                      WHERE d.object_key = e.object_key AND {delivered}
                        AND (d.ord_at, d.ord_upd, d.seq) > (e.ord_at, e.ord_upd, e.seq)
                      LIMIT 1)"""
#: "``d`` is delivered", as an index can use it (SQLite: a seek on events_object_order).
DELIVERED = "d.status = 'delivered'"
#: The same, as no index can use it: PostgreSQL then always probes the object's own
#: entries of events_object_order. With the sargable form and statistics taken while
#: almost nothing was delivered (a store ANALYZEd during an outage), the planner
#: estimated one delivered row, chose events_status_received and read every delivered
#: event for each candidate: the drain slowed as it went (13.5 ms per 16-candidate
#: decision after 400 deliveries, against 0.5 ms; tests/test_claim_plans.py).
DELIVERED_NO_INDEX = "d.status || '' = 'delivered'"


def decision_query(seqs_clause: str, now: str, *, delivered: str = DELIVERED) -> str:
    """One statement answering, for each candidate ``e``: head, leased, newer delivered."""
    newer = NEWER_DELIVERED.format(delivered=delivered)
    return (
        f"SELECT e.seq, {HEAD}, {LEASED.format(now=now)}, {newer} FROM events e"
        f" WHERE e.seq {seqs_clause} AND e.object_key IS NOT NULL"
    )


def unpark_head(ph: str) -> str:
    """Make an object's head due at ``now`` if it is parked (params: now, object_key)."""
    return (
        f"UPDATE events SET next_attempt_at = {ph} WHERE seq = ("
        "SELECT h.seq FROM events h"
        f" WHERE h.object_key = {ph} AND h.status = 'pending'"
        " ORDER BY h.ord_at, h.ord_upd, h.seq LIMIT 1) AND next_attempt_at IS NULL"
        " AND status = 'pending'"
    )


@dataclass
class Decision:
    """What one claim transaction does with its candidates."""

    lease: list[Event] = field(default_factory=list)
    park: list[int] = field(default_factory=list)
    supersede: list[tuple[int, str]] = field(default_factory=list)  # (seq, newer id)
    #: Objects whose head must be unparked (a candidate was parked or superseded).
    unpark: set[str] = field(default_factory=set)


def decide(
    candidates: Sequence[Event], answers: Sequence[Sequence[Any]], *, limit: int
) -> Decision:
    """Apply the rule to candidates (in claim order) and the :func:`decision_query` rows."""
    by_seq = {row[0]: (row[1], bool(row[2]), row[3]) for row in answers}
    out = Decision()
    taken: set[str] = set()  # objects leased by this decision
    for event in candidates:
        key = event.object_key
        if key is None:
            if len(out.lease) < limit:
                out.lease.append(event)
            continue
        head, leased, newer_id = by_seq.get(event.seq, (event.seq, False, None))
        if head != event.seq or leased or key in taken:
            out.park.append(event.seq)
            if key not in taken and not leased:
                out.unpark.add(key)  # keep the invariant: the head is not parked
            continue
        if newer_id is not None and is_upsert(event.type) and not event.force:
            out.supersede.append((event.seq, newer_id))
            out.unpark.add(key)  # the next event of the object is its head now
            continue
        if len(out.lease) >= limit:
            continue  # claimable, but this claim is full: it stays due
        out.lease.append(event)
        taken.add(key)
    out.unpark -= taken
    return out


def batch_size(round_index: int, wanted: int) -> int:
    """Due rows claim round ``round_index`` (0 first) reads when ``wanted`` more are asked
    for. The first reads a little more than asked (measured on SQLite, 1,500 due heads:
    claim(limit=4) took 2.7 ms reading 256, most of it deciding rows it did not lease);
    a round after one that found rows to park is sweeping followers: full batches."""
    if round_index == 0:
        return min(SCAN_BATCH, max(FIRST_BATCH_MIN, 2 * wanted))
    return SCAN_BATCH


def look_again(decision: Decision, rows_read: int, batch: int) -> bool:
    """Whether another claim round may find more: this one parked a full batch of
    ``batch`` rows (more due rows wait behind it), or unparked a head (it is due now)."""
    if decision.unpark:
        return True
    return rows_read >= batch and bool(decision.park or decision.supersede)


def statements(
    ph: str, decision: Decision, *, worker_id: str, now_ms: int, lease_ms: int
) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements that write a :class:`Decision`, with their parameters, in order.

    Parks and leases are one statement each, whatever their number: a claim leasing
    64 used to make 64 of them, each a round trip on PostgreSQL.
    """
    expires = now_ms + lease_ms
    out: list[tuple[str, tuple[Any, ...]]] = []
    if decision.park:
        where, params = sql.among(ph, "seq", decision.park)
        out.append((f"UPDATE events SET next_attempt_at = NULL WHERE {where}", params))
    for seq, newer_id in decision.supersede:
        out.append(
            (
                "UPDATE events SET status = 'superseded', next_attempt_at = NULL,"
                f" last_error = {ph} WHERE seq = {ph}",
                (f"superseded: newer event {newer_id} already delivered", seq),
            )
        )
    for key in sorted(decision.unpark):
        out.append((unpark_head(ph), (now_ms, key)))
    if decision.lease:
        # next_attempt_at moves to the lease's end: leased rows leave the claim index,
        # and a dead worker's event comes due again when its lease runs out.
        where, params = sql.among(ph, "seq", [e.seq for e in decision.lease])
        out.append(
            (
                f"UPDATE events SET lease_owner = {ph}, lease_expires_at = {ph},"
                f" next_attempt_at = {ph} WHERE {where}",
                (worker_id, expires, expires, *params),
            )
        )
    return out


def apply(
    conn: Any, ph: str, decision: Decision, *, worker_id: str, now_ms: int, lease_ms: int
) -> None:
    """Write a :class:`Decision` on ``conn`` (inside the claim's transaction)."""
    for statement, params in statements(
        ph, decision, worker_id=worker_id, now_ms=now_ms, lease_ms=lease_ms
    ):
        conn.execute(statement, params)
