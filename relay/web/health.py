"""Liveness, readiness and metrics for load balancers, Fly checks and Prometheus."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify
from werkzeug.exceptions import NotFound

from relay import metrics
from relay.errors import StoreError
from relay.models import TargetHealth
from relay.store import Store
from relay.web.context import runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 while the process serves; touches nothing else."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when the store answers and a delivery worker reported recently; else 503."""
    rt = runtime()
    checks: dict[str, str] = {}
    try:
        rt.store.ping()
        checks["store"] = "ok"
        age_s = metrics.worker_heartbeat_age_s(rt.store, time.time())
        if age_s is None:
            checks["worker"] = "no delivery worker has reported yet"
        elif age_s > rt.settings.heartbeat_stale_s:
            checks["worker"] = f"last worker heartbeat {age_s:.0f}s ago"
        else:
            checks["worker"] = "ok"
    except StoreError as exc:
        checks["store"] = f"store does not answer: {exc}"
        checks["worker"] = "unknown"
    checks["ingest"] = _ingest_check()
    if rt.store.committer_lost():
        checks["committer"] = "the group committer stopped answering; relay serve restarts it"
    failing = sorted(name for name, state in checks.items() if state != "ok")
    body: dict[str, object] = {"status": "ok" if not failing else "unavailable", "checks": checks}
    # Detail, not a check: with Convex down the relay still accepts and keeps events.
    body["target"] = target_detail(rt.store, rt.settings.target_url)
    if failing:
        body["failing"] = failing
    return jsonify(body), 200 if not failing else 503


def target_detail(store: Store, target: str) -> dict[str, object] | None:
    """The delivery target's health for /readyz (None when the store cannot say)."""
    try:
        health = store.target_health(target)
    except StoreError:
        return None
    return (health or TargetHealth(target)).to_dict()


def _ingest_check() -> str:
    """Whether ingest can store events now: a 503 in the last
    :data:`~relay.metrics.INGEST_FAILING_HOLD_S` with no event stored since says no."""
    failed_at = metrics.ingest_failed_at_s()
    age_s = time.time() - failed_at
    if failed_at > 0 and age_s < metrics.INGEST_FAILING_HOLD_S:
        return f"storing an event failed {age_s:.0f}s ago and none was stored since"
    return "ok"


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    rt = runtime()
    if rt.settings.metrics_port is not None:
        raise NotFound()  # served on RELAY_METRICS_PORT only, not on the public port
    data, content_type = metrics.render(rt.store, backlog_warn_s=rt.settings.backlog_warn_s)
    return Response(data, content_type=content_type)
