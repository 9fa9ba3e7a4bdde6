"""The admin API under ``/admin`` (only when ``RELAY_ADMIN_TOKEN`` is set).

JSON in, JSON out, ``Authorization: Bearer <token>`` on every route but the OpenAPI
document (``relay/openapi.json``, served at ``/admin/openapi.json``). Events are in
exactly the shape of ``relay events --json`` (:meth:`Event.to_dict`). The replay verbs
here are shared with the console, so both refuse the same things for the same reasons.
``/admin/reconcile`` lists reconcile runs and asks the workers for one (they run it:
a web request never waits minutes for Clerk).
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request

from relay import adminauth
from relay.adminquery import parse_filter, parse_list_query
from relay.errors import BadRequest, Conflict, NotFound, Unauthorized
from relay.models import Event, EventFilter, ReconcileRun, RunStatus, Status
from relay.settings import Settings
from relay.store import Store
from relay.store.sql import replayable_statuses
from relay.web import runtime

bp = Blueprint("admin_api", __name__, url_prefix="/admin")

#: Ids fetched per query when counting a dry run (bounded memory on huge backlogs).
_SCAN_PAGE = 1000


def register_admin(app: Flask, settings: Settings) -> None:
    """Mount the API and the console; called by the app factory when a token is set."""
    from relay.console import bp as console_bp

    assert settings.admin_token  # noqa: S101 - the factory only calls us with a token
    app.secret_key = adminauth.session_key(settings.admin_token)
    app.session_interface = adminauth.ConsoleSessionInterface()
    app.extensions["relay_admin_limiter"] = adminauth.FailureLimiter()
    app.register_blueprint(bp)
    app.register_blueprint(console_bp)
    app.register_error_handler(adminauth.LimitedError, _render_limited)


def limiter() -> adminauth.FailureLimiter:
    """This process's wrong-token counter."""
    from flask import current_app

    lim: adminauth.FailureLimiter = current_app.extensions["relay_admin_limiter"]
    return lim


def now_ms() -> int:
    return int(time.time() * 1000)


# -- auth ------------------------------------------------------------------------------


@bp.before_request
def _require_bearer() -> None:
    if request.endpoint == "admin_api.openapi":
        return  # the description is public (it ships with the code); the data is not
    client = adminauth.client_ip(request)
    limiter().check(client)
    presented = adminauth.bearer_token(request)
    if presented is None:
        raise Unauthorized("send Authorization: Bearer <RELAY_ADMIN_TOKEN>")
    if not adminauth.token_matches(runtime().settings.admin_token, presented):
        limiter().fail(client)  # only guesses count; a forgotten header is not one
        raise Unauthorized("the admin token is wrong")
    g.log_fields = {**g.get("log_fields", {}), "admin": True}


