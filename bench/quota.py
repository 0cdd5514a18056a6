"""The headline number: how much of the account quota ImagineQ turns into creations, without a 429.

A time-scaled simulator (the 1 h window becomes ``3600 / time_scale`` seconds, generation times scale
alike) enforces 30 in progress and 300 creations per window per key. A backlog of 3× the window's quota
is enqueued at once; submit workers (several processes) drain it. Over ``--windows`` windows from the
first creation it measures efficiency = creations ÷ (windows × limit), the simulator's peak in-progress
and the 429s it sent — and, in the same run, the naive baseline: Celery ``rate_limit`` alone (each
worker allowed the account's rate), no global Redis quota, the same workers.

Production settings are kept, Celery ``rate_limit`` included (derived from the accounts as in
production). What a scaled upstream needs differently is scaled with it and printed at the start: the
account's recordInfo budget (10 per simulated second), the poll planner's first check and intervals
(generation takes 10–25 simulated seconds), and, for the baseline only, its per-worker rate limit. The
simulator's recordInfo limit is off here (its rolling second is 1/scale wall seconds; bench/slots.py
measures recordInfo at real time).

    RESULT efficiency=… peak_in_progress=… limit_in_progress=… upstream_429=… baseline_efficiency=…
           baseline_429=… baseline_peak_in_progress=… accounts=… creations_per_window=…
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the test deployment

from devstack.deployment import Deployment, deployment

IN_PROGRESS = 30
PER_WINDOW = 300
WINDOW_S = 3600.0


@dataclass
class Outcome:
    efficiency: float
    created_in_windows: int
    peak_in_progress: int
    rate_limited: int
    max_creations_in_window: int


def run(*, enforce: bool, accounts: int, scale: float, windows: int, submit_workers: int, log_dir: Path) -> Outcome:
    window_s = WINDOW_S / scale
    keys = [f"key-{i}" for i in range(accounts)]
    account_list = [
        {
            "name": f"acct{i}",
            "api_key": key,
            "base_url": "{simulator}",
            "max_in_progress": IN_PROGRESS,
            "max_creations_per_window": PER_WINDOW,
            "creation_window_s": window_s,
            "window_guard_s": 0.25,
            "record_info_per_s": 10.0 * scale,
        }
        for i, key in enumerate(keys)
    ]
    # The scaled upstream's timing, for the poll planner: generation takes 10-25 simulated seconds.
    env = {
        "IMAGINEQ_ACCOUNTS": json.dumps(account_list),
        "IMAGINEQ_QUOTA_ENFORCE": "true" if enforce else "false",
        "IMAGINEQ_POLL__FIRST_CHECK_S": f"{10.0 / scale:.4f}",
        "IMAGINEQ_POLL__SCHEDULE": json.dumps(
            [[30.0 / scale, 1.0 / scale], [120.0 / scale, 5.0 / scale], [1e9, 15.0 / scale]]
        ),
    }
    if not enforce:
        # The naive baseline: every worker allowed the account's average creation rate.
        env["IMAGINEQ_SUBMIT_RATE_LIMIT"] = f"{PER_WINDOW * accounts / window_s:.2f}/s"
    shown = {name: value for name, value in env.items() if name != "IMAGINEQ_ACCOUNTS"}
    print(f"  scaled for the ×{scale:g} upstream: {shown}, account record_info_per_s={10.0 * scale:g}")
    simulator_args = [
        "--time-scale",
        str(scale),
        "--gen-time",
        "10:25",
        "--video-bytes",
        "1024",
        "--max-in-progress",
        str(IN_PROGRESS),
        "--max-per-window",
        str(PER_WINDOW),
        "--window-s",
        str(WINDOW_S),
        "--record-info-per-s",
        "0",
        *[arg for key in keys for arg in ("--api-key", key)],
    ]
    with deployment(log_dir, simulator_args=simulator_args, env=env, workers={"poll": 8, "store": 2}) as dep:
        for _ in range(submit_workers):
            dep.start_worker("submit", concurrency=4)
        backlog = 3 * PER_WINDOW * accounts
        dep.producer.enqueue_many([{"prompt": f"quota bench {i}"} for i in range(backlog)])
        first = _first_creation_s(dep, timeout_s=60)
        end = first + windows * window_s
        while time.time() < end:
            time.sleep(0.5)
        tasks = dep.sim("tasks")["tasks"]
        stats = dep.stats()
        states = {k.value: v for k, v in dep.producer.jobs.count_by_state().items() if v}
        print(f"  jobs by state at the end: {states}; simulator create calls {stats['create_calls']}")
    created = [t["createTime"] / 1000 for t in tasks if t["createTime"] / 1000 < end]
    per_key = stats.get("per_key", {}).values()
    return Outcome(
        efficiency=len(created) / (windows * PER_WINDOW * accounts),
        created_in_windows=len(created),
        peak_in_progress=max((k["peak_in_progress"] for k in per_key), default=stats["peak_in_progress"]),
        rate_limited=stats["rate_limited"],
        max_creations_in_window=max((k["max_creations_in_window"] for k in per_key), default=0),
    )


def _first_creation_s(dep: Deployment, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = dep.sim("tasks")["tasks"]
        if tasks:
            return float(min(t["createTime"] for t in tasks)) / 1000
        time.sleep(0.05)
    raise RuntimeError("no task was created")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--time-scale", type=float, default=120.0, help="3600 s window → 3600/scale s (default 120)")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument(
        "--submit-workers", type=int, default=1, help="submit workers (-c 4 each; default 1, as the Procfile)"
    )
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-quota-"))
    common = {
        "accounts": args.accounts,
        "scale": args.time_scale,
        "windows": args.windows,
        "submit_workers": args.submit_workers,
    }
    ours = run(enforce=True, log_dir=root / "imagineq", **common)  # type: ignore[arg-type]
    print(f"imagineq: {ours}")
    result = (
        f"RESULT efficiency={ours.efficiency:.3f} peak_in_progress={ours.peak_in_progress} "
        f"limit_in_progress={IN_PROGRESS} upstream_429={ours.rate_limited}"
    )
    if not args.no_baseline:
        base = run(enforce=False, log_dir=root / "baseline", **common)  # type: ignore[arg-type]
        print(f"baseline: {base}")
        result += (
            f" baseline_efficiency={base.efficiency:.3f} baseline_429={base.rate_limited}"
            f" baseline_peak_in_progress={base.peak_in_progress}"
        )
    per_window = ours.created_in_windows / args.windows
    print(f"{result} accounts={args.accounts} creations_per_window={per_window:.1f}")


if __name__ == "__main__":
    main()
