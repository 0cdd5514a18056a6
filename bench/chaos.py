"""Chaos bench: a real stack keeps its promises while things break, one scenario at a time.

The stack: a private Redis with AOF on a fixed port and directory, a SeaweedFS S3 server (bucket versioning
on, so every write of an object is counted), the simulator (signed callbacks), the web process
(callbacks), two workers per queue, and a loop that sends ``imagineq.reconcile`` every few seconds (the
reconciler's thresholds are shortened to match). Each scenario enqueues a stream of jobs, injects its
faults while they run, then waits for every job to end (the drain deadline) and reports::

    SCENARIO <name> accepted=… stored=… failed=… (reasons) lost=… duplicate_creations=…
             unknown_outcome=… duplicate_s3_writes=… peak_in_progress=… violations=…
    RESULT scenarios=… accepted=… stored=… lost=… duplicate_creations=… violations=…

- **lost**: accepted, but in no terminal state at the drain deadline.
- **duplicate_creations**: upstream tasks beyond the first for one job (the simulator's task list, mapped
  to jobs through each task's callBackUrl). ``unknown_outcome`` counts the jobs failed ``outcome_unknown``
  (a createTask whose answer never came: the task may exist; never resubmitted blindly): the documented
  window, reported apart.
- **duplicate_s3_writes**: object versions beyond the first for one video key.
- **violations**: a failed job without a reason, a stored job whose S3 object or sha256 is wrong, more
  upstream tasks in progress than the account allows, a terminal job that moved again.

S3 outage, in two halves: first the SeaweedFS server frozen (SIGSTOP/SIGCONT): the ports stay bound and
connections hang, exactly what a network partition looks like to a client; then it crashes (SIGKILL),
stays down (connections refused) and comes back on the same ports and data directory, with every object
it had stored, which the checks afterwards read back.

Redis failover, on a stack of its own: a primary, two replicas and three Sentinels, the clients given only
the Sentinels, and the real creation window (300 per hour) on both sides; the primary is SIGKILLed while
jobs are in every state.

    python bench/chaos.py [--jobs 200] [--failover-jobs 300] [--scenario NAME ...] [--s3-outage-s 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: the harness is devstack/

from devstack.chaos import chaos_stack
from devstack.chaos_scenarios import HA_SCENARIOS, Report, run_scenario, scenarios


def result_line(reports: list[Report]) -> str:
    return (
        f"RESULT scenarios={len(reports)} accepted={sum(r.accepted for r in reports)} "
        f"stored={sum(r.stored for r in reports)} lost={sum(r.lost for r in reports)} "
        f"duplicate_creations={sum(r.duplicate_creations for r in reports)} "
        f"violations={sum(len(r.violations) for r in reports)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per scenario (default 200)")
    parser.add_argument(
        "--failover-jobs", type=int, default=300, help="jobs of redis_failover (default 300: a full creation window)"
    )
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    parser.add_argument("--s3-outage-s", type=float, default=60.0)
    parser.add_argument("--redis-down-s", type=float, default=5.0)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per queue (default 3)")
    parser.add_argument("--phase-s", type=float, default=5.0, help="length of each upstream/callback fault")
    parser.add_argument("--drain-s", type=float, default=300.0, help="deadline for every job to end")
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    table = scenarios(
        kills=args.kills, redis_down_s=args.redis_down_s, phase_s=args.phase_s, s3_outage_s=args.s3_outage_s
    )
    chosen = args.scenario or list(table)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="imagineq-chaos-"))
    reports: list[Report] = []
    for ha in (False, True):
        names = [name for name in chosen if (name in HA_SCENARIOS) == ha]
        if not names:
            continue
        with chaos_stack(log_dir / ("ha" if ha else "single"), ha=ha) as chaos:
            for name in names:
                jobs = args.failover_jobs if name == "redis_failover" else args.jobs
                report = run_scenario(chaos, name, table[name], jobs=jobs, drain_s=args.drain_s)
                reports.append(report)
                report.show()
    print(f"logs: {log_dir}")
    print(result_line(reports), flush=True)
    return 0 if all(not r.violations for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
