"""Backlog benchmark (issue 15): what a big pending backlog costs, per size and backend.

    .venv/bin/python bench/backlog.py                                  # SQLite only
    scripts/with-postgres.sh .venv/bin/python bench/backlog.py         # both backends
    .venv/bin/python bench/backlog.py --sizes 10k,100k --window 20     # a quicker subset

Stores of 10 k / 100 k / 1 M pending events are built in the backlog shape of
``harness/backlog.py`` (N/10 users; per user a head waiting on its backoff and nine
followers parked behind it) with direct SQL. Then, per size, in one run:

a. ``claim()`` latency in this process: one that finds nothing claimable (median of
   50), and one that leases 64 heads made due (median of 15);
b. ingest: ``relay serve --web-only`` on the backlog store, ``wrk`` replaying
   ``bench/ingest.py``'s pre-signed unique webhooks, against the same on a fresh
   empty store right before it (``--pairs`` such pairs, each under the same load);
c. drain once Convex is back: every head made due now, one real ``relay worker``
   delivering to ``bench/ingest.py``'s zero-latency stand-in; events of the backlog
   that arrive during a fixed window, per second, against the same on a store in the
   same shape holding about one window's worth of events;
d. ``GET /metrics`` latency on that server (median of 30).

Goals (issue 15): ingest with a 1 M backlog >= 0.9x empty; drain of 1 M >= 0.8x the
small store's rate; claim latency at 1 M the same as at 10 k within noise.
Results go to ``bench/results/backlog-<date>.md`` and stdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import ingest  # noqa: E402 - bench/ingest.py: presign, run_wrk, the stand-in
from ingest import SECRET, SEPARATOR, ensure_wrk, presign, run_wrk, wait_for_workers  # noqa: E402

from harness.backlog import BACKOFF_MS, Backlog, fill_postgres, fill_sqlite  # noqa: E402
from harness.relay_process import RelayProcess  # noqa: E402
from relay.store import Store, open_store  # noqa: E402

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
PER_OBJECT = 10
EMPTY_CLAIMS = 50
FULL_CLAIMS = 15
CLAIM_LIMIT = 64
METRICS_GETS = 30
#: Drain rate is counted from this long after the worker started (its first claims and
#: connections are start-up, the same for every store).
DRAIN_WARMUP_S = 2.0
#: The small store of the drain baseline holds window x this many events a second: a
#: bit more than the worker delivers, so it does not run dry inside the window.
BASELINE_RATE = {"sqlite": 1500, "postgres": 600}
#: Webhooks per pair: more than one wrk run sends (so none is a duplicate).
PRESIGNED = 25_000
PG_VARIABLE = "RELAY_TEST_POSTGRES_URL"


@dataclass
class SizeResult:
    label: str
    events: int
    build_s: float = 0.0
    claim_empty_ms: list[float] = field(default_factory=list)
    claim_full_ms: list[float] = field(default_factory=list)
    #: wrk runs on the backlog store, one per pair.
    ingest: list[dict[str, Any]] = field(default_factory=list)
    #: The same wrk runs on a fresh empty store, each right before its backlog run.
    empty_ingest: list[dict[str, Any]] = field(default_factory=list)
    metrics_ms: list[float] = field(default_factory=list)
    drain_rate: float = 0.0
    drain_first_s: float | None = None
    drained: int = 0


def now_ms() -> int:
    return int(time.time() * 1000)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))] if values else float("nan")


# -- stores ------------------------------------------------------------------------------------


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh, migrated, empty database: a SQLite file or a new PostgreSQL schema."""
    workdir.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'relay.db'}"
        _migrate(url)
        yield url
        return
    from harness.postgres_server import fresh_schema

    with fresh_schema() as url:
        _migrate(url)
        yield url


def _migrate(url: str) -> None:
    store = open_store(url)
    store.migrate()
    store.close()


def build(backend: str, url: str, shape: Backlog) -> float:
    """Fill the backlog in; seconds taken."""
    started = time.monotonic()
    if backend == "sqlite":
        fill_sqlite(url.removeprefix("sqlite:///"), shape)
    else:
        fill_postgres(url, shape)
    return time.monotonic() - started


@contextmanager
def raw_connection(backend: str, url: str) -> Iterator[tuple[Any, str]]:
    """A plain connection for setup statements (not measured), with its placeholder."""
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
        try:
            yield conn, "?"
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        yield pg, "%s"


def set_due(backend: str, url: str, seqs: list[int], at_ms: int) -> None:
    """These events due at ``at_ms``, unleased (setup for a measurement)."""
    with raw_connection(backend, url) as (conn, ph):
        for start in range(0, len(seqs), 5000):
            chunk = seqs[start : start + 5000]
            conn.execute(
                f"UPDATE events SET next_attempt_at = {ph}, lease_owner = NULL,"
                f" lease_expires_at = NULL WHERE seq IN ({', '.join([ph] * len(chunk))})",
                (at_ms, *chunk),
            )


