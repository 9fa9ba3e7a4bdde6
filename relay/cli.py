"""The ``relay`` command: run the service, inspect and replay events, smoke-test a deploy.

Reads the same configuration as the server (environment and ``.env``), so it finds the
same database. Exit codes: 0 success, 1 failure, 2 bad usage or configuration.
``--json`` output is the stable shape of the admin API (``Event.to_dict``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from relay import timeparse
from relay.errors import ConfigError, NotFound, StoreError
from relay.models import Event, EventFilter, Status, TargetHealth, TargetState
from relay.replay import find_event, matching_ids, replay_ids
from relay.settings import Settings, parse_duration_s
from relay.store import Store, open_store

P = ParamSpec("P")
R = TypeVar("R")

#: Replays touching more events than this show a progress bar and go in chunks.
REPLAY_CHUNK = 200

_EXAMPLE_ENV = """\
Set at least:
  CLERK_WEBHOOK_SECRET=whsec_...           # Clerk dashboard -> Webhooks -> your endpoint
and one delivery target:
  CONVEX_SITE_URL=https://<deployment>.convex.site          # HTTP action, or
  CONVEX_URL=https://<deployment>.convex.cloud CONVEX_DEPLOY_KEY=prod:...   # function API
For example:
  CLERK_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \\
  CONVEX_SITE_URL=https://happy-otter-123.convex.site make run
(a .env file in this directory is read too)"""


def _settings() -> Settings:
    return Settings.from_env()


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn configuration and store errors into a message and an exit code, never a trace."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"configuration error: {exc}", err=True)
            if exc.variable in ("CLERK_WEBHOOK_SECRET", "CONVEX_SITE_URL"):
                click.echo(_EXAMPLE_ENV, err=True)
            sys.exit(2)
        except StoreError as exc:
            click.echo(f"store error: {exc}", err=True)
            sys.exit(1)
        except NotFound as exc:  # worded as the admin API and the console word it
            click.echo(exc.detail, err=True)
            sys.exit(1)

    return wrapper


def _store(settings: Settings, *, sync_commits: bool = True) -> Store:
    store = open_store(settings.database_url, sync_commits=sync_commits)
    store.migrate()
    return store


def _since(value: str | None, now_ms: float) -> int | None:
    """``2h`` (that long ago) or an ISO date/time, as epoch ms."""
    if value is None:
        return None
    ms = timeparse.moment_ms(value, timeparse.CLI, now_ms=now_ms)
    if ms is None:
        raise click.BadParameter("use a duration like 2h or a date like 2026-11-01T12:00")
    return ms


def _table(events: list[Event]) -> str:
    rows = [("ID", "TYPE", "STATUS", "ENTITY", "RECEIVED (UTC)", "TRIES", "LAST ERROR")]
    for e in events:
        rows.append(
            (
                e.id,
                e.type,
                str(e.status),
                e.entity_id or "-",
                timeparse.utc_text(e.received_at_ms),
                str(e.attempt_count),
                (e.last_error or "")[:60],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


#: Files created by any relay command: owner read/write only (0600), directories 0700.
PRIVATE_UMASK = 0o077


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clerk-convex-relay")
def main() -> None:
    """Relay Clerk webhooks to Convex, durably."""
    # Files the relay creates (the database and its -wal/-shm, metrics, locks) hold user
    # data or describe it: readable by this user only, for every command and its children.
    os.umask(PRIVATE_UMASK)


@main.command()
@click.option("--web-only", is_flag=True, help="Run ingest only (workers run elsewhere).")
@handles_errors
def serve(web_only: bool) -> None:
    """Run ingest (gunicorn) and delivery together: the container's command."""
    from relay.logs import configure_logging
    from relay.serve import serve as run

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(run(settings, web_only=web_only))


@main.command()
@click.option("--once", is_flag=True, help="Deliver one batch of due events, then exit.")
@click.option(
    "--nice",
    type=click.IntRange(0, 19),
    default=0,
    help="Lower this process's CPU priority by this much.",
)
@click.option(
    "--low-priority",
    is_flag=True,
    help="Run deliveries (not claims or outcome writes) at nice 19, so ingest on the same "
    "machine comes first; relay serve uses it.",
)
@handles_errors
def worker(once: bool, nice: int, low_priority: bool) -> None:
    """Run delivery only."""
    if nice:
        # Before any thread starts: Linux priorities are per thread and threads inherit.
        with contextlib.suppress(OSError):
            os.nice(nice)
    from relay.delivery.worker import Worker
    from relay.logs import configure_logging

    settings = _settings()
    settings.require_delivery()
    configure_logging(settings.log_level, settings.log_format)
    # The worker's writes are bookkeeping (see open_store): not waiting on the disk for
    # them keeps the writer lock free for ingest (measured +17 % ingest under relay serve).
    store = _store(settings, sync_commits=False)
    w = Worker(settings, store, low_priority=low_priority)
    if once:
        click.echo(f"attempted {w.run_once()} event(s)")
        return
    stop_metrics = None
    if settings.metrics_port:  # a worker on its own has no web server to scrape
        from relay.metrics import serve_port

        stop_metrics = serve_port(
            settings.metrics_port, store, backlog_warn_s=settings.backlog_warn_s
        )
    stop_reconciles = None
    if settings.clerk_secret_key:  # scheduled (RELAY_RECONCILE_EVERY) and requested runs
        from relay.reconcile.schedule import ReconcileScheduler

        stop_reconciles = ReconcileScheduler(settings, store, owner=w.worker_id).start()
    w.install_signal_handlers()
    w.run()
    if stop_reconciles is not None:
        stop_reconciles()
    if stop_metrics is not None:
        stop_metrics()
    store.close()


