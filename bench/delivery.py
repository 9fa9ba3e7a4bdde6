"""Delivery benchmark: SQLite vs PostgreSQL, ingest and delivery throughput.

    scripts/with-postgres.sh .venv/bin/python bench/delivery.py   # ~5 min

Without ``RELAY_TEST_POSTGRES_URL`` (that is, not under ``with-postgres.sh``) only the
SQLite rows are measured. Writes ``bench/results/delivery.md`` and prints it.

1. Ingest: ``wrk`` (-t1 -c16, 10 s) POSTs pre-signed Clerk webhooks, each with its own
   svix-id (``bench/ingest.py``'s generator and Lua script), to one ``relay serve``
   (gunicorn + one worker, delivering meanwhile) on each backend.
2. Delivery: N events are inserted straight into the store (each a different user,
   so per-object ordering never holds anything back) as ``failed``, 1 or 3 ``relay
   worker`` processes (``RELAY_CONCURRENCY`` 4 each) are started, then one replay
   makes all N due at once; they drain into a zero-latency loopback Convex
   (``bench/ingest.py``'s stand-in, in its own process). The rate is N over the time
   from the replay to the last arrival at the stand-in.
   The drains run twice: against a zero-latency stand-in (the relay's own cost is
   the limit) and against one answering after :data:`CONVEX_LATENCY_MS` (a Convex
   deployment across a network: the attempts' wait is the limit, and more workers
   add more attempts in flight). The report gives the ratios the issue asks about:
   PostgreSQL / SQLite with one worker, and three PostgreSQL workers / one. Each set of
   drains runs :data:`DRAIN_ROUNDS` times, interleaved (SQLite and PostgreSQL, one and
   three workers, then again), and the ratios are taken within each round: on a shared
   2-CPU VM one drain's rate moves by a third from run to run, and interleaving puts
   both sides of a ratio under the same weather. The report gives their median and range.
3. The stand-in's own ceiling (``wrk`` straight at it, 12 connections like 3 workers x
   4), so a delivery rate near it says the stand-in, not the relay, is the limit.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import ingest  # noqa: E402 - bench/ingest.py: presign, run_wrk, the stand-in
from ingest import SECRET, SEPARATOR, ensure_wrk, presign, run_wrk  # noqa: E402

from harness.relay_process import RelayProcess, wait_until  # noqa: E402
from relay.models import EventFilter, NewEvent, Status  # noqa: E402
from relay.store import open_store  # noqa: E402

#: Events drained per delivery run.
DRAIN_EVENTS = 3000
#: Interleaved rounds of every drain (``BENCH_DRAIN_ROUNDS`` overrides).
DRAIN_ROUNDS = int(os.environ.get("BENCH_DRAIN_ROUNDS", "3"))
WORKER_COUNTS = (1, 3)
#: The stand-in's answer time in the second set of drains (a Convex mutation's round
#: trip from a nearby region; Convex's own p50 is a few ms more).
CONVEX_LATENCY_MS = 20.0
#: More than the relay ingests in one wrk run, so no request repeats a svix-id.
PRESIGNED = 60_000
CEILING_SECONDS = 5
CEILING_CONNECTIONS = 12
DRAIN_TIMEOUT_S = 120.0
PG_VARIABLE = "RELAY_TEST_POSTGRES_URL"


@dataclass
class Row:
    backend: str
    what: str
    rate: float
    detail: str
    #: For drains: how many workers, the stand-in's answer time and the round (the
    #: ratios' keys).
    drain: tuple[int, float, int] | None = None


# -- databases -------------------------------------------------------------------------------


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh empty database: a SQLite file, or a new schema on the test server."""
    if backend == "sqlite":
        workdir.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{workdir / 'relay.db'}"
        return
    from harness.postgres_server import fresh_schema

    with fresh_schema() as url:
        yield url


def relay_env(db_url: str, convex_url: str) -> dict[str, str]:
    return {
        "CLERK_WEBHOOK_SECRET": SECRET,
        "CONVEX_SITE_URL": convex_url,
        "RELAY_DATABASE_URL": db_url,
        "LOG_FORMAT": "json",  # one line per request and attempt, to a file, as deployed
    }


# -- 1. ingest -------------------------------------------------------------------------------


