"""Ingest benchmark: relay serve vs a hello-world Flask app under the same gunicorn.

    .venv/bin/python bench/ingest.py          # ~4 min; writes bench/results/latest.md

1. Throughput: ``wrk`` (closed loop, -t1 -c64, 10 s) POSTs pre-signed Clerk webhooks,
   each with its own svix-id, to ``relay serve`` (SQLite, WAL, synchronous=FULL,
   delivering to a zero-latency loopback Convex stand-in) and to ``bench/hello_app.py``
   (same gunicorn config module, same flags). Three rounds, interleaved. 64 connections
   saturate both servers (the machine's idle CPU is reported per run); one more pair at
   16 connections shows the relay when its requests wait for the disk with CPU to spare.
2. Fixed rate: an open-loop generator sends 500 req/s for 5 s to a fresh relay and
   reports latency from each request's *scheduled* send time (no coordinated omission),
   then end-to-end latency: scheduled send -> the stand-in receiving the delivery.

Goals (issue 2): ingest >= 0.5x hello throughput; p99 < 20 ms at 500 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from svix.webhooks import Webhook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.relay_process import RelayProcess, free_port, wait_until  # noqa: E402
from relay.serve import GUNICORN_CONFIG  # noqa: E402 - after the path setup

BENCH = Path(__file__).resolve().parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SEPARATOR = b"\n@@@@\n"
WRK_SECONDS = 10
#: Enough connections to keep both servers busy: throughput is a server's capacity, and a
#: run that leaves the CPUs idle measures the client. At 16 the relay left 10-22 % of the
#: 2 CPUs idle (its requests wait ~1-2 ms for the group commit) while hello-world left
#: 1 %; at 64 both leave 1-2 %.
WRK_CONNECTIONS = 64
#: The extra pair of runs with few connections: latency-bound for the relay.
FEW_CONNECTIONS = 16
ROUNDS = 3
RATE_PER_S = 500
RATE_SECONDS = 5
#: A request not answered within this counts as a failure (keeps a slow run bounded).
REQUEST_TIMEOUT_S = 30.0
#: More pre-signed requests than the fastest server answers in one wrk run, so every
#: request carries a new svix-id (a wrap would send cheap duplicates).
PRESIGNED = 90_000
#: How long the throughput phase waits for relay serve's backlog to reach the stand-in.
DRAIN_AFTER_BURST_S = 300
#: CPU priority of the Convex stand-in (see run_standin).
STANDIN_NICE = 19
#: How long the fixed-rate phase waits for the delivery backlog to reach the stand-in.
DRAIN_TIMEOUT_S = 30


# -- a zero-latency Convex stand-in in its own process (it must not share our GIL) ----------


def run_standin(port: int, latency_s: float = 0.0) -> None:
    """Answer every POST 200 (at once, or after ``latency_s`` as a Convex deployment
    across a network would); remember when each svix-id arrived (GET /arrivals).

    It runs at the lowest CPU priority: it stands for Convex, whose CPU is someone
    else's in production, so in a saturating burst it must not take the relay's. With
    spare CPU (the fixed-rate phase) the priority changes nothing.
    """
    os.nice(STANDIN_NICE)
    arrivals: dict[str, float] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            now = time.time()
            with lock:
                arrivals.setdefault(self.headers.get("svix-id", "?"), now)
            if latency_s:
                time.sleep(latency_s)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            with lock:
                if self.path.startswith("/count/"):  # how many svix-ids with this prefix
                    prefix = self.path.removeprefix("/count/")
                    data = str(sum(1 for i in arrivals if i.startswith(prefix))).encode()
                else:
                    data = json.dumps(arrivals).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed relay hangs up
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


@contextmanager
def standin(latency_ms: float = 0.0) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--standin", str(port), "--latency-ms", str(latency_ms)]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/arrivals"), 15, "the stand-in")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


# -- servers -------------------------------------------------------------------------------


@contextmanager
def relay_serve(
    workdir: Path, convex_url: str, *, web_only: bool = False, db_dir: Path | None = None
) -> Iterator[RelayProcess]:
    workdir.mkdir(parents=True)
    env = {
        "CLERK_WEBHOOK_SECRET": SECRET,
        "CONVEX_SITE_URL": convex_url,
        # WAL + synchronous=FULL; db_dir=/dev/shm only for the no-disk ceiling row.
        "RELAY_DATABASE_URL": f"sqlite:///{(db_dir or workdir) / 'relay.db'}",
        "LOG_FORMAT": "json",
    }
    command = ("serve", "--web-only") if web_only else ("serve",)
    with RelayProcess(workdir, env, command) as relay:
        wait_for_workers(relay.log)
        yield relay


def wait_for_workers(read_log: Callable[[], str]) -> None:
    """Wait until every gunicorn worker has loaded the app (its ``worker_ready`` line).

    A server answers as soon as its first worker is up. wrk opens its connections at
    once and keeps them alive, so starting it then pins them all to that worker: one
    CPU's worth of server, and a run that measures boot order (seen: `relay serve` at
    4,400 req/s with all 16 connections on one worker, 5,500 with them spread 6/11).
    """

    def all_ready() -> bool:
        text = read_log()
        booted = text.count("Booting worker")
        return booted > 0 and text.count("worker_ready") >= booted

    wait_until(all_ready, 60, "every gunicorn worker to load the app")


def drain_s(convex_url: str, prefix: str, answered: int) -> float | None:
    """Seconds until the stand-in has received ``answered`` events with this id prefix."""
    started = time.monotonic()

    def arrived() -> bool:
        got = requests.get(f"{convex_url}/count/{prefix}", timeout=10).text
        return int(got) >= answered

    with contextlib.suppress(AssertionError):
        wait_until(arrived, DRAIN_AFTER_BURST_S, "the backlog to drain")
        return time.monotonic() - started
    return None


def events_per_commit(relay: RelayProcess) -> float | None:
    """Stop the relay (SIGTERM) and read how many events its committer put in each commit."""
    relay.stop()
    for line in reversed(relay.log().splitlines()):
        if '"committer_stopped"' in line:
            stats = json.loads(line)
            return float(stats["events"]) / max(1, int(stats["batches"]))
    return None


def tree_cpu_s(root: int) -> float:
    """CPU seconds used by ``root`` and its descendants, reaped children included."""
    table: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                # ppid, then utime + stime + cutime + cstime (reaped children)
                table[int(entry.name)] = (int(fields[1]), sum(map(int, fields[11:15])) / tick)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0.0))[1]
        todo += [child for child, (ppid, _) in table.items() if ppid == pid]
    return total


def measure(
    url: str, pid: int, requests_file: Path, connections: int = WRK_CONNECTIONS
) -> dict[str, Any]:
    """wrk against ``url``, plus the server's CPU time per request (all its processes),
    the machine's idle CPU share during the run, and how wrk's connections were spread
    over the gunicorn workers halfway through."""
    spread: list[str] = []
    port = int(url.rsplit(":", 1)[1])
    probe = threading.Timer(WRK_SECONDS / 2, lambda: spread.append(connection_spread(port)))
    before, idle_before = tree_cpu_s(pid), machine_idle()
    probe.start()
    stats = run_wrk(url, requests_file, connections)
    stats["cpu_us"] = (tree_cpu_s(pid) - before) / max(1, stats["requests"]) * 1e6
    (idle_now, all_now), (idle_then, all_then) = machine_idle(), idle_before
    stats["idle"] = (idle_now - idle_then) / max(1, all_now - all_then)
    probe.join()
    stats["spread"] = spread[0] if spread else "?"
    return stats


def machine_idle() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of every CPU so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)


def connection_spread(port: int) -> str:
    """Established connections to ``port`` per server process, e.g. "7/9" ("?" without ss).

    A keep-alive connection stays on the worker that accepted it; on 2 busy CPUs one
    worker sometimes accepts all of wrk's connections before the other is scheduled,
    and that run measures one CPU's worth of server (hello-world included).
    """
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "?"
    per_pid = collections.Counter(re.findall(r"pid=(\d+)", out))
    return "/".join(str(n) for n in sorted(per_pid.values())) or "?"


@contextmanager
def hello_serve(workdir: Path) -> Iterator[tuple[str, int]]:
    """bench/hello_app.py under gunicorn with the relay's own config module and flags."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PORT": str(port),
        "GUNICORN_CMD_ARGS": "--no-control-socket",  # as RelayProcess sets for the relay
        "LOG_FORMAT": "json",
    }
    log = (workdir / "hello.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, "hello_app:app"],
        cwd=BENCH, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/"), 30, "the hello app")
        wait_for_workers(lambda: (workdir / "hello.log").read_text(errors="replace"))
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


# -- load ----------------------------------------------------------------------------------


@dataclass
class Signed:
    id: str
    raw: bytes  # a complete HTTP/1.1 request


def presign(n: int, tag: str) -> list[Signed]:
    """``n`` user.updated webhooks, each a different user, signed now with SECRET."""
    signer = Webhook(SECRET)
    now = datetime.now(UTC)
    ts = str(int(now.timestamp()))
    out = []
    for i in range(n):
        msg_id = f"msg_{tag}_{i:06d}"
        body = json.dumps({
            "object": "event", "type": "user.updated", "timestamp": int(time.time() * 1000),
            "instance_id": "ins_bench",
            "data": {
                "object": "user", "id": f"user_{tag}_{i:06d}", "first_name": "Bench",
                "last_name": "Mark", "primary_email_address_id": "idn_1",
                "email_addresses": [{"id": "idn_1", "object": "email_address",
                                     "email_address": f"bench{i}@example.com"}],
                "public_metadata": {}, "created_at": 1_700_000_000_000,
                "updated_at": 1_700_000_000_000 + i,
            },
        }, separators=(",", ":"))  # fmt: skip
        signature = signer.sign(msg_id, now, body)
        head = (
            f"POST /webhooks/clerk HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"svix-id: {msg_id}\r\nsvix-timestamp: {ts}\r\nsvix-signature: {signature}\r\n\r\n"
        )
        out.append(Signed(msg_id, head.encode() + body.encode()))
    return out


def run_wrk(url: str, requests_file: Path, connections: int = WRK_CONNECTIONS) -> dict[str, Any]:
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{WRK_SECONDS}s", "--latency",
         "-s", str(BENCH / "presigned.lua"), url],
        env={**os.environ, "BENCH_REQUESTS": str(requests_file)},
        capture_output=True, text=True, check=True, timeout=WRK_SECONDS + 60,
    )  # fmt: skip
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("WRKJSON "))
    stats: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


