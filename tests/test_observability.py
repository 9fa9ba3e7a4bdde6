"""Metrics, readiness and logs of a real running ``relay serve`` (gunicorn + worker)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.factories import FORWARD_SECRET, SECRET, make_event, signed_headers
from harness.relay_process import RelayProcess, TrackingStandIn, free_port, relay_env, wait_until
from relay import metrics
from relay.check import sample_envelope
from relay.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

DEPLOY_KEY = "prod:observability|s3cr3t-deploy-key-value"
ADMIN_TOKEN = "admin-token-that-must-never-be-logged"
PRIVATE_MARKER = "private-email-never-logged@example.com"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return 0.0


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, standin: TrackingStandIn
) -> Iterator[RelayProcess]:
    workdir = tmp_path_factory.mktemp("observed")
    env = relay_env(
        workdir,
        CONVEX_SITE_URL=standin.url,
        RELAY_FORWARD_SECRET=FORWARD_SECRET,
        CONVEX_DEPLOY_KEY=DEPLOY_KEY,
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        WEB_CONCURRENCY="2",
    )
    with RelayProcess(workdir, env) as proc:
        yield proc


def _send(relay: RelayProcess, n: int, event_type: str = "user.created") -> list[str]:
    ids = []
    for i in range(n):
        envelope = sample_envelope(event_type, 1_700_000_000_000 + i)
        envelope["data"]["email_addresses"][0]["email_address"] = PRIVATE_MARKER  # type: ignore[index]
        body = json.dumps(envelope).encode()
        response = relay.post_event(body)
        assert response.status_code == 200
        ids.append(response.json()["id"])
    return ids


def test_metrics_sum_every_process(relay: RelayProcess, standin: TrackingStandIn) -> None:
    """Counters from both gunicorn workers and the delivery worker add up in /metrics."""
    before = relay.get("/metrics").text
    ids = _send(relay, 12)
    wait_until(lambda: all(standin.delivery_count(i) == 1 for i in ids), 30, "deliveries")

    def settled() -> str | None:
        text = relay.get("/metrics").text
        done = metric(text, "relay_deliveries_total", outcome="delivered") - metric(
            before, "relay_deliveries_total", outcome="delivered"
        )
        return text if done >= 12 else None

    text = wait_until(settled, 20, "delivery counters")
    assert text is not None
    received = metric(
        text, "relay_events_received_total", type="user.created", outcome="accepted"
    ) - metric(before, "relay_events_received_total", type="user.created", outcome="accepted")
    assert received == 12
    assert metric(text, "relay_delivery_attempt_seconds_count") >= 12
    assert metric(text, "relay_events", status="delivered") >= 12
    assert metric(text, "relay_events", status="pending") == 0
    assert metric(text, "relay_oldest_pending_age_seconds") == 0
    assert 0 <= metric(text, "relay_worker_heartbeat_age_seconds") < 30


def test_a_metrics_port_serves_metrics_and_takes_them_off_the_public_port(
    tmp_path: Path, standin: TrackingStandIn
) -> None:
    """RELAY_METRICS_PORT: every process's series there, a JSON 404 for /metrics on PORT,
    and nothing but metrics on the metrics port (a webhook sent there is not ingested)."""
    port = free_port()
    env = relay_env(
        tmp_path, CONVEX_SITE_URL=standin.url, RELAY_FORWARD_SECRET=FORWARD_SECRET,
        RELAY_METRICS_PORT=str(port), WEB_CONCURRENCY="2",
    )  # fmt: skip
    with RelayProcess(tmp_path, env) as relay:
        [event_id] = _send(relay, 1)
        wait_until(lambda: standin.delivery_count(event_id) == 1, 30, "the delivery")
        scrape = f"http://127.0.0.1:{port}/metrics"

        def delivered() -> str | None:
            text = requests.get(scrape, timeout=5).text
            return text if metric(text, "relay_deliveries_total", outcome="delivered") else None

        text = wait_until(delivered, 20, "the worker's counter on the metrics port")
        assert text is not None
        assert (
            metric(text, "relay_events_received_total", type="user.created", outcome="accepted")
            == 1
        )
        assert metric(text, "relay_events", status="delivered") == 1
        public = relay.get("/metrics")
        assert public.status_code == 404 and public.json()["error"] == "not_found"
        body = json.dumps(sample_envelope("user.created", 1_700_000_000_001)).encode()
        stray = requests.post(
            f"http://127.0.0.1:{port}/webhooks/clerk", data=body,
            headers=signed_headers(body, msg_id="msg_to_metrics_port"), timeout=5,
        )  # fmt: skip
        assert stray.status_code == 405  # the exposition server only answers GET
        assert relay.cli("show", "msg_to_metrics_port").returncode != 0
        assert relay.stop() == 0
    assert "serve_stopped" in relay.log()


def test_a_worker_alone_serves_its_metrics_on_the_metrics_port(
    tmp_path: Path, standin: TrackingStandIn
) -> None:
    """`relay worker` has no web server: RELAY_METRICS_PORT is how its counters get out."""
    port = free_port()
    env = relay_env(
        tmp_path, CONVEX_SITE_URL=standin.url, RELAY_FORWARD_SECRET=FORWARD_SECRET,
        RELAY_METRICS_PORT=str(port),
    )  # fmt: skip
    store = SQLiteStore(tmp_path / "relay.db")
    store.migrate()
    assert store.insert(make_event(event_id="msg_worker_metrics", entity_id="user_wm"))
    store.close()
    with RelayProcess(tmp_path, env, command=("worker",)) as worker:
        wait_until(lambda: standin.delivery_count("msg_worker_metrics") == 1, 30, "the delivery")
        text = wait_until(
            lambda: (
                t
                if metric(
                    t := requests.get(f"http://127.0.0.1:{port}/", timeout=5).text,
                    "relay_deliveries_total",
                    outcome="delivered",
                )
                == 1
                else None
            ),
            20,
            "the counter",
        )
        assert text is not None
        assert metric(text, "relay_events", status="delivered") == 1
        assert worker.stop() == 0


def test_rejections_are_counted(relay: RelayProcess) -> None:
    """A request that fails verification is counted as rejected with its status."""
    before = metric(
        relay.get("/metrics").text,
        "relay_events_received_total",
        type="unknown",
        outcome="rejected_401",
    )
    body = b'{"type":"user.created"}'
    response = relay.post(
        "/webhooks/clerk",
        body,
        {
            "svix-id": "msg_bad",
            "svix-timestamp": str(int(time.time())),
            "svix-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        },
    )
    assert response.status_code == 401
    after = metric(
        relay.get("/metrics").text,
        "relay_events_received_total",
        type="unknown",
        outcome="rejected_401",
    )
    assert after == before + 1


def test_readyz_reports_store_and_worker(relay: RelayProcess) -> None:
    """/readyz is 200 with every check ok while serve's worker runs."""
    body = wait_until(
        lambda: (r := relay.get("/readyz")).status_code == 200 and r.json(), 20, "readiness"
    )
    assert body  # wait_until returns only truthy values: the JSON reply
    assert body["checks"] == {"store": "ok", "worker": "ok", "ingest": "ok"}


