"""The admin API under ``/admin`` (only when ``RELAY_ADMIN_TOKEN`` is set).

JSON in, JSON out, ``Authorization: Bearer <token>`` on every route but the OpenAPI
document (``relay/web/openapi.json``, served at ``/admin/openapi.json``). Events are in
exactly the shape of ``relay events --json`` (:meth:`Event.to_dict`). The replay verbs
here are shared with the console, so both refuse the same things for the same reasons.
``/admin/reconcile`` lists reconcile runs and asks the workers for one (they run it:
a web request never waits minutes for Clerk).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from relay.errors import BadRequest, Unauthorized
from relay.reconcile.schedule import RECONCILE_RUNS_SHOWN, ask_for_reconcile
from relay.replay import find_event, matching_ids, replay_one, replay_selection
from relay.web import auth
from relay.web.context import now_ms, runtime
from relay.web.query import parse_filter, parse_list_query

bp = Blueprint("admin_api", __name__, url_prefix="/admin")

# -- auth ------------------------------------------------------------------------------


@bp.before_request
def _require_bearer() -> None:
    if request.endpoint == "admin_api.openapi":
        return  # the description is public (it ships with the code); the data is not
    client = auth.client_ip(request)
    auth.limiter().check(client)
    presented = auth.bearer_token(request)
    if presented is None:
        raise Unauthorized("send Authorization: Bearer <RELAY_ADMIN_TOKEN>")
    if not auth.token_matches(runtime().settings.admin_token, presented):
        auth.limiter().fail(client)  # only guesses count; a forgotten header is not one
        raise Unauthorized("the admin token is wrong")
    g.log_fields = {**g.get("log_fields", {}), "admin": True}


@bp.after_request
def _challenge(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="relay-admin"'
    response.headers["Cache-Control"] = "no-store"
    return response


# -- routes ------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    text = resources.files("relay.web").joinpath("openapi.json").read_text(encoding="utf-8")
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
    event = find_event(runtime().store, event_id)
    return jsonify(event.to_dict(with_attempts=True))


@bp.post("/events/<path:event_id>/replay")
def replay_event(event_id: str) -> Response:
    """Queue one event for delivery again (``{"force": true}`` for superseded ones)."""
    body = _json_body(allowed={"force"})
    event = replay_one(runtime().store, event_id, force=_flag(body, "force"), now_ms=now_ms())
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
    queued = replay_selection(store, flt, force=force, now_ms=now_ms())
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
    run = ask_for_reconcile(
        runtime().store, runtime().settings, dry_run=_flag(body, "dryRun"), now_ms=now_ms()
    )
    return jsonify(run.to_dict()), 202


#: Runs the API and the console list.
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
