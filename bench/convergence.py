"""Convergence benchmark: how often Convex ends in Clerk's final state, with and without the relay.

    .venv/bin/python bench/convergence.py              # ~5 min; writes bench/results/convergence.md
    .venv/bin/python bench/convergence.py --runs 50    # quicker

The same seeded scenarios as ``tests/test_convergence.py`` (engine:
``harness/convergence.py``): three users' create/update/delete/re-create histories per
run, delivered with random duplicates, in a disordered arrival order, while Convex
functions go down and up. Four setups, each under three disorder profiles:

* relay -> examples/convex, HTTP-action target (raw and normalized payloads alternate);
* relay -> examples/convex, function-API target (a stand-in 503 for outages);
* relay -> Convex's official template (HTTP action, raw);
* the official template alone, fed Svix-style (failed attempts retried later, in no order).

A run is *wrong* when the final ``users`` table differs from Clerk's final state;
the kinds count affected users. Needs ``npm ci --prefix emulator``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the engine lives in harness/

from harness import convergence as conv  # noqa: E402
from harness.convex_emulator import (  # noqa: E402
    EXAMPLE_FUNCTIONS,
    OFFICIAL_FUNCTIONS,
    ConvexEmulator,
)
from harness.factories import FORWARD_SECRET  # noqa: E402

PROFILES = (  # (label, disorder, outages)
    ("shuffled arrivals, outages", "shuffle", True),
    ("jittered arrivals, outages", "jitter", True),
    ("jittered arrivals, no outages", "jitter", False),
)
Runner = Callable[[conv.Scenario], conv.RunResult]


def setups(examples: ConvexEmulator, official: ConvexEmulator, scratch: Path) -> dict[str, Runner]:
    def payload(sc: conv.Scenario) -> str:
        return ("raw", "normalized")[sc.seed % 2]

    return {
        "relay -> examples/convex (HTTP action)": lambda sc: conv.run_relay(
            sc, examples, scratch, payload=payload(sc)
        ),
        "relay -> examples/convex (function API)": lambda sc: conv.run_relay(
            sc, examples, scratch, target="mutation", payload=payload(sc)
        ),
        "relay -> official template": lambda sc: conv.run_relay(
            sc, official, scratch, official=True
        ),
        "official template alone (Svix-style)": lambda sc: conv.run_direct(sc, official),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per profile and setup")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "convergence.md")
    args = parser.parse_args()
    # The worker logs every attempt; thousands of lines would drown the progress.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    shm = Path("/dev/shm")  # noqa: S108 - only as the parent of a private mkdtemp
    scratch = Path(tempfile.mkdtemp(prefix="relay-convergence-", dir=shm if shm.is_dir() else None))
    env = {"CLERK_WEBHOOK_SECRET": FORWARD_SECRET}
    started = time.monotonic()
    table: list[tuple[str, str, dict[str, Any]]] = []
    try:
        with (
            ConvexEmulator(EXAMPLE_FUNCTIONS, env=env) as examples,
            ConvexEmulator(OFFICIAL_FUNCTIONS, env=env) as official,
        ):
            runners = setups(examples, official, scratch)
            seeds = range(args.first_seed, args.first_seed + args.runs)
            for label, disorder, outages in PROFILES:
                scenarios = [conv.scenario(s, disorder=disorder, outages=outages) for s in seeds]
                for name, run in runners.items():
                    t = time.monotonic()
                    summary = dict(conv.summarize(run(sc) for sc in scenarios))
                    summary["seconds"] = time.monotonic() - t
                    table.append((label, name, summary))
                    print(
                        f"{label:32} {name:42} {summary['wrong']:4}/{summary['runs']} wrong"
                        f"  ({summary['seconds']:.0f} s)",
                        flush=True,
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(table, args, time.monotonic() - started))
    print(f"wrote {args.out}")
    relay_wrong = sum(s["wrong"] for _, name, s in table if "examples/convex" in name)
    return 1 if relay_wrong else 0


def report(
    table: list[tuple[str, str, dict[str, Any]]], args: argparse.Namespace, seconds: float
) -> str:
    lines = [
        "# Convergence: final Convex state vs Clerk's, with and without the relay",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `.venv/bin/python "
        f"bench/convergence.py --runs {args.runs} --first-seed {args.first_seed}` in "
        f"{seconds / 60:.1f} min on {os.cpu_count()} CPUs ({platform.python_implementation()} "
        f"{platform.python_version()}). Scenarios: harness/convergence.py (seeded: same seeds, "
        "same runs).",
        "",
        f"Each run: {conv.USERS_PER_RUN} users, each created, updated 1-3 times, and with "
        "probability 0.6 deleted and re-created under a new id (updated 0-2 more times); "
        f"every event duplicated with probability {conv.DUPLICATE_P}; outages toggle with "
        f"probability {conv.FAULT_TOGGLE_P} per arrival (upsert, delete or both functions "
        "down). *Shuffled*: every arrival order equally likely. *Jittered*: mostly in order, "
        "one arrival in seven very late.",
        "",
        "| profile | setup | runs | wrong runs | users wrong, by kind | superseded events "
        "| attempts hit by an outage |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for label, name, s in table:
        kinds = ", ".join(f"{k}: {n}" for k, n in s["kinds"].most_common()) or "-"
        pct = 100 * s["wrong"] / s["runs"] if s["runs"] else 0
        superseded = s["statuses"].get("superseded", 0) if "relay" in name else "-"
        lines.append(
            f"| {label} | {name} | {s['runs']} | {s['wrong']} ({pct:.0f} %) | {kinds} "
            f"| {superseded} | {s['failed_attempts']} |"
        )
    wrong_relay = [
        (label, name, s["wrong_runs"][:10])
        for label, name, s in table
        if "relay" in name and s["wrong"]
    ]
    lines += [
        "",
        "Kinds: *resurrected after delete* (a deleted user is back), *stale* (an "
        "older name/email won), *missing* (a live user is absent), *duplicate row*.",
        'The official template\'s own name format (`"null null"`) is not counted as '
        "wrong: the expected rows use it too.",
        "",
    ]
    if wrong_relay:
        lines.append("Wrong relay runs (first ten seeds each):")
        lines += [f"- {label}, {name}: {runs}" for label, name, runs in wrong_relay]
    else:
        lines.append("Every run through the relay ended in Clerk's final state.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