def test_readyz_names_a_missing_worker(tmp_path: Path, standin: TrackingStandIn) -> None:
    """With no delivery worker (web only), /readyz is 503 and names the worker check."""
    env = relay_env(tmp_path, CONVEX_SITE_URL=standin.url)
    with RelayProcess(tmp_path, env, command=("serve", "--web-only")) as web:
        response = web.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["worker"]
    assert response.json()["checks"]["store"] == "ok"


def test_logs_are_json_lines_with_canonical_fields(
    relay: RelayProcess, standin: TrackingStandIn
) -> None:
    """Every log line is JSON; requests and attempts each get one canonical line."""
    [event_id] = _send(relay, 1, "user.updated")
    wait_until(lambda: standin.delivery_count(event_id) == 1, 20, "delivery")
    lines = wait_until(
        lambda: (
            [json.loads(x) for x in relay.log().splitlines() if event_id in x]
            if "delivery_attempted" in relay.log()
            else None
        ),
        20,
        "log lines",
    )
    assert lines is not None
    for raw in relay.log().splitlines():
        json.loads(raw)  # raises on any non-JSON line (gunicorn's own included)
    request = next(x for x in lines if x["event"] == "request_handled")
    assert request["svix_id"] == event_id and request["status"] == 200
    assert request["event_type"] == "user.updated" and "request_id" in request
    assert request["duration_ms"] >= 0
    attempt = wait_until(
        lambda: next(
            (
                json.loads(x)
                for x in relay.log().splitlines()
                if event_id in x and "delivery_attempted" in x
            ),
            None,
        ),
        20,
        "attempt line",
    )
    assert attempt is not None
    assert attempt["event_id"] == event_id and attempt["status"] == 200
    assert attempt["target"].endswith("/clerk-users-webhook")
    assert attempt["outcome"] == "delivered" and attempt["duration_ms"] >= 0