def measure_ingest(backend: str, tmp: Path, convex: str, requests_file: Path) -> Row:
    workdir = tmp / f"ingest-{backend}"
    with database(backend, workdir) as url:
        workdir.mkdir(parents=True, exist_ok=True)
        with RelayProcess(workdir, relay_env(url, convex)) as relay:
            # 16 connections, as in every delivery report so far (comparable numbers).
            stats = run_wrk(relay.url, requests_file, ingest.FEW_CONNECTIONS)
            relay.stop()
    # (wrk's done() runs in a Lua state that never loaded the file, so "loaded" is 0 there.)
    wrapped = " (wrapped: duplicates sent)" if stats["requests"] > PRESIGNED else ""
    return Row(
        backend,
        f"ingest, relay serve, wrk -c{ingest.FEW_CONNECTIONS}",
        stats["rps"],
        f"p50 {stats['p50_us'] / 1000:.1f} ms, p99 {stats['p99_us'] / 1000:.1f} ms, "
        f"non-2xx {stats['non2xx']}, socket errors {stats['socket_errors']}{wrapped}",
    )


# -- 2. delivery -----------------------------------------------------------------------------


def parked_events(n: int, tag: str) -> list[NewEvent]:
    """``n`` user.updated events of different users, stored as failed until replayed."""
    at_ms = int(time.time() * 1000)
    events = []
    for i in range(n):
        envelope = {
            "object": "event",
            "type": "user.updated",
            "timestamp": at_ms,
            "instance_id": "ins_bench",
            "data": {"object": "user", "id": f"user_{tag}_{i:06d}", "first_name": "Bench",
                     "updated_at": at_ms, "public_metadata": {}},
        }  # fmt: skip
        body = json.dumps(envelope, separators=(",", ":")).encode()
        event_id = f"msg_{tag}_{i:06d}"
        events.append(
            NewEvent.from_envelope(
                event_id, body, envelope, received_at_ms=at_ms, status=Status.FAILED
            )
        )
    return events


def arrivals(convex: str) -> dict[str, float]:
    got: dict[str, float] = requests.get(f"{convex}/arrivals", timeout=30).json()
    return got


def measure_drain(
    backend: str, workers: int, tmp: Path, convex: str, latency_ms: float = 0.0, round_: int = 0
) -> Row:
    """Insert DRAIN_EVENTS as ``failed`` (so nobody takes them yet), start the workers,
    then make them all due at once with the store's replay verb and time the drain."""
    tag = f"{backend}{workers}w{latency_ms:.0f}ms{round_}"
    events = parked_events(DRAIN_EVENTS, tag)
    ids = {e.id for e in events}
    workdir = tmp / f"drain-{tag}"
    with database(backend, workdir) as url:
        workdir.mkdir(parents=True, exist_ok=True)
        store = open_store(url)
        store.migrate()
        inserted_at = time.monotonic()
        for e in events:
            store.insert(e)
        insert_rate = len(events) / (time.monotonic() - inserted_at)
        procs = [
            RelayProcess(workdir, relay_env(url, convex), command=("worker",))
            for _ in range(workers)
        ]
        with ExitStack() as stack, ThreadPoolExecutor(workers) as pool:
            for p in procs:
                stack.callback(p.__exit__, None, None, None)
            list(pool.map(RelayProcess.start, procs))
            released_at = time.time()
            released = store.replay(EventFilter(statuses=(Status.FAILED,)), now_ms=now_ms())
            assert len(released) == len(events)

            def drained() -> bool:
                return store.counts()["delivered"] == len(events)

            wait_until(drained, DRAIN_TIMEOUT_S, f"{len(events)} deliveries")
            for p in procs:
                p.stop()
        store.close()
    times = [t for i, t in arrivals(convex).items() if i in ids]
    assert len(times) == len(events)
    first_s, span_s = min(times) - released_at, max(times) - released_at
    return Row(
        backend,
        f"delivery, {workers} x relay worker (concurrency 4), Convex answers in "
        f"{latency_ms:.0f} ms",
        len(events) / span_s,
        f"round {round_ + 1}: {len(events)} pre-inserted events drained in {span_s:.1f} s, "
        f"first after {first_s * 1000:.0f} ms (direct store.insert: {insert_rate:.0f}/s)",
        (workers, latency_ms, round_),
    )


def now_ms() -> int:
    return int(time.time() * 1000)


# -- 3. the stand-in's ceiling -----------------------------------------------------------------


