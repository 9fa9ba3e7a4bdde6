"""Whatever a client sends, ingest answers a 4xx JSON error or 200, never a 500."""

from __future__ import annotations

import json
import time

from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.factories import signed_headers

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _answer(app: Flask, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    response = app.test_client().post("/webhooks/clerk", data=body, headers=headers)
    payload = response.get_json(silent=True)
    assert isinstance(payload, dict), response.data[:200]
    assert "Traceback" not in response.get_data(as_text=True)
    return response.status_code, payload


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=512), svix_id=HEADER_TEXT, ts=HEADER_TEXT, sig=HEADER_TEXT)
def test_garbage_headers_and_bodies_are_4xx(
    app: Flask, body: bytes, svix_id: str, ts: str, sig: str
) -> None:
    """Random headers and bytes are refused with 400 or 401 and a JSON error."""
    status, payload = _answer(
        app, body, {"svix-id": svix_id, "svix-timestamp": ts, "svix-signature": sig}
    )
    assert status in (400, 401)
    assert set(payload) == {"error", "detail"}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=JSON_VALUES)
def test_correctly_signed_odd_json_is_200_or_400(app: Flask, value: object) -> None:
    """Any signed JSON is either an accepted event (object with string type) or a 400."""
    body = json.dumps(value).encode()
    status, payload = _answer(app, body, signed_headers(body))
    is_event = isinstance(value, dict) and isinstance(value.get("type"), str) and value["type"]
    if is_event:
        assert status == 200 and payload["status"] in ("accepted", "duplicate")
    else:
        assert status == 400 and payload["error"] == "bad_body"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=JSON_VALUES, event_type=st.text(min_size=1, max_size=40))
def test_any_signed_event_shape_is_accepted(app: Flask, data: object, event_type: str) -> None:
    """An envelope with any ``data`` and any type string is stored, whatever its shape."""
    body = json.dumps({"type": event_type, "data": data, "timestamp": time.time()}).encode()
    status, payload = _answer(app, body, signed_headers(body))
    assert status == 200 and payload["status"] == "accepted"
