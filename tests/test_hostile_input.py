"""A standing hostile-input suite: signed webhooks built to break the relay, over HTTP.

hypothesis generates correctly signed bodies with extreme numbers, deep nesting, odd
unicode (lone surrogates, NUL, right-to-left marks), wrong types in every field the
relay reads, and long or odd ``svix-id`` values, and sends them to a real ``relay
serve`` (with its delivery worker, on the normalized HTTP-action target so every event
also goes through normalization) on each backend. It holds that:

* no answer is a 5xx, except 503 when the store cannot commit;
* every accepted event can be shown, listed and replayed through the admin API and
  the CLI;
* no process or thread died (``relay serve`` still runs, no crash lines) and every log
  line is JSON.

``make test`` runs a bounded number of examples per backend (:data:`EXAMPLES`); set
``RELAY_HOSTILE_EXAMPLES`` for a longer run, e.g.
``RELAY_HOSTILE_EXAMPLES=2000 scripts/with-postgres.sh .venv/bin/python -m pytest
tests/test_hostile_input.py``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.factories import FORWARD_SECRET, signed_headers
from harness.relay_process import RelayProcess, TrackingStandIn, relay_env
from tests.support.adminkit import BEARER, TOKEN

from .test_e2e_backends import BACKENDS, database

pytestmark = pytest.mark.e2e

#: Examples per backend in the default run: enough to cover every strategy below a few
#: times, bounded so the suite adds well under two minutes on a 2-core machine.
EXAMPLES = int(os.environ.get("RELAY_HOSTILE_EXAMPLES", "60"))

# -- what hypothesis builds ---------------------------------------------------------------

#: Text with what breaks naive code: lone surrogates, NUL, bidi controls, non-BMP, quotes.
ODD_CHARS = st.sampled_from(
    ["\ud800", "\udfff", "\x00", "\u202e", "\u200f", "\ufeff", "\U0001f600", '"', "\\", "/", "é"]
)
odd_text = st.lists(st.one_of(ODD_CHARS, st.characters()), max_size=20).map("".join)

#: Values at the edges of 53-bit, 64-bit and float ranges (and one real timestamp).
BOUNDARY_NUMBERS = [0, -1, 2**53, 2**63 - 1, 2**63, 2**64, 10**20, 1795752300000]
BOUNDARY_FLOATS = [1e300, -1e300, 5e-324, 1.5e308, 1.7e308]
extreme_numbers = st.one_of(
    st.sampled_from(BOUNDARY_NUMBERS),  # listed first: hypothesis shrinks towards them
    st.sampled_from(BOUNDARY_FLOATS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), extreme_numbers, odd_text)
#: Anything JSON, with the odd values inside it.
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int) -> Any:
    """``depth`` levels of alternating arrays and objects."""
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


#: Around the relay's nesting cap (128 with the envelope's levels) and far beyond it.
deep_values = st.sampled_from([8, 63, 64, 65, 124, 125, 126, 127, 600]).map(nested)
wrong_or_odd = st.one_of(scalars, json_values, deep_values)

#: The fields the relay reads, each either plausible or hostile.
envelopes = st.fixed_dictionaries(
    {
        # Mostly a real type, so that most examples get past the type check and are stored.
        "type": st.one_of(*[st.sampled_from(["user.updated", "user.deleted"])] * 3, odd_text),
        "timestamp": st.one_of(extreme_numbers, wrong_or_odd),
        "instance_id": st.one_of(st.just("ins_x"), wrong_or_odd),
        "data": st.one_of(
            st.fixed_dictionaries(
                {
                    "object": st.one_of(st.just("user"), wrong_or_odd),
                    "id": st.one_of(st.just("user_h"), odd_text, wrong_or_odd),
                    "updated_at": st.one_of(extreme_numbers, extreme_numbers, wrong_or_odd),
                },
                optional={
                    "first_name": odd_text,
                    "public_metadata": json_values,
                    "private_metadata": wrong_or_odd,
                },
            ),
            wrong_or_odd,
        ),
    },
    optional={"object": st.just("event"), "extra": wrong_or_odd},
)
#: svix-ids: headers carry latin-1 text; the relay takes printable ids up to 255.
svix_ids = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), min_size=1, max_size=300
).map(lambda s: "msg_" + s)


# -- one relay per backend, shared by the module ------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def hostile_relay(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RelayProcess, list[str]]]:
    """``relay serve`` with admin API and worker; yields it and the ids it accepted, and
    after the module checks the whole run (process alive, logs JSON, CLI works)."""
    workdir = tmp_path_factory.mktemp(f"hostile-{backend}")
    accepted: list[str] = []
    with TrackingStandIn(FORWARD_SECRET).running() as convex, database(backend, workdir) as url:
        env = relay_env(
            workdir,
            RELAY_DATABASE_URL=url,
            CONVEX_SITE_URL=convex.url,
            RELAY_FORWARD_SECRET=FORWARD_SECRET,
            RELAY_PAYLOAD="normalized",
            RELAY_ADMIN_TOKEN=TOKEN,
            RELAY_DELIVERY_TIMEOUT="2s",
        )
        with RelayProcess(workdir, env) as relay:
            yield relay, accepted
            _check_the_whole_run(relay, accepted)


def _check_the_whole_run(relay: RelayProcess, accepted: list[str]) -> None:
    assert relay.proc is not None and relay.proc.poll() is None, relay.log()[-3000:]
    if accepted:
        listed = relay.cli("events", "--json", "--limit", "1000")
        assert listed.returncode == 0, listed.stderr
        assert set(accepted) <= {e["id"] for e in json.loads(listed.stdout)}
        for event_id in accepted[:5]:  # each CLI call starts Python: a sample
            shown = relay.cli("show", event_id, "--json")
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["id"] == event_id
        replayed = relay.cli("replay", *accepted[:5], "--force")
        assert replayed.returncode in (0, 1), replayed.stderr  # 1: some are still pending
        assert "Traceback" not in replayed.stderr
    assert relay.stop() == 0
    lines = relay.log().splitlines()
    for line in lines:
        json.loads(line)  # every line is JSON
    died = {"request_crashed", "delivery_crashed", "committer_died", "committer_error"}
    assert not [line for line in lines if json.loads(line).get("event") in died]


_unique = itertools.count()


# -- the property ----------------------------------------------------------------------------


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(envelope=envelopes, msg_id=svix_ids)
def _hostile_webhook(
    relay: RelayProcess, accepted: list[str], envelope: dict[str, Any], msg_id: str
) -> None:
    msg_id = f"{msg_id}~{next(_unique)}"  # hypothesis repeats small ids: keep them new
    body = json.dumps(envelope).encode()  # ensure_ascii: lone surrogates become \ud800
    try:
        headers = signed_headers(body, msg_id=msg_id)
        response = relay.post("/webhooks/clerk", body, headers)
    except (UnicodeEncodeError, requests.exceptions.InvalidHeader):
        return  # the client cannot send such a header at all
    assert response.status_code < 500 or response.status_code == 503, response.text
    reply = response.json()  # every answer is JSON
    if response.status_code != 200 or reply["status"] != "accepted":
        assert response.status_code != 200 or reply["status"] == "duplicate"
        return
    accepted.append(msg_id)
    path = quote(msg_id, safe="")
    shown = requests.get(f"{relay.url}/admin/events/{path}", headers=BEARER, timeout=10)
    assert shown.status_code == 200, shown.text
    assert shown.json()["id"] == msg_id
    listed = requests.get(
        f"{relay.url}/admin/events", params={"limit": 5}, headers=BEARER, timeout=10
    )
    assert listed.status_code == 200 and msg_id in {e["id"] for e in listed.json()["events"]}
    replayed = requests.post(
        f"{relay.url}/admin/events/{path}/replay", json={"force": True}, headers=BEARER, timeout=10
    )
    assert replayed.status_code in (200, 409), replayed.text  # 409: still pending


def test_hostile_signed_webhooks_never_break_the_relay(
    hostile_relay: tuple[RelayProcess, list[str]],
) -> None:
    """Signed hostile bodies get 2xx/4xx (or 503), every accepted one is viewable,
    listable and replayable, and the relay survives all of them (checked by the fixture)."""
    relay, accepted = hostile_relay
    _hostile_webhook(relay, accepted)
    # The strategies put plausible fields in often enough that most events are stored.
    assert len(accepted) >= EXAMPLES // 5, len(accepted)
