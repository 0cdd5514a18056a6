"""Does a worker's Celery ``rate_limit`` deliver the rate it is set to?

One worker (``-c 4``, prefetch 1, as the Procfile runs ``submit``) on a private Redis runs a backlog of
a task that only records its start time (and sleeps ``--work-s``, a createTask's round trip), under
each configured rate, with Celery's own consumer and with ImagineQ's (``workers/consumer.py``), both on
ImagineQ's transport and configuration. Delivered = (tasks − 1) ÷ (last start − first start), by the
Redis clock; gaps over 0.3 s between consecutive starts are counted.

    RESULT delivered_ratio_min=… celery_delivered_ratio_min=… rates=…

(delivered ÷ configured, the worst over the rates, for ImagineQ's consumer and for Celery's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import cast

import redis
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the devstack

from bench.rate_limit_app import STARTS_KEY
from config.celery import celery_config
from devstack import services
from devstack.deployment import settings_from


@dataclass
class Run:
    consumer: str
    rate_per_s: float
    delivered_per_s: float
    long_gaps: int

    @property
    def ratio(self) -> float:
        return self.delivered_per_s / self.rate_per_s


def run(consumer: str, rate_per_s: float, tasks: int, work_s: float, log_dir: Path) -> Run:
    with services.terminate_on_signals(), services.LocalStack(log_dir) as stack:
        url = stack.redis()
        env = {
            "IMAGINEQ_REDIS_URL": url,
            "BENCH_RATE": f"{rate_per_s:g}/s",
            "BENCH_WORK_S": str(work_s),
            "BENCH_CONSUMER": consumer,
        }
        argv = [
            *("python", "-m", "celery", "-A", "bench.rate_limit_app", "worker", "-Q", "submit"),
            *("-c", "4", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle", "-l", "INFO"),
        ]
        argv[0] = sys.executable
        worker = stack.spawn(f"worker-{consumer}-{rate_per_s:g}", argv, env)
        services.wait_until(lambda: "ready." in worker.log_tail(), 60, "the worker")
        publisher = Celery("publisher")
        publisher.conf.update(celery_config(settings_from(env)))
        with publisher.connection_for_write() as connection:
            for index in range(tasks):
                publisher.send_task("bench.limited", args=[index], queue="submit", connection=connection)
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30 + 3 * tasks / rate_per_s + tasks
        while cast(int, client.llen(STARTS_KEY)) < tasks and time.monotonic() < deadline:
            time.sleep(0.2)
        starts = sorted(float(stamp) for stamp in cast(list[bytes], client.lrange(STARTS_KEY, 0, -1)))
        client.close()
    if len(starts) < tasks:
        raise RuntimeError(f"only {len(starts)} of {tasks} tasks ran; see {worker.log_path}")
    gaps = [later - earlier for earlier, later in pairwise(starts)]
    return Run(consumer, rate_per_s, (len(starts) - 1) / (starts[-1] - starts[0]), sum(gap > 0.3 for gap in gaps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="6,30,100", help="configured rates, tasks per second (comma-separated)")
    parser.add_argument("--tasks", type=int, default=150, help="backlog per run (default %(default)s)")
    parser.add_argument("--work-s", type=float, default=0.02, help="each task's run time (default %(default)s)")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="imagineq-bench-") as tmp:
        for rate in rates:
            for consumer in ("celery", "project"):
                log_dir = Path(tmp) / f"{consumer}-{rate:g}"
                log_dir.mkdir()
                result = run(consumer, rate, args.tasks, args.work_s, log_dir)
                runs.append(result)
                print(
                    f"{consumer:8s} rate_limit {rate:g}/s: delivered {result.delivered_per_s:.2f}/s "
                    f"(×{result.ratio:.2f}), gaps > 0.3 s: {result.long_gaps}",
                    flush=True,
                )
    ours = min(r.ratio for r in runs if r.consumer == "project")
    theirs = min(r.ratio for r in runs if r.consumer == "celery")
    print(f"RESULT delivered_ratio_min={ours:.3f} celery_delivered_ratio_min={theirs:.3f} rates={args.rates}")


if __name__ == "__main__":
    main()
