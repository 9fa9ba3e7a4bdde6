"""Factories for admin API and console tests: settings with a token, signed ingests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from harness.factories import SECRET, make_envelope, signed_headers
from relay.settings import Settings

TOKEN = "admin-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
DEPLOY_KEY = "prod:standin|c2VjcmV0LWRlcGxveS1rZXktdmFsdWU"


def admin_settings(
    tmp_path: Path, convex_site_url: str = "http://127.0.0.1:9", **overrides: Any
) -> Settings:
    """Settings with an admin token, a real SQLite file and an HTTP-action target."""
    base = Settings(
        webhook_secrets=(SECRET,),
        convex_site_url=convex_site_url,
        convex_deploy_key=DEPLOY_KEY,
        admin_token=TOKEN,
        database_url=f"sqlite:///{tmp_path / 'relay.db'}",
        retry_schedule_s=(0.1,),
        delivery_timeout_s=5.0,
    )
    return base.with_overrides(**overrides) if overrides else base


def ingest(
    client: FlaskClient, event_type: str = "user.updated", *, msg_id: str, **envelope_kw: Any
) -> str:
    """POST a correctly signed Clerk event to the relay; returns its id."""
    body = json.dumps(make_envelope(event_type, **envelope_kw))
    response = client.post(
        "/webhooks/clerk", data=body, headers=signed_headers(body, msg_id=msg_id)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return msg_id