def measure_standin(convex: str, tmp: Path) -> Row:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.body = "{}"\n'
        'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["svix-id"] = "ceiling"\n'
    )
    result = subprocess.run(
        ["wrk", "-t1", f"-c{CEILING_CONNECTIONS}", f"-d{CEILING_SECONDS}s", "-s", str(script),
         f"{convex}/clerk-users-webhook"],
        capture_output=True, text=True, check=True, timeout=CEILING_SECONDS + 30,
    )  # fmt: skip
    line = next(ln for ln in result.stdout.splitlines() if "Requests/sec" in ln)
    return Row(
        "-",
        f"stand-in ceiling, wrk -c{CEILING_CONNECTIONS} straight at it",
        float(line.split()[-1]),
        "the Python loopback Convex alone",
    )


# -- report ------------------------------------------------------------------------------------


def render(rows: list[Row], elapsed: float, load: float, skipped: str | None) -> str:
    lines = [
        "# Delivery benchmark (bench/delivery.py)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs (load average "
        f"{load:.1f} at start; everything, PostgreSQL included, shares them). PostgreSQL is "
        f"the throwaway server of scripts/with-postgres.sh (fsync off); SQLite is WAL + "
        f"synchronous=FULL. Took {elapsed:.0f} s.",
        "",
        "| backend | measure | events/s | detail |",
        "| --- | --- | --- | --- |",
        *(f"| {r.backend} | {r.what} | {r.rate:.0f} | {r.detail} |" for r in rows),
        "",
    ]
    if skipped:
        lines += [f"PostgreSQL not measured: {skipped}.", ""]
    lines += ratios(rows)
    return "\n".join(lines)


def ratios(rows: list[Row]) -> list[str]:
    """The issue's two ratios per stand-in latency, each taken within a round: the
    median over the rounds and their range."""
    rate = {(r.backend, *r.drain): r.rate for r in rows if r.drain is not None}
    out = ["| Convex answers in | PostgreSQL / SQLite, 1 worker | 3 PostgreSQL workers / 1 |",
           "| --- | ---: | ---: |"]  # fmt: skip
    for latency in (0.0, CONVEX_LATENCY_MS):
        vs_sqlite, scale = [], []
        for round_ in range(DRAIN_ROUNDS):
            sqlite1 = rate.get(("sqlite", 1, latency, round_))
            pg1 = rate.get(("postgres", 1, latency, round_))
            pg3 = rate.get(("postgres", 3, latency, round_))
            if sqlite1 and pg1 and pg3:
                vs_sqlite.append(pg1 / sqlite1)
                scale.append(pg3 / pg1)
        if vs_sqlite:
            out.append(f"| {latency:.0f} ms | {_spread(vs_sqlite)} | {_spread(scale)} |")
    return [*out, ""] if len(out) > 2 else []


def _spread(values: list[float]) -> str:
    """``median (min-max, n rounds)``."""
    return (
        f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f},"
        f" {len(values)} rounds)"
    )


def main() -> int:
    ensure_wrk()
    started = time.time()
    load = os.getloadavg()[0]
    backends = ["sqlite"]
    skipped = None
    if os.environ.get(PG_VARIABLE):
        backends.append("postgres")
    else:
        skipped = f"{PG_VARIABLE} unset (run under scripts/with-postgres.sh)"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmpdir, ingest.standin() as convex:
        tmp = Path(tmpdir)
        requests_file = tmp / "requests.txt"
        batch = presign(PRESIGNED, "dlv")
        requests_file.write_bytes(b"".join(s.raw + SEPARATOR for s in batch))
        for backend in backends:
            rows.append(measure_ingest(backend, tmp, convex, requests_file))
            print(f"{rows[-1].backend}: {rows[-1].what}: {rows[-1].rate:.0f}/s", flush=True)
        rows.append(measure_standin(convex, tmp))
    for latency_ms in (0.0, CONVEX_LATENCY_MS):
        with (
            tempfile.TemporaryDirectory(prefix="relay-bench-") as tmpdir,
            ingest.standin(latency_ms) as convex,
        ):
            for round_ in range(DRAIN_ROUNDS):
                for backend in backends:
                    for workers in WORKER_COUNTS:
                        rows.append(
                            measure_drain(
                                backend, workers, Path(tmpdir), convex, latency_ms, round_
                            )
                        )
                        print(
                            f"{rows[-1].backend}: {rows[-1].what}: {rows[-1].rate:.0f}/s",
                            flush=True,
                        )
    table = render(rows, time.time() - started, load, skipped)
    out = BENCH / "results" / "delivery.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