@bp.after_request
def _challenge(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="relay-admin"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _render_limited(exc: adminauth.LimitedError) -> tuple[Response, int]:
    response = jsonify(exc.to_dict())
    response.headers["Retry-After"] = str(exc.retry_after_s)
    response.headers["Cache-Control"] = "no-store"
    return response, exc.status_code


# -- shared verbs (API and console) -------------------------------------------------------


def replay_one(store: Store, event_id: str, *, force: bool) -> Event:
    """Queue one event again; :class:`NotFound` or :class:`Conflict` says why not."""
    event = store.get(event_id)
    if event is None:
        raise NotFound(f"no event {event_id!r}")
    if not store.replay(EventFilter(ids=(event_id,)), now_ms=now_ms(), force=force):
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
        page = store.list_events(scan, limit=_SCAN_PAGE, cursor=cursor)
        ids += [e.id for e in page.events]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def replay_selection(store: Store, flt: EventFilter, *, force: bool) -> list[str]:
    """Queue every replayable event matching ``flt``; the ids queued."""
    if not replayable_statuses(flt, force=force):
        return []  # e.g. status=pending: nothing to do (and ``IN ()`` is not valid SQL)
    return store.replay(flt, now_ms=now_ms(), force=force)


# -- routes ------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    text = resources.files("relay").joinpath("openapi.json").read_text(encoding="utf-8")
    return Response(text, content_type="application/json")


@bp.get("/events")
def list_events() -> Response:
    """A page of events, newest first, with counts per status."""
    store = runtime().store
    query = parse_list_query(request.args, now_ms=now_ms())
    page = store.list_events(query.flt, limit=query.limit, cursor=query.cursor)
    return jsonify(
        {
            "events": [e.to_dict() for e in page.events],
            "nextCursor": page.next_cursor,
            "counts": store.counts(),
        }
    )


@bp.get("/events/<path:event_id>")
def show_event(event_id: str) -> Response:
    """One event with every delivery attempt."""
    event = runtime().store.get(event_id)
    if event is None:
        raise NotFound(f"no event {event_id!r}")
    return jsonify(event.to_dict(with_attempts=True))


@bp.post("/events/<path:event_id>/replay")
def replay_event(event_id: str) -> Response:
    """Queue one event for delivery again (``{"force": true}`` for superseded ones)."""
    body = _json_body(allowed={"force"})
    event = replay_one(runtime().store, event_id, force=_flag(body, "force"))
    return jsonify({"queued": 1, "ids": [event.id], "event": event.to_dict()})


@bp.post("/replay")
def replay_filtered() -> Response:
    """Queue every replayable event matching a filter (``dryRun`` only counts them)."""
    body = _json_body(
        allowed={"status", "type", "entity", "since", "until", "ids", "force", "dryRun"}
    )
    statuses = body.get("status", [])
    ids = body.get("ids", [])
    if not isinstance(ids, list) or ("ids" in body and not ids):
        raise BadRequest("ids must be a non-empty list of event ids")
    flt = parse_filter(
        body,
        statuses if isinstance(statuses, list) else [statuses],
        now_ms=now_ms(),
        ids=ids,
        json=True,
    )
    force = _flag(body, "force")
    store = runtime().store
    if _flag(body, "dryRun"):
        return jsonify({"wouldQueue": len(matching_ids(store, flt, force=force))})
    queued = replay_selection(store, flt, force=force)
    return jsonify({"queued": len(queued), "ids": queued})


@bp.get("/reconcile")
def reconcile_runs() -> Response:
    """The latest reconcile runs, newest first."""
    settings = runtime().settings
    runs = runtime().store.reconcile_runs(limit=RECONCILE_RUNS_SHOWN)
    return jsonify(
        {
            "runs": [r.to_dict() for r in runs],
            "configured": bool(settings.clerk_secret_key),
            "everySeconds": settings.reconcile_every_s,
        }
    )


@bp.post("/reconcile")
def request_reconcile() -> tuple[Response, int]:
    """Ask the workers for a reconcile run (``{"dryRun": true}`` to only report)."""
    body = _json_body(allowed={"dryRun"})
    run = ask_for_reconcile(runtime().store, runtime().settings, dry_run=_flag(body, "dryRun"))
    return jsonify(run.to_dict()), 202


#: Runs the API and the console list.
RECONCILE_RUNS_SHOWN = 20


def ask_for_reconcile(store: Store, settings: Settings, *, dry_run: bool) -> ReconcileRun:
    """Record a requested run for the workers (shared with the console)."""
    from relay.reconcile_schedule import request_run

    if not settings.clerk_secret_key:
        raise Conflict("reconcile is off: set CLERK_SECRET_KEY (and run a relay worker)")
    if store.reconcile_runs(limit=1, status=RunStatus.REQUESTED):
        raise Conflict("a requested reconcile is already waiting for a worker")
    return request_run(store, dry_run=dry_run, now_ms=now_ms())


def _json_body(*, allowed: set[str]) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}``."""
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if unknown := set(body) - allowed:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    if nulls := sorted(k for k, v in body.items() if v is None):
        raise BadRequest(f"leave out a field rather than sending null: {', '.join(nulls)}")
    return body


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value
