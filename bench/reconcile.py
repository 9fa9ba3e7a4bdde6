"""Reconcile benchmark: 100,000 Clerk users against a Convex that is 99 % in sync.

    .venv/bin/python bench/reconcile.py                 # 100,000 users, ~4 min in all
    .venv/bin/python bench/reconcile.py --users 10000   # a quick one
    .venv/bin/python bench/reconcile.py --drain-all     # also deliver the 100,000 run's diff

Writes ``bench/results/reconcile.md`` and prints it.

1. The Clerk emulator (``harness/clerk_emulator.py``, in this process) holds N users;
   the Convex emulator (``emulator/``, examples/convex under convex-test) is seeded
   straight into its ``users`` table with 99 % of them: 0.5 % are missing, 0.3 %
   stale and 0.2 % more are users Clerk deleted.
2. ``relay reconcile --objects users --json`` runs as a subprocess with the default
   rate ceiling (``RELAY_CLERK_RATE=90/10s``, under a development instance's 100 per
   10 s) and a mutation target with a deploy key, so Convex's state is read. Measured:
   wall time, the child's peak RSS (``VmHWM``, polled), Clerk requests and the most in any
   10 s window (from the emulator's arrival times), Convex state queries.
3. The same reconcile at N/10 users first shows whether memory grows with N (it
   should not: a page of Clerk users plus a scratch SQLite file on disk).
4. One ``relay worker`` drains that N/10 run's outbox into the Convex emulator;
   Convex writes are the emulator's handler-call counts (only the diff is written).
   The N run's diff is only delivered with ``--drain-all``: convex-test scans a table
   for every indexed lookup, so with 100,000 rows each mutation takes ~0.8 s there and
   1,000 of them take over ten minutes (real Convex uses its indexes).

The machine is a shared 2-CPU VM; timings move by tens of percent between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT)]

from harness.clerk_emulator import SECRET_KEY, ClerkEmulator  # noqa: E402
from harness.clerk_histories import user_row  # noqa: E402
from harness.clerk_objects import T0, clerk_user  # noqa: E402
from harness.convex_emulator import ADMIN_KEY, EXAMPLE_FUNCTIONS, ConvexEmulator  # noqa: E402
from harness.relay_process import RelayProcess, relay_env, wait_until  # noqa: E402
from relay.store import open_store  # noqa: E402

SEED_BATCH = 5000
DRAIN_TIMEOUT_S = 600.0


@dataclass
class Run:
    users: int
    wall_s: float
    peak_rss_mib: float
    clerk_requests: int
    max_per_10s: int
    summary: dict[str, object]
    stderr_tail: str


def build(users: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Clerk's users, and Convex's rows (99 % in sync)."""
    people = [
        clerk_user(f"user_{i:07d}", updated_at=T0 + 10_000 + i, created_at=T0 + i, first=f"U{i}")
        for i in range(users)
    ]
    missing, stale = users * 5 // 1000, users * 3 // 1000
    rows = []
    for i, person in enumerate(people):
        if i < missing:
            continue
        if i < missing + stale:
            rows.append(user_row({**person, "updated_at": person["updated_at"] - 5000}))
        else:
            rows.append(user_row(person))
    rows += [user_row(clerk_user(f"user_gone{i:05d}", updated_at=T0)) for i in range(users // 500)]
    return people, rows


def max_in_window(arrivals: list[float], window_s: float = 10.0) -> int:
    best, start = 0, 0
    for end, t in enumerate(arrivals):
        while t - arrivals[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def reconcile_once(users: int, convex: ConvexEmulator, workdir: Path) -> tuple[Run, dict[str, str]]:
    people, rows = build(users)
    convex.reset()
    for n in range(0, len(rows), SEED_BATCH):
        convex.insert("users", rows[n : n + SEED_BATCH])
    del rows
    with ClerkEmulator() as clerk:
        clerk.put_users(people)
        del people
        env = relay_env(
            workdir,
            CONVEX_URL=convex.url,
            CONVEX_DEPLOY_KEY=ADMIN_KEY,
            CLERK_SECRET_KEY=SECRET_KEY,
            CLERK_API_URL=clerk.url,
        )
        full_env = {"PATH": os.environ["PATH"], "HOME": str(workdir), "LANG": "C.UTF-8", **env}
        out_path, err_path = workdir / "reconcile.out", workdir / "reconcile.err"
        started = time.monotonic()
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "reconcile", "--objects", "users", "--json"],
                cwd=workdir,
                env=full_env,
                stdout=out,
                stderr=err,
            )
            # The child's own peak: VmHWM of its post-exec memory, polled until it exits.
            # (wait4's ru_maxrss would not do: Linux carries the pre-exec high-water mark,
            # i.e. this bench's own size with 100,000 users in the Clerk emulator, over
            # exec into the child's.)
            peak_kib = 0
            while proc.poll() is None:
                peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
                time.sleep(0.05)
        wall = time.monotonic() - started
        stdout, stderr = out_path.read_text(), err_path.read_text()
        if proc.returncode != 0:
            raise SystemExit(f"reconcile failed ({proc.returncode}):\n{stderr}")
        arrivals = [r.at_s for r in clerk.requests]
    return (
        Run(
            users,
            wall,
            peak_kib / 1024,
            len(arrivals),
            max_in_window(arrivals),
            json.loads(stdout)["users"],
            stderr.strip().splitlines()[-1],
        ),
        env,
    )


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set of ``pid`` since its exec (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def drain(
    env: dict[str, str], convex: ConvexEmulator, workdir: Path
) -> tuple[float, dict[str, int]]:
    before = convex.calls()
    started = time.monotonic()
    # The emulator (convex-test) scans a table per indexed lookup, so with 100,000 rows
    # one mutation takes ~0.1-0.5 s there: generous timeouts, few in flight.
    slow_convex = {"RELAY_CONCURRENCY": "2", "RELAY_DELIVERY_TIMEOUT": "60s"}
    with RelayProcess(workdir, {**env, **slow_convex}, command=("worker",)):
        store = open_store(env["RELAY_DATABASE_URL"])
        wait_until(lambda: store.counts()["pending"] == 0, DRAIN_TIMEOUT_S, "the outbox to drain")
        store.close()
    elapsed = time.monotonic() - started
    after = convex.calls()
    writes = {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
    return elapsed, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument(
        "--drain-all",
        action="store_true",
        help="also deliver the full run's diff (slow: the emulator scans a table per lookup)",
    )
    args = parser.parse_args()
    load = os.getloadavg()
    lines = [
        f"# Reconcile benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Load average at start: {load[0]:.2f}; 2 shared CPUs. Command: "
        f"`.venv/bin/python bench/reconcile.py --users {args.users}`.",
        "",
        "| users | wall | peak RSS | Clerk requests | most in 10 s "
        "| missing | stale | gone | queued |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    out = BENCH / "results" / "reconcile.md"
    notes: list[str] = []
    with ConvexEmulator(EXAMPLE_FUNCTIONS) as convex:
        for users in (args.users // 10, args.users):
            with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
                run, env = reconcile_once(users, convex, Path(tmp))
                s = run.summary
                lines.append(
                    f"| {users:,} | {run.wall_s:.1f} s | {run.peak_rss_mib:.0f} MiB | "
                    f"{run.clerk_requests} | {run.max_per_10s} | {s['missing']} | {s['stale']} | "
                    f"{s['gone']} | {s['queued']} |"
                )
                notes.append(f"- {users:,} users, reconcile's own report: `{run.stderr_tail}`")
                if users < args.users or args.drain_all:
                    drain_s, writes = drain(env, convex, Path(tmp))
                    notes.append(
                        f"- {users:,} users, delivering the queued diff with one `relay worker`: "
                        f"{drain_s:.1f} s; Convex handler calls: "
                        + ", ".join(f"`{k}` {v}" for k, v in sorted(writes.items()))
                    )
            report = "\n".join([*lines, "", *notes]) + "\n"
            out.write_text(report)  # after each size, so a later failure keeps this one
    print(report)


if __name__ == "__main__":
    main()
