"""The web console at ``/admin/``: server-rendered pages for operators, no JavaScript.

Sign in with the admin token -> a signed, HttpOnly, SameSite=Strict session cookie
(see :mod:`relay.web.auth`). Every POST form carries the session's CSRF token.
Pages list events with counts and filters, show one event with its attempts and a
redacted payload, and replay one event or a filtered selection after confirmation;
one lists reconcile runs and asks the workers for a run or a dry run.
Nothing secret is rendered: payloads and errors pass through :mod:`relay.redact`.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from relay.errors import Conflict, HTTPError, LimitedError
from relay.metrics import worker_heartbeat_age_s
from relay.models import Event, EventFilter, Status, TargetState
from relay.reconcile.schedule import RECONCILE_RUNS_SHOWN, ask_for_reconcile
from relay.redact import redact, redact_text
from relay.replay import find_event, matching_ids, replay_one, replay_selection
from relay.settings import Settings
from relay.timeparse import utc_text
from relay.web import auth
from relay.web.context import now_ms, runtime
from relay.web.query import parse_filter, parse_list_query

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: Filter fields the list, the bulk-replay confirmation and its hidden form share.
FILTER_FIELDS = ("status", "type", "entity", "since")
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
_OPEN_ENDPOINTS = frozenset({"console.sign_in", "console.static"})


# -- request plumbing --------------------------------------------------------------------


@bp.before_request
def _guard() -> Response | None:
    """Signed-in sessions only (except the sign-in page); CSRF on every POST."""
    if request.method == "POST":
        auth.check_csrf(request.form.get(auth.CSRF_FIELD))
    if request.endpoint in _OPEN_ENDPOINTS or auth.signed_in(time.time(), runtime().store):
        return None
    session.pop("signed_in_at", None)
    return redirect(url_for("console.sign_in"))


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers.update(_SECURITY_HEADERS)
    return response


@bp.errorhandler(HTTPError)
def _error_page(exc: HTTPError) -> tuple[str, int, dict[str, str]]:
    headers = {}
    if isinstance(exc, LimitedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return render_template("error.html", error=exc), exc.status_code, headers


bp.add_app_template_filter(utc_text, "utc")


@bp.context_processor
def _page_context() -> dict[str, Any]:
    signed = auth.signed_in(time.time(), runtime().store)
    return {
        "signed_in": signed,
        "csrf_token": auth.csrf_token,
        "warnings": _health_warnings(runtime().settings) if signed else [],
    }


def _health_warnings(settings: Settings) -> list[str]:
    """Why an operator should look now: the target is not up, a stale backlog, or a
    silent worker."""
    store = runtime().store
    now_s = time.time()
    warnings = []
    oldest = store.oldest_pending_ms()
    if oldest is not None and now_s - oldest / 1000 > settings.backlog_warn_s:
        warnings.append(
            f"The oldest pending event has waited {_age(now_s - oldest / 1000)} "
            f"(warning after {_age(settings.backlog_warn_s)})."
        )
    health = store.target_health(settings.target_url)
    if health is not None and health.state != TargetState.UP:
        warnings.append(
            f"Convex is {health.state} since {_age(now_s - health.since_ms / 1000)} ago: "
            f"{health.reason}. Events are kept and go out by themselves once a probe "
            f"({health.probe_count} so far) is delivered."
        )
    beat_age_s = worker_heartbeat_age_s(store, now_s)
    if beat_age_s is None:
        warnings.append("No delivery worker has reported yet: events are not being delivered.")
    elif beat_age_s > settings.heartbeat_stale_s:
        warnings.append(
            f"The delivery worker was last seen {_age(beat_age_s)} ago: "
            "events are not being delivered."
        )
    return warnings


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _known_secrets() -> list[str]:
    s = runtime().settings
    return [
        x
        for x in (
            *s.webhook_secrets,
            s.forward_secret,
            s.convex_deploy_key,
            s.admin_token,
            s.clerk_secret_key,
        )
        if x
    ]


def _filter_args(source: MultiDict[str, str]) -> MultiDict[str, str]:
    """The non-empty filter fields of a query string or form, trimmed."""
    out: MultiDict[str, str] = MultiDict()
    for name in FILTER_FIELDS:
        for value in source.getlist(name):
            if value.strip():
                out.add(name, value.strip())
    return out


# -- sign in / out -----------------------------------------------------------------------


@bp.route("/signin", methods=["GET", "POST"])
def sign_in() -> Response | str | tuple[str, int]:
    """The token form; a right token starts a session, a wrong one counts against the IP."""
    if request.method == "GET":
        return render_template("signin.html")
    client = auth.client_ip(request)
    auth.limiter().check(client)
    token = request.form.get("token", "")
    if not auth.token_matches(runtime().settings.admin_token, token):
        auth.limiter().fail(client)
        return render_template("signin.html", error="That token is not right."), 401
    auth.sign_in(time.time(), runtime().store)
    return redirect(url_for("console.events"))


@bp.post("/signout")
def sign_out() -> Response:
    """End the session (the CSRF check keeps other sites from signing you out)."""
    auth.sign_out(runtime().store)
    flash("Signed out.")
    return redirect(url_for("console.sign_in"))


# -- pages -------------------------------------------------------------------------------


@bp.get("/")
def events() -> str:
    """Events, newest first, with counts, filters and paging."""
    args = _filter_args(request.args)
    if cursor := request.args.get("cursor"):
        args.add("cursor", cursor)
    if limit := request.args.get("limit"):
        args.add("limit", limit)
    query = parse_list_query(args, now_ms=now_ms())
    store = runtime().store
    page = store.list_events(query.flt, limit=query.limit, cursor=query.cursor)
    filters = _filter_args(request.args)
    older = None
    if page.next_cursor:
        older = (
            url_for("console.events")
            + "?"
            + urlencode([*filters.items(multi=True), ("cursor", page.next_cursor)])
        )
    return render_template(
        "events.html",
        page=page,
        counts=store.counts(),
        statuses=[str(s) for s in Status],
        filters=filters,
        selected=set(query.flt.statuses),
        older_url=older,
        paged=bool(query.cursor),
        filter_query=urlencode(list(filters.items(multi=True))),
    )


@bp.get("/event/<path:event_id>")
def event(event_id: str) -> str:
    """One event: state, every attempt and the redacted payload."""
    found = find_event(runtime().store, event_id)
    return render_template(
        "event.html",
        event=found,
        payload=_payload(found),
        attempts=_attempts(found),
        last_error=_safe(found.last_error),
        replayable=found.status is not Status.PENDING,
    )


def _payload(event: Event) -> str:
    try:
        shown = json.dumps(redact(event.envelope(), _known_secrets()), indent=2, ensure_ascii=False)
    except RecursionError:  # stored before ingest capped nesting (relay.web.ingest.MAX_NESTING)
        return f"(not shown: the payload nests too deeply to display; {len(event.body)} bytes)"
    # A lone surrogate (JSON can carry "\ud800") cannot be sent as UTF-8: show its escape.
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe(text: str | None) -> str | None:
    return None if text is None else redact_text(text, _known_secrets())


def _attempts(event: Event) -> list[dict[str, Any]]:
    return [{**a.to_dict(), "error": _safe(a.error)} for a in event.attempts]


@bp.post("/event/<path:event_id>/replay")
def replay(event_id: str) -> Response:
    """Queue one event again; the event page says what happened."""
    force = request.form.get("force") == "1"
    replay_one(runtime().store, event_id, force=force, now_ms=now_ms())
    flash("Queued for delivery." + (" (forced)" if force else ""))
    return redirect(url_for("console.event", event_id=event_id))


@bp.route("/bulk-replay", methods=["GET", "POST"])
def bulk_replay() -> Response | str:
    """GET: how many events the filters would replay. POST: replay them."""
    source = request.form if request.method == "POST" else request.args
    filters = _filter_args(source)
    force = source.get("force") == "1"
    flt = _selection(filters)
    store = runtime().store
    if request.method == "GET":
        count = len(matching_ids(store, flt, force=force))
        return render_template(
            "confirm.html",
            count=count,
            filters=filters,
            force=force,
            back=url_for("console.events") + "?" + urlencode(list(filters.items(multi=True))),
        )
    queued = replay_selection(store, flt, force=force, now_ms=now_ms())
    flash(f"Queued {len(queued)} event(s) for delivery.")
    return redirect(url_for("console.events") + "?" + urlencode(list(filters.items(multi=True))))


@bp.route("/reconcile-runs", methods=["GET", "POST"])
def reconcile_runs() -> Response | str:
    """GET: the last reconcile runs and their counts. POST: ask the workers for a run."""
    store, settings = runtime().store, runtime().settings
    if request.method == "POST":
        dry_run = request.form.get("dry_run") == "1"
        try:
            ask_for_reconcile(store, settings, dry_run=dry_run, now_ms=now_ms())
        except Conflict as exc:
            flash(exc.detail)
        else:
            flash(f"{'Dry run' if dry_run else 'Run'} requested: a delivery worker starts it soon.")
        return redirect(url_for("console.reconcile_runs"))
    every = settings.reconcile_every_s
    return render_template(
        "reconcile.html",
        runs=[
            replace(r, error=_safe(r.error))
            for r in store.reconcile_runs(limit=RECONCILE_RUNS_SHOWN)
        ],
        configured=bool(settings.clerk_secret_key),
        every=None if every is None else _age(every),
        kinds=("users", "organizations", "memberships"),
    )


def _selection(filters: MultiDict[str, str]) -> EventFilter:
    return parse_filter(filters, filters.getlist("status"), now_ms=now_ms())