def test_each_gunicorn_worker_says_when_it_accepts(relay: RelayProcess) -> None:
    """One worker_ready line per booted worker, as JSON with the worker's pid."""

    def ready_pids() -> set[int] | None:
        lines = [json.loads(x) for x in relay.log().splitlines()]
        booting = [x["event"] for x in lines if x["event"].startswith("Booting worker")]
        booted = {int(event.rsplit(" ", 1)[1]) for event in booting}
        ready = {x["pid"] for x in lines if x["event"] == "worker_ready"}
        return ready if len(booted) == 2 and ready == booted else None

    pids = wait_until(ready_pids, 20, "worker_ready lines")
    assert pids is not None and len(pids) == 2


def test_secrets_and_payloads_never_reach_the_log(relay: RelayProcess) -> None:
    """No signing secret, deploy key, admin token or payload content is ever logged."""
    _send(relay, 2)
    log = relay.log()
    assert log  # the relay did log
    for secret in (
        SECRET,
        SECRET.removeprefix("whsec_"),
        FORWARD_SECRET,
        FORWARD_SECRET.removeprefix("whsec_"),
        DEPLOY_KEY,
        ADMIN_TOKEN,
    ):
        assert secret not in log
    assert PRIVATE_MARKER not in log


def test_serve_runs_delivery_below_ingest_priority(relay: RelayProcess) -> None:
    """relay serve's worker delivers at nice 19, so ingest wins the CPU in a burst; its
    main thread (claims) and its recorder (outcomes), which take the store's writer
    lock, stay at normal priority."""
    started = next(json.loads(x) for x in relay.log().splitlines() if "serve_started" in x)
    worker = started["worker_pid"]
    _send(relay, 1)  # delivery threads start with the first delivery

    def nice(task: Path) -> int:
        return int(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[16])

    def threads() -> dict[int, int]:
        return {int(t.name): nice(t) for t in Path(f"/proc/{worker}/task").iterdir()}

    wait_until(lambda: 19 in threads().values(), 10, "a nice 19 delivery thread")
    niceness = threads()
    assert niceness[worker] == 0  # the main thread: claims, heartbeats
    assert list(niceness.values()).count(0) >= 2  # ... and the recorder
    assert nice(Path(f"/proc/{started['web_pid']}")) == 0
    assert nice(Path(f"/proc/{relay.pid}")) == 0  # the committer's process


def test_worker_heartbeat_age(tmp_path: Path) -> None:
    """None before any worker reported; then seconds since the newest beat, never below 0."""
    now_s = 1_700_000_000.0
    store = SQLiteStore(tmp_path / "relay.db")
    store.migrate()
    assert metrics.worker_heartbeat_age_s(store, now_s) is None
    store.heartbeat("w1", now_ms=int(now_s * 1000) - 2500)
    assert metrics.worker_heartbeat_age_s(store, now_s) == 2.5
    assert metrics.worker_heartbeat_age_s(store, now_s - 10) == 0.0
    store.close()
