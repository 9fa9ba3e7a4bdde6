"""Prometheus metrics, correct under several gunicorn workers and a separate worker process.

Counters and histograms use prometheus-client's multiprocess mode when
``PROMETHEUS_MULTIPROC_DIR`` is set (``relay serve`` sets it for its children), so
``/metrics`` sums every process. Backlog gauges are not process state at all: they
are read from the store at scrape time, so every instance reports the same truth.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.errors import ConfigError
from relay.models import TargetHealth, TargetState
from relay.store import Store

EVENTS_RECEIVED = Counter(
    "relay_events_received_total",
    "Webhook requests by event type and outcome (accepted, duplicate, rejected).",
    ["type", "outcome"],
)
DELIVERIES = Counter(
    "relay_deliveries_total",
    "Delivery attempts by verdict (delivered, retry, failed) and final states set by the worker.",
    ["outcome"],
)
TARGET_PROBES = Counter(
    "relay_target_probes_total",
    "Probes sent to a target that was down or misconfigured.",
)
TARGET_TRANSITIONS = Counter(
    "relay_target_transitions_total",
    "Target health changes made by this process, by the state entered.",
    ["state"],
)
BODY_CONFLICTS = Counter(
    "relay_duplicate_body_conflicts_total",
    "Deliveries under an already stored svix-id whose body differed (the first is kept).",
)
ATTEMPT_SECONDS = Histogram(
    "relay_delivery_attempt_seconds",
    "Duration of one delivery attempt to Convex.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

#: Readiness fails this long after ingest last failed to store an event, unless an event
#: was stored since. It lapses on its own so that a load balancer that stops sending
#: traffic to an unready relay lets the next webhook find out whether the store is back.
INGEST_FAILING_HOLD_S = 30.0
INGEST_FAILED_AT = Gauge(
    "relay_ingest_commit_failed_at_seconds",
    "When ingest last answered 503 because the store could not commit (epoch seconds); "
    "0 once an event was stored after that.",
    # The newest write of any process wins: a failure in one gunicorn worker is seen by
    # /readyz in every worker, and a success anywhere clears it.
    multiprocess_mode="livemostrecent",
)


def _every_process(multiprocess_dir: str | None) -> CollectorRegistry | None:
    """Every process's counters in multiprocess mode (``multiprocess_dir``, by default
    ``PROMETHEUS_MULTIPROC_DIR``); None when this is a single process."""
    multiprocess_dir = multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not multiprocess_dir:
        return None
    from prometheus_client import multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    return reg


def ingest_failed_at_s(multiprocess_dir: str | None = None) -> float:
    """:data:`INGEST_FAILED_AT` as /metrics would show it (every process's newest value)."""
    reg = _every_process(multiprocess_dir)
    families = INGEST_FAILED_AT.collect() if reg is None else reg.collect()
    for family in families:
        for sample in family.samples:
            if sample.name == "relay_ingest_commit_failed_at_seconds":
                return float(sample.value)
    return 0.0


def worker_heartbeat_age_s(store: Store, now_s: float) -> float | None:
    """Seconds since a delivery worker last reported (None when none ever did): the
    gauge below, /readyz's worker check and the console's warning read this one number."""
    beat = store.last_heartbeat_ms()
    return None if beat is None else max(0.0, now_s - beat / 1000)


class StoreCollector(Collector):
    """Backlog gauges read from the store on each scrape."""

    def __init__(self, store: Store, backlog_warn_s: float = 900.0) -> None:
        self.store = store
        self.backlog_warn_s = backlog_warn_s

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        backlog = GaugeMetricFamily("relay_events", "Stored events by status.", labels=["status"])
        for status, n in counts.items():
            backlog.add_metric([status], n)
        yield backlog
        now_ms = time.time() * 1000
        oldest = self.store.oldest_pending_ms()
        yield GaugeMetricFamily(
            "relay_oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none).",
            value=0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000),
        )
        yield GaugeMetricFamily(
            "relay_backlog_warn_seconds",
            "RELAY_BACKLOG_WARN: the oldest pending age that should alert (see the rules).",
            value=self.backlog_warn_s,
        )
        yield from _target_gauges(self.store.targets(), now_ms)
        beat_age_s = worker_heartbeat_age_s(self.store, now_ms / 1000)
        yield GaugeMetricFamily(
            "relay_worker_heartbeat_age_seconds",
            "Seconds since a delivery worker last reported (-1 when none ever did).",
            value=-1.0 if beat_age_s is None else beat_age_s,
        )


def _target_gauges(targets: list[TargetHealth], now_ms: float) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "relay_target_state",
        "1 for the state each delivery target is in (up, down, misconfigured), else 0.",
        labels=["target", "state"],
    )
    since = GaugeMetricFamily(
        "relay_target_last_success_age_seconds",
        "Seconds since a delivery to the target last succeeded (-1 when none is recorded).",
        labels=["target"],
    )
    probes = GaugeMetricFamily(
        "relay_target_probes",
        "Probes sent since the target left the up state (0 while up).",
        labels=["target"],
    )
    for t in targets:
        for s in TargetState:
            state.add_metric([t.target, str(s)], 1.0 if t.state == s else 0.0)
        age = -1.0 if t.last_success_ms is None else max(0.0, (now_ms - t.last_success_ms) / 1000)
        since.add_metric([t.target], age)
        probes.add_metric([t.target], t.probe_count)
    yield from (state, since, probes)


def registry(
    store: Store, multiprocess_dir: str | None = None, *, backlog_warn_s: float = 900.0
) -> CollectorRegistry:
    """Every series /metrics shows: this process's counters (or, in multiprocess mode,
    every process's: ``multiprocess_dir``, by default ``PROMETHEUS_MULTIPROC_DIR``),
    plus the backlog gauges read from ``store``."""
    reg = _every_process(multiprocess_dir)
    if reg is None:
        reg = CollectorRegistry()
        reg.register(_ThisProcess())
    reg.register(StoreCollector(store, backlog_warn_s))
    return reg


class _ThisProcess(Collector):
    """The default registry's series (a single process: our counters are there)."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def render(store: Store, *, backlog_warn_s: float = 900.0) -> tuple[bytes, str]:
    """The /metrics body and content type."""
    return generate_latest(registry(store, backlog_warn_s=backlog_warn_s)), CONTENT_TYPE_LATEST


def serve_port(
    port: int,
    store: Store,
    multiprocess_dir: str | None = None,
    *,
    backlog_warn_s: float = 900.0,
) -> Callable[[], None]:
    """Serve :func:`registry` on its own port (``RELAY_METRICS_PORT``) from a thread of
    this process; returns the function that stops it.

    prometheus-client's own exposition server: it answers every path with the metrics
    and nothing else, so the port can be opened to a scraper without exposing ingest
    or the admin API.
    """
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(
            port, registry=registry(store, multiprocess_dir, backlog_warn_s=backlog_warn_s)
        )
    except OSError as exc:
        raise ConfigError("RELAY_METRICS_PORT", f"cannot listen on port {port}: {exc}") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
