"""``relay reconcile`` as a command: configuration, progress bar, diff lines and summary.

Kept out of ``cli.py`` (which only declares the options) so the command's output
and exit codes read in one place: 0 done, 1 failure (Clerk, Convex or the store
failed; a re-run resumes, since queued events are never queued twice), 2 bad
configuration (no ``CLERK_SECRET_KEY``, no delivery target, a key Clerk refuses,
an unknown or undelivered kind).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from relay.errors import ClerkAPIError, ConvexQueryError, StoreError
from relay.models import ReconcileRun, RunStatus
from relay.reconcile.clerk_api import ClerkAPI
from relay.reconcile.reconciler import Counts, Reconciler, kinds_for
from relay.reconcile.schedule import execute
from relay.settings import Settings
from relay.store import open_store

NO_STATE_NOTE = (
    "Convex's state cannot be read without CONVEX_URL + CONVEX_DEPLOY_KEY: every Clerk "
    "object is queued as an upsert (safe with upserting handlers), and deletions cannot "
    "be detected."
)


def run_reconcile(settings: Settings, objects: str | None, *, dry_run: bool, as_json: bool) -> int:
    """Run one reconcile, record it in the run history, print its result; the exit code."""
    settings.require_clerk_api()
    settings.require_delivery()
    kinds = kinds_for(settings, objects)
    # Reconcile events are not promised to anyone: a crash before they reach the disk
    # is undone by running again, so the outbox need not wait for the disk per event.
    store = open_store(settings.database_url, sync_commits=False)
    reconciler = Reconciler.from_settings(settings, store, now_ms=_now_ms, dry_run=dry_run)
    bar = _Progress(reconciler.clerk, enabled=sys.stderr.isatty() and not as_json)
    reconciler.on_progress = bar.update
    if dry_run and not as_json:
        reconciler.on_diff = _print_diff
    started = time.monotonic()
    try:
        store.migrate()
        run = ReconcileRun(None, "cli", dry_run, RunStatus.REQUESTED, _now_ms())
        _, result = execute(store, reconciler, run, kinds, raise_errors=True)
    except ClerkAPIError as exc:
        bar.close()
        click.echo(f"Clerk API error: {exc}", err=True)
        return 2 if exc.status_code in (401, 403) else 1
    except (ConvexQueryError, StoreError) as exc:
        bar.close()
        click.echo(f"reconcile failed: {exc}", err=True)
        return 1
    finally:
        store.close()
    bar.close()
    assert result is not None  # noqa: S101 - execute raised otherwise
    clerk, convex = reconciler.clerk, reconciler.convex
    notes = ([] if convex is not None else [NO_STATE_NOTE]) + reconciler.notes
    _print_summary(result, notes, dry_run=dry_run, as_json=as_json)
    # On stderr, so --json stays one object per kind; the benchmark reads this line.
    click.echo(
        f"reconcile took {time.monotonic() - started:.1f}s: {clerk.requests} Clerk request(s) "
        f"({clerk.throttled} answered 429), {convex.requests if convex else 0} Convex "
        f"quer(ies), {clerk.limiter.waited_s:.1f}s waiting for the rate limit ("
        + ", ".join(f"{phase} {s:.1f}s" for phase, s in reconciler.phase_s.items())
        + ")",
        err=True,
    )
    return 0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _print_diff(kind: str, what: str, clerk_id: str) -> None:
    click.echo(f"{what:<8} {kind:<14} {clerk_id}")


def _print_summary(
    result: dict[str, Counts], notes: list[str], *, dry_run: bool, as_json: bool
) -> None:
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps({k: c.to_dict() for k, c in result.items()}, indent=2))
        return
    for name, c in result.items():
        convex = "?" if c.convex is None else c.convex
        gone = "?" if c.gone is None else c.gone
        verb = "would queue" if dry_run else "queued"
        queued = c.missing + c.stale + (c.gone or 0) if dry_run else c.queued
        click.echo(
            f"{name}: Clerk {c.clerk}, Convex {convex}; missing {c.missing}, stale {c.stale}, "
            f"gone {gone}; {verb} {queued}"
        )


class _Progress:
    """A progress bar per kind on a terminal (stderr), nothing otherwise."""

    def __init__(self, clerk: ClerkAPI, *, enabled: bool) -> None:
        self._clerk = clerk
        self._enabled = enabled
        self._bar: Any = None
        self._kind: str | None = None

    def update(self, kind: str, done: int) -> None:
        if not self._enabled:
            return
        if kind != self._kind:
            self.close()
            self._kind = kind
            try:
                total = self._clerk.count(kind)
            except ClerkAPIError:
                total = None
            self._bar = click.progressbar(
                length=total or 0, label=f"reading {kind}", show_pos=True, file=sys.stderr
            )
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
