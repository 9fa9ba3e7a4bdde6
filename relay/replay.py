"""Replaying events: the one home of what may be replayed and how, for the admin API,
the console and the CLI alike, so all three refuse the same things for the same reasons.

The rule of which statuses a replay moves back to ``pending`` is
:func:`relay.store.sql.replayable_statuses` (the store applies it atomically); this
module finds what a selection would replay (the dry run's answer, a page at a time),
replays one event with a reason when it cannot, and replays a selection in chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from relay.errors import Conflict, NotFound
from relay.models import Event, EventFilter, Status
from relay.store import Store
from relay.store.sql import replayable_statuses

#: Ids fetched per query when listing a selection (bounded memory on huge backlogs).
SCAN_PAGE = 1000


def find_event(store: Store, event_id: str) -> Event:
    """The stored event ``event_id``, or :class:`NotFound` (a 404 with the same wording
    on the admin API and the console; replays raise it too)."""
    event = store.get(event_id)
    if event is None:
        raise NotFound(f"no event {event_id!r}")
    return event


def replay_one(store: Store, event_id: str, *, force: bool, now_ms: int) -> Event:
    """Queue one event again; :class:`NotFound` or :class:`Conflict` says why not."""
    event = find_event(store, event_id)
    if not store.replay(EventFilter(ids=(event_id,)), now_ms=now_ms, force=force):
        if event.status is Status.PENDING:
            raise Conflict("the event is already pending (queued or in flight)")
        if event.status is Status.SUPERSEDED:
            raise Conflict("a newer event of this object was delivered; replay with force")
        raise Conflict(f"a {event.status} event cannot be replayed right now")
    replayed = store.get(event_id)
    assert replayed is not None  # noqa: S101 - replay never deletes
    return replayed


def matching_ids(store: Store, flt: EventFilter, *, force: bool) -> list[str]:
    """Ids a bulk replay of ``flt`` would queue (the dry run's answer)."""
    allowed = tuple(Status(s) for s in replayable_statuses(flt, force=force))
    if not allowed:
        return []
    scan = EventFilter(
        statuses=allowed,
        type_glob=flt.type_glob,
        entity_id=flt.entity_id,
        since_ms=flt.since_ms,
        until_ms=flt.until_ms,
        ids=flt.ids,
    )
    ids: list[str] = []
    cursor = None
    while True:
        page = store.list_events(scan, limit=SCAN_PAGE, cursor=cursor)
        ids += [e.id for e in page.events]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def replay_selection(store: Store, flt: EventFilter, *, force: bool, now_ms: int) -> list[str]:
    """Queue every replayable event matching ``flt``; the ids queued."""
    if not replayable_statuses(flt, force=force):
        return []  # e.g. status=pending: nothing to do (and ``IN ()`` is not valid SQL)
    return store.replay(flt, now_ms=now_ms, force=force)


def replay_ids(
    store: Store,
    ids: Iterable[str],
    *,
    force: bool,
    now_ms: int,
    chunk: int = SCAN_PAGE,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Replay these ids, ``chunk`` per transaction; the ids queued (``progress`` gets the
    number done after each chunk)."""
    ids = list(ids)
    replayed: list[str] = []
    for start in range(0, len(ids), chunk):
        part = tuple(ids[start : start + chunk])
        replayed += store.replay(EventFilter(ids=part), now_ms=now_ms, force=force)
        if progress is not None:
            progress(len(part))
    return replayed
