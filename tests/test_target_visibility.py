"""What an operator sees of an outage, through a real ``relay serve``: /readyz detail,
/metrics gauges, ``relay status`` and ``relay check``, one log line per transition."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from harness.factories import FORWARD_SECRET
from harness.relay_process import RelayProcess, TrackingStandIn, relay_env, wait_until
from relay.check import sample_envelope

from .test_observability import metric

ALERT_RULES = Path(__file__).parent.parent / "deploy" / "prometheus" / "relay-alerts.yml"


def test_an_outage_is_visible_everywhere_and_ends_by_itself(tmp_path: Path) -> None:
    with TrackingStandIn(FORWARD_SECRET).running() as standin:
        standin.down()
        env = relay_env(
            tmp_path,
            CONVEX_SITE_URL=standin.url,
            RELAY_FORWARD_SECRET=FORWARD_SECRET,
            RELAY_PROBE_INTERVAL_MAX="300ms",
            RELAY_RETRY_SCHEDULE=",".join(["200ms"] * 40),
        )
        with RelayProcess(tmp_path, env) as relay:
            ids = []
            for i in range(8):
                envelope = sample_envelope("user.updated", int(time.time() * 1000) + i)
                envelope["data"]["id"] = f"user_vis{i}"  # type: ignore[index]
                response = relay.post_event(json.dumps(envelope).encode())
                assert response.status_code == 200
                ids.append(response.json()["id"])

            def target() -> dict[str, object]:
                detail: dict[str, object] = relay.get("/readyz").json()["target"]
                return detail

            def down_detail() -> dict[str, object] | None:
                t = target()
                return t if t["state"] == "down" else None

            down = wait_until(down_detail, 30, "down")
            assert down is not None  # wait_until returns only a truthy value
            assert "503" in str(down["reason"]) and down["since"]
            wait_until(lambda: target()["probes"], 10, "a probe")
            text = relay.get("/metrics").text
            url = f"{standin.url}/clerk-users-webhook"
            assert metric(text, "relay_target_state", target=url, state="down") == 1
            assert metric(text, "relay_target_state", target=url, state="up") == 0
            assert metric(text, "relay_target_probes", target=url) >= 1
            # Every series the shipped alert rules use is one the relay exports.
            for name in set(re.findall(r"relay_[a-z_]+", ALERT_RULES.read_text())):
                assert f"\n{name}" in text, name
            status = relay.cli("status", "--json")
            assert status.returncode == 1, status.stderr
            assert json.loads(status.stdout)["state"] == "down"
            check = relay.cli("check")
            assert "FAIL  target health: down since" in check.stdout

            standin.up()
            wait_until(lambda: target()["state"] == "up", 30, "recovery")
            wait_until(lambda: all(standin.delivery_count(i) == 1 for i in ids), 30, "drain")
            status = relay.cli("status", "--json")
            assert status.returncode == 0 and json.loads(status.stdout)["lastSuccessAt"]
            changes = [
                json.loads(line)
                for line in relay.log().splitlines()
                if "target_state_changed" in line
            ]
            assert [c["state"] for c in changes] == ["down", "up"]