def _filter_options(fn: Callable[P, R]) -> Callable[P, R]:
    fn = click.option("--since", help="Received within this long (2h) or after a date.")(fn)
    fn = click.option("--entity", help="Clerk object id (user_..., org_...).")(fn)
    fn = click.option("--type", "type_glob", help="Event type glob, e.g. 'user.*'.")(fn)
    return fn


@main.command()
@click.option("--status", type=click.Choice([str(s) for s in Status]), multiple=True)
@_filter_options
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (stable for scripts).")
@handles_errors
def events(
    status: tuple[str, ...],
    type_glob: str | None,
    entity: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List events, newest first."""
    store = _store(_settings())
    flt = EventFilter(
        statuses=tuple(Status(s) for s in status),
        type_glob=type_glob,
        entity_id=entity,
        since_ms=_since(since, time.time() * 1000),
    )
    page = store.list_events(flt, limit=limit)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in page.events], indent=2))
    elif page.events:
        click.echo(_table(page.events))
    else:
        click.echo("no events match")


@main.command()
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--body", is_flag=True, help="Also print the stored body (may hold personal data).")
@handles_errors
def show(event_id: str, as_json: bool, body: bool) -> None:
    """Show one event with every delivery attempt."""
    event = find_event(_store(_settings()), event_id)
    data = event.to_dict(with_attempts=True)
    if as_json:
        if body:
            data["body"] = event.body.decode("utf-8", "replace")
        click.echo(json.dumps(data, indent=2))
        return
    for key in ("id", "type", "status", "object", "entityId"):
        click.echo(f"{key:>14}: {data[key]}")
    for key in ("occurredAt", "receivedAt", "nextAttemptAt", "deliveredAt"):
        click.echo(f"{key:>14}: {timeparse.utc_text(data[key])}")
    click.echo(f"{'lastError':>14}: {data['lastError'] or '-'}")
    click.echo(f"\nattempts ({len(event.attempts)}):")
    for a in event.attempts:
        click.echo(
            f"  {timeparse.utc_text(a.at_ms)}  {a.outcome:<9} {a.status_code or '-':>4}"
            f"  {a.duration_ms:8.1f} ms  {a.error or ''}"
        )
    if body:
        click.echo("\nbody:\n" + event.body.decode("utf-8", "replace"))


@main.command()
@click.argument("ids", nargs=-1)
@click.option(
    "--status",
    type=click.Choice(["failed", "skipped", "delivered", "superseded"]),
    multiple=True,
    help="With no ids: which statuses (default failed).",
)
@_filter_options
@click.option("--force", is_flag=True, help="Also replay superseded/delivered events.")
@click.option("--dry-run", is_flag=True, help="Only say what would be replayed.")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def replay(
    ids: tuple[str, ...],
    status: tuple[str, ...],
    type_glob: str | None,
    entity: str | None,
    since: str | None,
    force: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Deliver events again: by id, or every failed event matching the filters."""
    if ids and (status or type_glob or entity or since):
        raise click.UsageError("give event ids or filters, not both")
    store = _store(_settings())
    now_ms = int(time.time() * 1000)
    base = EventFilter(
        ids=ids,
        statuses=tuple(Status(s) for s in status),
        type_glob=type_glob,
        entity_id=entity,
        since_ms=_since(since, now_ms),
    )
    matching = matching_ids(store, base, force=force)
    if dry_run:
        _report(
            {"wouldReplay": len(matching), "ids": matching},
            as_json,
            f"would replay {len(matching)} event(s)",
        )
        return
    show_bar = len(matching) > REPLAY_CHUNK and not as_json
    sink = sys.stderr if show_bar else io.StringIO()  # short replays: no bar
    with click.progressbar(
        length=len(matching), label="replaying", show_pos=True, file=sink
    ) as bar:
        replayed = replay_ids(
            store, matching, force=force, now_ms=now_ms, chunk=REPLAY_CHUNK, progress=bar.update
        )
    missing = sorted(set(ids) - set(replayed))
    _report(
        {"replayed": len(replayed), "ids": replayed, "notReplayed": missing},
        as_json,
        f"queued {len(replayed)} event(s) for delivery",
    )
    if missing:
        click.echo(
            f"not replayed (unknown, in flight, or superseded without --force): "
            f"{', '.join(missing)}",
            err=True,
        )
        sys.exit(1)


def _report(data: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


@main.command()
@click.option("--older-than", required=True, help="Age, e.g. 30d.")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def purge(older_than: str, as_json: bool) -> None:
    """Delete delivered, skipped and superseded events older than the given age."""
    try:
        age_s = parse_duration_s("--older-than", older_than)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    store = _store(_settings())
    n = store.purge(older_than_ms=int((time.time() - age_s) * 1000))
    _report({"purged": n}, as_json, f"purged {n} event(s)")


@main.command()
@handles_errors
def check() -> None:
    """Validate the configuration, open the store and reach Convex."""
    from relay.check import run_checks

    settings = _settings()
    ok = True
    for name, passed, detail in run_checks(settings):
        click.echo(f"{'ok  ' if passed else 'FAIL'}  {name}: {detail}")
        ok &= passed
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The contract's JSON object.")
@handles_errors
def status(as_json: bool) -> None:
    """Delivery target health and the backlog: exit 0 while the target is up, 1 if not."""
    from relay.check import describe_health

    settings = _settings()
    store = _store(settings)
    health = store.target_health(settings.target_url) or TargetHealth(settings.target_url)
    counts = store.counts()
    oldest = store.oldest_pending_ms()
    data = {**health.to_dict(), "events": counts, "oldestPendingAt": oldest}
    text = (
        f"target   {health.target}\n"
        f"state    {describe_health(health)}\n"
        f"backlog  {counts['pending']} pending, {counts['failed']} failed"
    )
    _report(data, as_json, text)
    sys.exit(0 if health.state == TargetState.UP else 1)


@main.command("send-test")
@click.option(
    "--url",
    required=True,
    help="The relay's base URL (https://relay.fly.dev) or the endpoint URL given to Clerk "
    "(https://relay.fly.dev/webhooks/clerk).",
)
@click.option("--type", "event_type", default="user.created", show_default=True)
@click.option("--secret", help="Signing secret (default: first CLERK_WEBHOOK_SECRET).")
@handles_errors
def send_test(url: str, event_type: str, secret: str | None) -> None:
    """Send one correctly signed sample event to a running relay."""
    from relay.check import send_test_event

    if secret is None:
        settings = _settings()
        settings.require_ingest()
        secret = settings.webhook_secrets[0]
    status, body = send_test_event(url, secret, event_type)
    click.echo(f"HTTP {status} {body}")
    sys.exit(0 if status == 200 else 1)


@main.command("migrate-store")
@click.option("--from", "source", required=True, help="e.g. sqlite:///data/relay.db")
@click.option("--to", "dest", required=True, help="e.g. postgresql://user:pw@host/db")
@handles_errors
def migrate_store_cmd(source: str, dest: str) -> None:
    """Copy every event (with status and attempts) between stores; safe to re-run."""
    from relay.migrate import migrate_store

    if source.startswith("sqlite:///") and not Path(source.removeprefix("sqlite:///")).is_file():
        click.echo(f"no SQLite database at {source}", err=True)
        sys.exit(1)
    src, dst = open_store(source), open_store(dest)
    try:
        with click.progressbar(length=0, label="copying", file=sys.stderr) as bar:
            report = migrate_store(src, dst, progress=lambda n: bar.update(n - bar.pos))
    finally:
        src.close()
        dst.close()
    click.echo(
        f"examined {report.examined}, copied {report.copied} "
        f"(with {report.attempts_copied} attempts), already present "
        f"{report.already_present}"
    )


@main.command()
@click.option(
    "--objects",
    help="Comma-separated kinds: users,organizations,memberships "
    "(default: every kind this configuration delivers).",
)
@click.option("--dry-run", is_flag=True, help="Print the differences; queue nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handles_errors
def reconcile(objects: str | None, dry_run: bool, as_json: bool) -> None:
    """Bring Convex up to date with Clerk: queue what is missing, stale or deleted."""
    from relay.reconcile.cli import run_reconcile

    sys.exit(run_reconcile(_settings(), objects, dry_run=dry_run, as_json=as_json))


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@handles_errors
def upgrade() -> None:
    """Create or upgrade the schema (idempotent; a release command)."""
    settings = _settings()
    store = open_store(settings.database_url)
    store.migrate()
    click.echo(f"schema up to date: {store.url_for_display}")
