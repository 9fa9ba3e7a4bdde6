"""Copy every event from one store to another (``relay migrate-store``).

Typically SQLite to PostgreSQL when one machine is no longer enough. The copy is
idempotent, keyed by event id: running it again copies only what is missing, so it
is safe to run while the old relay is still accepting webhooks. The procedure that
loses nothing:

1. run ``relay migrate-store`` while the old relay runs (copies the bulk, slowly if
   need be; ingest and delivery carry on);
2. stop the old relay, ingest and worker;
3. run ``relay migrate-store`` again: it copies the tail that arrived since step 1;
4. start the new relay on the new store.

Each event keeps its status, counters, retry time, last error and attempts log.
Leases are not copied: an event in flight during step 1 arrives as plain pending.
An event still pending at step 1 but delivered by the old relay before step 2
stays pending in the copy (re-runs never overwrite), so the new relay delivers it
once more; that is the at-least-once delivery Clerk's own retries already imply,
and Convex handlers must be idempotent for that reason anyway.

Events are copied oldest first, so the destination's receipt order (its tie-break
for events of one object with equal timestamps) matches the source's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from relay.store import Store


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What one run copied."""

    examined: int
    """Events read from the source."""
    copied: int
    """Events that were missing from the destination and are now there."""
    already_present: int
    """Events the destination already had (from an earlier run); left untouched."""
    attempts_copied: int
    """Attempt log entries copied along with the copied events."""


def migrate_store(
    source: Store,
    dest: Store,
    *,
    progress: Callable[[int], None] | None = None,
) -> MigrationReport:
    """Copy every event of ``source`` missing from ``dest``; ``dest`` is migrated first.

    ``progress`` is called after each event with the number examined so far (the
    caller decides how often to draw). Store failures raise
    :class:`~relay.errors.StoreError`; everything copied before stays copied, so
    the remedy is to run again.
    """
    dest.migrate()
    examined = copied = attempts_copied = 0
    for event, attempts in source.export():
        examined += 1
        if dest.import_event(event, attempts):
            copied += 1
            attempts_copied += len(attempts)
        if progress is not None:
            progress(examined)
    return MigrationReport(
        examined=examined,
        copied=copied,
        already_present=examined - copied,
        attempts_copied=attempts_copied,
    )