async def _one(port: int, raw: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    status_line = await reader.readline()
    length = 0  # read by Content-Length: gevent workers keep the connection open
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    writer.close()
    return int(status_line.split()[1])


async def fixed_rate(port: int, batch: list[Signed]) -> tuple[list[float], dict[str, float], int]:
    """Open loop: request i is due at start + i/RATE. Latency counts from the due time."""
    latencies: list[float] = []
    scheduled: dict[str, float] = {}
    failures = 0
    start = time.time() + 0.2

    async def fire(i: int, item: Signed) -> None:
        nonlocal failures
        due = start + i / RATE_PER_S
        await asyncio.sleep(max(0.0, due - time.time()))
        scheduled[item.id] = due
        try:
            status = await asyncio.wait_for(_one(port, item.raw), REQUEST_TIMEOUT_S)
        except (OSError, TimeoutError):
            status = 0
        latencies.append(time.time() - due)
        failures += status != 200

    await asyncio.gather(*(fire(i, item) for i, item in enumerate(batch)))
    return latencies, scheduled, failures


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def disk_probe(directory: Path, n: int = 200) -> dict[str, float]:
    """What one durable commit costs on this disk right now (the ceiling of ingest)."""
    fsyncs = []
    with (directory / "probe").open("wb", buffering=0) as f:
        for _ in range(n):
            t = time.perf_counter()
            f.write(b"x" * 200)
            os.fsync(f.fileno())
            fsyncs.append(time.perf_counter() - t)
    db = sqlite3.connect(directory / "probe.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    commits = []
    for _ in range(n):
        t = time.perf_counter()
        db.execute("INSERT INTO t (body) VALUES (?)", (b"x" * 600,))
        commits.append(time.perf_counter() - t)
    db.close()
    return {
        "fsync_p50": pct(fsyncs, 50),
        "commit_p50": pct(commits, 50),
        "commits_per_s": n / sum(commits),
    }


# -- report -----------------------------------------------------------------------------------


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("installing wrk with apt-get ...", flush=True)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=True)
        subprocess.run(install, capture_output=True, check=True)


def main() -> int:
    ensure_wrk()
    started = time.time()
    load_before = os.getloadavg()[0]
    rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, standin() as convex:
        tmpdir = Path(tmp)
        for r in range(ROUNDS):
            requests_file = tmpdir / f"requests-{r}.txt"
            batch = presign(PRESIGNED, f"wrk{r}")
            requests_file.write_bytes(b"".join(s.raw + SEPARATOR for s in batch))
            with hello_serve(tmpdir) as (hello_url, hello_pid):
                hello = measure(hello_url, hello_pid, requests_file)
            with relay_serve(tmpdir / f"relay-wrk{r}", convex) as relay:
                relay_stats = measure(relay.url, relay.pid, requests_file)
                answered = relay_stats["requests"] - relay_stats["non2xx"]
                relay_stats["drain_s"] = drain_s(convex, f"msg_wrk{r}_", answered)
                relay_stats["per_commit"] = events_per_commit(relay)
            rounds.append((hello, relay_stats))
            if r == 0:  # ingest alone: how much the delivery worker's commits cost it
                with relay_serve(tmpdir / "relay-web", convex, web_only=True) as relay:
                    web_only = measure(relay.url, relay.pid, requests_file)
                    web_only["per_commit"] = events_per_commit(relay)
                # The same on tmpfs: no disk waits at all, so what is left is CPU.
                with (
                    tempfile.TemporaryDirectory(dir="/dev/shm") as shm,
                    relay_serve(
                        tmpdir / "relay-shm", convex, web_only=True, db_dir=Path(shm)
                    ) as relay,
                ):
                    no_disk = measure(relay.url, relay.pid, requests_file)
                    no_disk["per_commit"] = events_per_commit(relay)
            print(
                f"round {r + 1}: hello {hello['rps']:.0f} req/s, relay {relay_stats['rps']:.0f} "
                f"req/s",
                flush=True,
            )

        # Few connections: the relay's requests wait for the disk and leave CPU idle.
        few_file = tmpdir / "requests-few.txt"
        few_file.write_bytes(b"".join(s.raw + SEPARATOR for s in presign(PRESIGNED, "few")))
        with hello_serve(tmpdir) as (hello_url, hello_pid):
            few_hello = measure(hello_url, hello_pid, few_file, FEW_CONNECTIONS)
        with relay_serve(tmpdir / "relay-few", convex) as relay:
            few_relay = measure(relay.url, relay.pid, few_file, FEW_CONNECTIONS)
            few_relay["per_commit"] = events_per_commit(relay)
        few_file.unlink()

        batch = presign(RATE_PER_S * RATE_SECONDS, "rate")
        with relay_serve(tmpdir / "relay-rate", convex) as relay:
            latencies, scheduled, failures = asyncio.run(fixed_rate(relay.port, batch))

            def arrivals() -> dict[str, float]:
                got: dict[str, float] = requests.get(f"{convex}/arrivals", timeout=10).json()
                return {i: got[i] for i in scheduled if i in got}

            with contextlib.suppress(AssertionError):  # report whatever arrived in time
                wait_until(lambda: len(arrivals()) == len(scheduled), DRAIN_TIMEOUT_S)
            arrived = arrivals()
        e2e = [arrived[i] - scheduled[i] for i in arrived]
        missing = len(scheduled) - len(arrived)
        disk = disk_probe(tmpdir)
    elapsed = time.time() - started

    table = render(
        rounds,
        [web_only, no_disk],
        (few_hello, few_relay),
        latencies,
        failures,
        e2e,
        missing,
        disk,
        load_before,
        elapsed,
    )
    out = BENCH / "results" / "latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print(table)
    return 0


def render(
    rounds: list[tuple[dict[str, Any], dict[str, Any]]],
    extra: list[dict[str, Any]],
    few: tuple[dict[str, Any], dict[str, Any]],
    latencies: list[float],
    failures: int,
    e2e: list[float],
    missing: int,
    disk: dict[str, float],
    load: float,
    elapsed: float,
) -> str:
    ms = 1000.0
    lines = [
        "# Ingest benchmark (bench/ingest.py)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs (load average "
        f"{load:.1f} at start), gunicorn `{GUNICORN_CONFIG}` for both servers, SQLite WAL "
        f"+ synchronous=FULL, relay delivering to a loopback stand-in during the runs. "
        f"Took {elapsed:.0f} s.",
        "",
        f"## Throughput: wrk -t1 -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s, unique signed webhooks",
        "",
        "| round | server | req/s | p50 ms | p99 ms | CPU us/req | idle CPU | events/commit "
        "| delivered all after | connections per worker | non-2xx | socket errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def row(n: int, name: str, s: dict[str, Any]) -> str:
        per_commit = f"{s['per_commit']:.1f}" if s.get("per_commit") else "-"
        drained = "-" if "drain_s" not in s else (
            f"{s['drain_s']:.1f} s" if s["drain_s"] is not None
            else f"> {DRAIN_AFTER_BURST_S} s"
        )  # fmt: skip
        return (
            f"| {n} | {name} | {s['rps']:.0f} | {s['p50_us'] / ms:.1f} | "
            f"{s['p99_us'] / ms:.1f} | {s['cpu_us']:.0f} | {s['idle']:.0%} | {per_commit} | "
            f"{drained} | "
            f"{s['spread']} | {s['non2xx']} | {s['socket_errors']} |"
        )

    for n, (hello, relay) in enumerate(rounds, 1):
        lines.append(row(n, "hello (Flask)", hello))
        lines.append(row(n, "relay serve", relay))
    web_only, no_disk = extra
    lines.append(row(1, "relay serve --web-only (no delivery)", web_only))
    lines.append(row(1, "relay serve --web-only, database on tmpfs (no disk waits)", no_disk))
    few_hello, few_relay = few
    lines.append(row(1, f"hello (Flask), {FEW_CONNECTIONS} connections", few_hello))
    lines.append(row(1, f"relay serve, {FEW_CONNECTIONS} connections", few_relay))
    ratios = [relay["rps"] / hello["rps"] for hello, relay in rounds]
    # Only the relay dedupes, so only its runs must not wrap (hello may, harmlessly).
    wraps = any(s["requests"] > PRESIGNED for s in [*(r for _, r in rounds), *extra, few[1]])
    lines += [
        "",
        f"**relay / hello throughput: {', '.join(f'{r:.2f}' for r in ratios)}** "
        f"(median {statistics.median(ratios):.2f}; goal >= 0.5); web-only "
        f"{web_only['rps'] / rounds[0][0]['rps']:.2f}, web-only on tmpfs "
        f"{no_disk['rps'] / rounds[0][0]['rps']:.2f} (both against round 1's hello); with "
        f"{FEW_CONNECTIONS} connections {few_relay['rps'] / few_hello['rps']:.2f}"
        + (" - NOTE: a run wrapped its pre-signed requests (duplicates)" if wraps else ""),
        "",
        "CPU us/req is the CPU time of the server's whole process tree (gunicorn master and "
        "workers; for the relay also the supervisor with its committer and, under `serve`, "
        "the delivery worker) divided by the requests answered. wrk runs on the same "
        f"{os.cpu_count()} CPUs. events/commit is how many webhooks the committer put in "
        "each transaction (group commit). delivered all after: how long after the burst "
        "the last of its events reached the stand-in (while ingest commits in a burst the "
        "worker defers its claims, so it catches up once the burst is over). connections "
        "per worker: wrk's keep-alive connections on each gunicorn process halfway through "
        "(both servers wait until every worker loaded the app; a run with all of them on "
        "one worker has one CPU's worth of server, for hello as for the relay). idle CPU: "
        "the machine's idle share during the run; with few connections the relay's "
        "requests wait for the group commit and the CPUs idle, so that run measures the "
        "client's concurrency rather than the server's capacity.",
        "",
        f"## Fixed rate: {RATE_PER_S} req/s for {RATE_SECONDS} s, open loop, new connection each",
        "",
        "| measure | p50 ms | p90 ms | p99 ms | max ms | requests | non-200 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| ingest (due -> 200) | {pct(latencies, 50) * ms:.1f} | {pct(latencies, 90) * ms:.1f} "
        f"| {pct(latencies, 99) * ms:.1f} | {max(latencies) * ms:.1f} | {len(latencies)} | "
        f"{failures} |",
        f"| end to end (due -> delivered to Convex) | {pct(e2e, 50) * ms:.1f} | "
        f"{pct(e2e, 90) * ms:.1f} | {pct(e2e, 99) * ms:.1f} | {max(e2e) * ms:.1f} | "
        f"{len(e2e)} | - |",
        "",
        f"Ingest p99 goal < 20 ms: **{'met' if pct(latencies, 99) * ms < 20 else 'NOT met'}**."
        + (
            f" {missing} events had not reached the stand-in {DRAIN_TIMEOUT_S} s after the run"
            " (left out of the end-to-end row)."
            if missing
            else ""
        ),
        "",
        "## This disk, measured right after the runs",
        "",
        f"write+fsync p50 {disk['fsync_p50'] * ms:.2f} ms; SQLite WAL synchronous=FULL "
        f"commit p50 {disk['commit_p50'] * ms:.2f} ms, i.e. about "
        f"**{disk['commits_per_s']:.0f} commits/s** for one writer. With one commit per "
        "webhook (plus the worker's claim and completion commits), that is ingest's ceiling.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standin", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--latency-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.standin:
        run_standin(args.standin, args.latency_ms / 1000)
    else:
        sys.exit(main())
