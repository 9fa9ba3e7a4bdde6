"""Operator checks: ``relay check`` (is this deploy wired up?) and ``relay send-test``."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import requests
from svix.webhooks import Webhook

from relay.errors import ConfigError, StoreError
from relay.models import TargetHealth, TargetState
from relay.settings import Settings
from relay.store import open_store

CHECK_TIMEOUT_S = 10.0


def run_checks(settings: Settings) -> Iterator[tuple[str, bool, str]]:
    """(name, passed, detail) for configuration, store and Convex reachability."""
    try:
        settings.require_ingest()
        yield "signing secrets", True, f"{len(settings.webhook_secrets)} configured"
    except ConfigError as exc:
        yield "signing secrets", False, str(exc)
    try:
        settings.require_delivery()
        yield "target", True, f"{settings.target} -> {settings.target_url}"
    except ConfigError as exc:
        yield "target", False, str(exc)
        return
    try:
        store = open_store(settings.database_url)
        store.migrate()
        counts = store.counts()
        health = store.target_health(settings.target_url) or TargetHealth(settings.target_url)
        store.close()
        yield "store", True, f"{store.url_for_display.split('@')[-1]} ({counts['pending']} pending)"
        yield "target health", health.state == TargetState.UP, describe_health(health)
    except (StoreError, ValueError) as exc:
        yield "store", False, str(exc)
    yield _reach_convex(settings)


def describe_health(health: TargetHealth, *, now_ms: int | None = None) -> str:
    """One line for people: the state, since when, why, and the last success."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)

    def ago(ms: int | None) -> str:
        return "never" if ms is None else f"{max(0, now_ms - ms) / 1000:.0f}s ago"

    if health.state == TargetState.UP:
        return f"up (last delivery {ago(health.last_success_ms)})"
    return (
        f"{health.state} since {ago(health.since_ms)}: {health.reason}; "
        f"{health.probe_count} probe(s), last delivery {ago(health.last_success_ms)}; "
        "held events go out by themselves once a probe is delivered"
    )


def _reach_convex(settings: Settings) -> tuple[str, bool, str]:
    try:
        if settings.target == "mutation":
            # A query of a function that cannot exist: the reply proves URL and key work
            # without running anything.
            reply = requests.post(
                f"{settings.convex_url}/api/query",
                json={"path": "_relayCheck:ping", "args": {}, "format": "json"},
                headers={"authorization": f"Convex {settings.convex_deploy_key}"},
                timeout=CHECK_TIMEOUT_S,
            )
            if reply.status_code in (401, 403):
                return "convex", False, f"HTTP {reply.status_code}: the deploy key was refused"
            if reply.status_code == 200:
                return "convex", True, "function API answers and accepts the deploy key"
            return "convex", False, f"unexpected HTTP {reply.status_code}"
        # An unsigned POST: a verifying HTTP action answers 4xx; a missing route answers 404.
        reply = requests.post(
            settings.target_url,
            data=b"{}",
            timeout=CHECK_TIMEOUT_S,
            headers={"content-type": "application/json"},
        )
        if reply.status_code == 404:
            return "convex", False, f"no HTTP action at {settings.target_url} (404)"
        answer = f"HTTP {reply.status_code} to an unsigned probe"
        return "convex", True, f"HTTP action answers ({answer})"
    except requests.RequestException as exc:
        return "convex", False, f"cannot reach Convex: {type(exc).__name__}"


def sample_envelope(event_type: str, now_ms: int) -> dict[str, object]:
    """A small Clerk-shaped event that is obviously a test."""
    uid = f"user_relaytest{secrets.token_hex(6)}"
    data: dict[str, object] = {
        "object": event_type.split(".")[0] if "." in event_type else "user",
        "id": uid,
        "first_name": "Relay",
        "last_name": "Test",
        "email_addresses": [
            {
                "id": "idn_relaytest",
                "object": "email_address",
                "email_address": "relay-test@example.com",
            }
        ],
        "primary_email_address_id": "idn_relaytest",
        "public_metadata": {},
        "created_at": now_ms,
        "updated_at": now_ms,
    }
    if event_type.endswith(".deleted"):
        data = {"object": data["object"], "id": uid, "deleted": True}
    return {
        "object": "event",
        "type": event_type,
        "timestamp": now_ms,
        "instance_id": "ins_relaytest",
        "data": data,
    }


def endpoint_url(url: str) -> str:
    """The webhook endpoint for what an operator typed: the relay's base URL (any path
    prefix kept), or the full endpoint URL they just pasted into Clerk's dashboard."""
    from urllib.parse import urlsplit, urlunsplit

    from relay.web.ingest import PATHS

    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if not any(path.endswith(endpoint) for endpoint in PATHS):
        path += "/webhooks/clerk"
    return urlunsplit(parts._replace(path=path))


def send_test_event(url: str, secret: str, event_type: str) -> tuple[int, str]:
    """Sign and POST a sample event to ``url`` (see :func:`endpoint_url`); (status code,
    response text)."""
    now = datetime.now(UTC)
    body = json.dumps(sample_envelope(event_type, int(time.time() * 1000)))
    msg_id = f"msg_relaytest{secrets.token_hex(8)}"
    headers = {
        "content-type": "application/json",
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, now, body),
    }
    reply = requests.post(
        endpoint_url(url),
        data=body.encode(),
        headers=headers,
        timeout=CHECK_TIMEOUT_S,
    )
    return reply.status_code, reply.text.strip()