def heads_due_now(backend: str, url: str, shape: Backlog, at_ms: int) -> None:
    """Convex is back: every head's backoff ends now; what ingest added is set aside
    (marked delivered) so the worker drains the backlog only."""
    with raw_connection(backend, url) as (conn, ph):
        conn.execute(
            f"UPDATE events SET status = 'delivered', next_attempt_at = NULL"
            f" WHERE seq > {ph} AND status = 'pending'",
            (shape.max_seq,),
        )
    set_due(backend, url, shape.heads, at_ms)


# -- measurements ------------------------------------------------------------------------------


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return (time.perf_counter() - started) * 1000, value


def measure_claims(backend: str, url: str, shape: Backlog, result: SizeResult) -> None:
    """(a) claim latency: nothing claimable, then 64 due heads per claim."""
    store: Store = open_store(url, sync_commits=False)  # as the worker opens it
    try:
        at = now_ms()
        for _ in range(EMPTY_CLAIMS):
            ms, got = timed(lambda: store.claim("bench", now_ms=at, lease_ms=30_000, limit=64))
            assert got == [], f"{len(got)} claimable in a store where nothing is due"
            result.claim_empty_ms.append(ms)
        step = max(1, shape.objects // (FULL_CLAIMS * CLAIM_LIMIT))
        heads = [shape.head_seq(o) for o in range(0, shape.objects, step)]
        heads = heads[: FULL_CLAIMS * CLAIM_LIMIT]
        set_due(backend, url, heads, at - 1000)
        for _ in range(len(heads) // CLAIM_LIMIT):
            ms, got = timed(
                lambda: store.claim("bench", now_ms=at, lease_ms=30_000, limit=CLAIM_LIMIT)
            )
            assert len(got) == CLAIM_LIMIT, f"claimed {len(got)} of {CLAIM_LIMIT} due heads"
            result.claim_full_ms.append(ms)
        set_due(backend, url, heads, at + BACKOFF_MS)  # back to waiting, unleased
    finally:
        store.close()


def relay_env(url: str, convex: str) -> dict[str, str]:
    return {
        "CLERK_WEBHOOK_SECRET": SECRET,
        "CONVEX_SITE_URL": convex,
        "RELAY_DATABASE_URL": url,
        "LOG_FORMAT": "json",
    }


def measure_serve(
    url: str, convex: str, workdir: Path, requests_file: Path, metrics_ms: list[float] | None
) -> dict[str, Any]:
    """(d) GET /metrics latency (into ``metrics_ms``, if given), then (b) ingest
    throughput (wrk's stats), on relay serve --web-only."""
    with RelayProcess(workdir, relay_env(url, convex), ("serve", "--web-only")) as relay:
        wait_for_workers(relay.log)
        if metrics_ms is not None:
            session = requests.Session()
            for _ in range(METRICS_GETS):
                ms, reply = timed(lambda: session.get(f"{relay.url}/metrics", timeout=60))
                assert reply.status_code == 200, reply.text[:200]
                metrics_ms.append(ms)
            session.close()
        stats = run_wrk(relay.url, requests_file, ingest.WRK_CONNECTIONS)
        relay.stop()
    return stats


def arrived_since(convex: str, prefix: str, since: float) -> list[float]:
    """Arrival times (epoch s) at the stand-in of svix-ids with ``prefix``, after ``since``."""
    got: dict[str, float] = requests.get(f"{convex}/arrivals", timeout=60).json()
    return sorted(t for i, t in got.items() if i.startswith(prefix) and t >= since)


def measure_drain(
    backend: str, url: str, convex: str, workdir: Path, shape: Backlog, window_s: float
) -> tuple[float, float | None, int]:
    """(c) events of the backlog delivered per second during the window, the first
    delivery's delay after the worker was launched (process start-up included), and
    the count."""
    heads_due_now(backend, url, shape, now_ms())
    launched = time.time()
    with RelayProcess(workdir, relay_env(url, convex), ("worker",)) as worker:
        started = time.time()  # it logged worker_started
        time.sleep(DRAIN_WARMUP_S + window_s)
        worker.stop()
    times = arrived_since(convex, shape.id_prefix, launched)
    begin, end = started + DRAIN_WARMUP_S, started + DRAIN_WARMUP_S + window_s
    inside = [t for t in times if begin <= t < end]
    if times and len(times) == shape.pending and times[-1] < end:
        # Ran dry inside the window: the rate is what it delivered while it had work.
        rate = len(inside) / max(1e-3, times[-1] - begin)
    else:
        rate = len(inside) / window_s
    return rate, (times[0] - launched) if times else None, len(inside)


# -- one backend -------------------------------------------------------------------------------


@dataclass
class BackendResult:
    backend: str
    sizes: list[SizeResult] = field(default_factory=list)
    empty_ingest: list[dict[str, Any]] = field(default_factory=list)
    empty_metrics_ms: list[float] = field(default_factory=list)
    empty_claim_ms: list[float] = field(default_factory=list)
    baseline: SizeResult | None = None
    window_s: float = 0.0


def empty_store(
    backend: str, tmp: Path, convex: str, requests_file: Path, out: BackendResult
) -> dict[str, Any]:
    """Ingest on a fresh empty store (and, the first time, claim and /metrics latency)."""
    n = len(out.empty_ingest)
    workdir = tmp / f"{backend}-empty-{n}"
    with database(backend, workdir) as url:
        if n == 0:  # before ingest fills it
            store = open_store(url, sync_commits=False)
            at = now_ms()
            for _ in range(EMPTY_CLAIMS):
                ms, got = timed(lambda: store.claim("b", now_ms=at, lease_ms=30_000, limit=64))
                assert got == []
                out.empty_claim_ms.append(ms)
            store.close()
        stats = measure_serve(
            url, convex, workdir, requests_file, out.empty_metrics_ms if n == 0 else None
        )
    out.empty_ingest.append(stats)
    return stats


def run_backend(
    backend: str,
    sizes: list[str],
    window_s: float,
    pairs: int,
    tmp: Path,
    convex: str,
    requests_files: list[Path],
) -> BackendResult:
    out = BackendResult(backend, window_s=window_s)
    # The drain baseline: the same shape, about one window's worth of events.
    small = int(window_s * BASELINE_RATE[backend]) // PER_OBJECT * PER_OBJECT
    base = SizeResult(f"{small // 1000}k (drain baseline)", small)
    workdir = tmp / f"{backend}-baseline"
    with database(backend, workdir) as url:
        shape = Backlog(f"{backend[:2]}base", small, small // PER_OBJECT, PER_OBJECT, 0, now_ms())
        base.build_s = build(backend, url, shape)
        base.drain_rate, base.drain_first_s, base.drained = measure_drain(
            backend, url, convex, workdir, shape, window_s
        )
    out.baseline = base
    print(f"{backend}: drain baseline ({small} events): {base.drain_rate:.0f}/s", flush=True)
    for label in sizes:
        n = SIZES[label]
        result = SizeResult(label, n)
        workdir = tmp / f"{backend}-{label}"
        with database(backend, workdir) as url:
            shape = Backlog(f"{backend[:2]}{label}", n, n // PER_OBJECT, PER_OBJECT, 0, now_ms())
            result.build_s = build(backend, url, shape)
            print(f"{backend} {label}: built in {result.build_s:.1f} s", flush=True)
            measure_claims(backend, url, shape, result)
            # Ingest on an empty store right before the backlog's: pairs measured under
            # the same load (the machine is shared), whose ratio is the result. Each
            # pair sends its own webhooks, so the backlog store never sees a duplicate.
            for pair in range(pairs):
                requests_file = requests_files[pair]
                empty = empty_store(backend, tmp, convex, requests_file, out)
                result.empty_ingest.append(empty)
                metrics = result.metrics_ms if pair == 0 else None
                result.ingest.append(measure_serve(url, convex, workdir, requests_file, metrics))
                print(
                    f"{backend} {label}: ingest {result.ingest[-1]['rps']:.0f} req/s, "
                    f"empty {empty['rps']:.0f}",
                    flush=True,
                )
            result.drain_rate, result.drain_first_s, result.drained = measure_drain(
                backend, url, convex, workdir, shape, window_s
            )
        out.sizes.append(result)
        print(
            f"{backend} {label}: claim {median(result.claim_empty_ms):.2f} ms (none) / "
            f"{median(result.claim_full_ms):.2f} ms (64), ingest x{ingest_ratio(result):.2f}, "
            f"/metrics {median(result.metrics_ms):.1f} ms, drain {result.drain_rate:.0f}/s",
            flush=True,
        )
    return out


# -- report ------------------------------------------------------------------------------------


def ingest_ratio(s: SizeResult) -> float:
    """Mean backlog req/s over mean empty-store req/s, over the pairs."""
    if not s.ingest or not s.empty_ingest:
        return float("nan")
    return statistics.mean(float(i["rps"]) for i in s.ingest) / statistics.mean(
        float(i["rps"]) for i in s.empty_ingest
    )


def render(results: list[BackendResult], elapsed: float, load: float) -> str:
    lines = [
        "# Backlog benchmark (bench/backlog.py, issue 15)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs shared with other "
        f"engineers' test runs (load average {load:.1f} at start): absolute numbers move with "
        "the load, ratios measured in the same run are the result. Everything (wrk, gunicorn, "
        "the worker, PostgreSQL, the stand-in) shares those CPUs. SQLite is WAL + "
        "synchronous=FULL; PostgreSQL is the throwaway server of scripts/with-postgres.sh "
        f"(fsync off). Took {elapsed / 60:.1f} min.",
        "",
        "Shape: N pending events, N/10 users; per user a head waiting on its backoff and nine "
        "followers parked behind it (harness/backlog.py, built with direct SQL). Claims run in "
        "this process on the store; ingest is `relay serve --web-only` with "
        f"`wrk -t1 -c{ingest.WRK_CONNECTIONS} -d{ingest.WRK_SECONDS}s`; drain is one "
        f"`relay worker` (concurrency 4) after every head is made due, counted over a "
        f"window (below) after a {DRAIN_WARMUP_S:.0f} s warm-up; the drain baseline is a "
        "store in the same shape holding about one window's worth of events.",
        "",
    ]
    for r in results:
        base = r.baseline
        base_rate = base.drain_rate if base else float("nan")
        lines += [
            f"## {r.backend}",
            "",
            "Empty store: claim p50 "
            f"{median(r.empty_claim_ms):.2f} ms, /metrics p50 {median(r.empty_metrics_ms):.1f} ms. "
            f"Drain window {r.window_s:.0f} s; baseline ({base.events if base else 0} events): "
            f"{base_rate:.0f} events/s, "
            f"first delivery {base.drain_first_s if base and base.drain_first_s else 0:.1f} s "
            "after the worker was launched.",
            "",
            "| backlog | build | claim, none claimable p50 / p90 | claim 64 p50 / p90 | "
            "ingest req/s per pair: backlog / empty (x of means) | backlog ingest p50 / p99 | "
            "drain events/s (x baseline) | "
            "first delivery after launch | /metrics p50 / p90 |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in r.sizes:
            pairs_text = ", ".join(
                f"{b['rps']:.0f} / {e['rps']:.0f}"
                for b, e in zip(s.ingest, s.empty_ingest, strict=True)
            )
            first = f"{s.drain_first_s:.1f} s" if s.drain_first_s is not None else "-"
            lines.append(
                f"| {s.label} | {s.build_s:.0f} s "
                f"| {median(s.claim_empty_ms):.2f} / {p90(s.claim_empty_ms):.2f} ms "
                f"| {median(s.claim_full_ms):.1f} / {p90(s.claim_full_ms):.1f} ms "
                f"| {pairs_text} ({ingest_ratio(s):.2f}x) "
                f"| {median([i['p50_us'] / 1000 for i in s.ingest]):.1f} / "
                f"{max(i['p99_us'] / 1000 for i in s.ingest):.1f} ms "
                f"| {s.drain_rate:.0f} ({s.drain_rate / base_rate:.2f}x) | {first} "
                f"| {median(s.metrics_ms):.1f} / {p90(s.metrics_ms):.1f} ms |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1m", help="subset of 10k,100k,1m")
    parser.add_argument("--backends", default=None, help="sqlite,postgres (default: what runs)")
    parser.add_argument("--window", type=float, default=30.0, help="drain window, seconds")
    parser.add_argument("--pg-window", type=float, default=None, help="PostgreSQL's window")
    parser.add_argument("--pairs", type=int, default=2, help="ingest pairs per size")
    parser.add_argument("--out", default=None, help="report path")
    args = parser.parse_args()
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    unknown = set(sizes) - set(SIZES)
    if unknown:
        parser.error(f"unknown sizes: {', '.join(sorted(unknown))}")
    backends = (args.backends or "sqlite,postgres").split(",")
    if "postgres" in backends and not os.environ.get(PG_VARIABLE):
        if args.backends:
            parser.error(f"{PG_VARIABLE} unset: run under scripts/with-postgres.sh")
        backends.remove("postgres")
    ensure_wrk()
    started, load = time.time(), os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="relay-backlog-") as tmpdir, ingest.standin() as convex:
        tmp = Path(tmpdir)
        requests_files = []
        for pair in range(args.pairs):
            requests_files.append(tmp / f"requests-{pair}.txt")
            batch = presign(PRESIGNED, f"blg{pair}")
            requests_files[-1].write_bytes(b"".join(s.raw + SEPARATOR for s in batch))
        for backend in backends:
            window = args.pg_window if backend == "postgres" and args.pg_window else args.window
            results.append(
                run_backend(backend, sizes, window, args.pairs, tmp, convex, requests_files)
            )
    report = render(results, time.time() - started, load)
    out = (
        Path(args.out)
        if args.out
        else BENCH / "results" / f"backlog-{datetime.now(UTC):%Y-%m-%d}.md"
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
