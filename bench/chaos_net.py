"""Faults between machines: the network-fault stack (devstack/chaos_net.py: every process on its own host in
a network namespace, every link through a latency proxy, Redis with two replicas and three Sentinels over
three hosts) runs each scenario of devstack/chaos_net_scenarios.py with the upstream's real limits and
generation times, and prints a SCENARIO line per scenario and a RESULT line:

    RESULT scenarios=… accepted=… stored=… lost=… duplicate_creations=… duplicate_s3_writes=…
           violations=… latency_slot_use=… max_recover_s=… redis_split_promote_s=…

(root only: network namespaces, iptables, tc)

    python bench/chaos_net.py [--jobs 300] [--scenario NAME ...] [--cut-s 30] [--upstream-cut-s 60]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: the harness is devstack/

from devstack.chaos import IN_PROGRESS_LIMIT
from devstack.chaos_net import net_stack
from devstack.chaos_net_scenarios import scenarios
from devstack.chaos_scenarios import Report, run_scenario


def result_line(reports: list[Report]) -> str:
    figures = {r.name: r.figures for r in reports}
    recoveries = [f["recover_s"] for f in figures.values() if "recover_s" in f]
    return (
        f"RESULT scenarios={len(reports)} accepted={sum(r.accepted for r in reports)} "
        f"stored={sum(r.stored for r in reports)} lost={sum(r.lost for r in reports)} "
        f"duplicate_creations={sum(r.duplicate_creations for r in reports)} "
        f"duplicate_s3_writes={sum(r.duplicate_s3_writes for r in reports)} "
        f"violations={sum(len(r.violations) for r in reports)} "
        f"latency_slot_use={figures.get('latency', {}).get('slot_use', math.nan):.3f} "
        f"max_recover_s={max(recoveries, default=math.nan):.1f} "
        f"redis_split_promote_s={figures.get('redis_split', {}).get('promote_s', math.nan):.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per scenario (default 300)")
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    parser.add_argument("--cut-s", type=float, default=30.0, help="partitions' and S3's slow spell's length")
    parser.add_argument("--upstream-cut-s", type=float, default=60.0)
    parser.add_argument("--drain-s", type=float, default=900.0, help="deadline for every job to end")
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    table = scenarios(jobs=args.jobs, slots=IN_PROGRESS_LIMIT, cut_s=args.cut_s, upstream_cut_s=args.upstream_cut_s)
    chosen = args.scenario or list(table)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="imagineq-chaos-net-"))
    reports: list[Report] = []
    with net_stack(log_dir) as net:
        for name in chosen:
            report = run_scenario(net, name, table[name], jobs=args.jobs, drain_s=args.drain_s)
            reports.append(report)
            report.show()
    print(f"logs: {log_dir}")
    print(result_line(reports), flush=True)
    return 0 if all(not r.violations for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
