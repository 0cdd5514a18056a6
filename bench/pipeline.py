"""End-to-end pipeline throughput against raw Celery on the same Redis, in one run.

The simulator generates instantly (gen-time 0), quotas are lifted and videos are 1 KB, so the figure
is ImagineQ's own overhead: job records, Lua compare-and-sets, quota scripts, HTTP to the simulator,
the S3 upload. The baseline runs the same message flow (submit → chain(poll, store)) with no-op tasks
through the same Redis, with the same worker processes and configuration.

    RESULT pipeline_jobs_per_s=… raw_celery_jobs_per_s=… overhead_ratio=…
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the repo root: bench reuses the test deployment

from producers import localstack
from tests.integration.deployment import deployment
from workers.jobs import JobState

UNLIMITED = json.dumps(
    [{"name": "bench", "api_key": "sim-key", "base_url": "{simulator}", "max_in_progress": 100000,
      "max_creations_per_window": 10**9, "record_info_per_s": 100000}]
)  # fmt: skip


def run_pipeline(jobs: int, concurrency: int, log_dir: Path) -> tuple[float, str, dict[str, str]]:
    with deployment(
        log_dir,
        simulator_args=("--gen-time", "0:0", "--video-bytes", "1024", "--max-in-progress", "1000000",
                        "--max-per-window", "1000000000"),
        env={"IMAGINEQ_ACCOUNTS": UNLIMITED, "IMAGINEQ_SUBMIT_RATE_LIMIT": "100000/s",
             "IMAGINEQ_POLL_RATE_LIMIT": "100000/s"},
        workers={"submit": concurrency, "poll": concurrency, "store": concurrency},
    ) as dep:  # fmt: skip
        dep.producer.enqueue_many([{"prompt": "warm-up"}])
        dep.wait_for(lambda: dep.producer.jobs.count_by_state().get(JobState.STORED, 0) == 1, 60, "warm-up")
        requests = [{"prompt": f"bench prompt {i}"} for i in range(jobs)]
        started = time.perf_counter()
        dep.producer.enqueue_many(requests)
        dep.wait_for(lambda: _terminal(dep) >= jobs + 1, 600, "every job to end")
        elapsed = time.perf_counter() - started
        counts = {k.value: v for k, v in dep.producer.jobs.count_by_state().items() if v}
        return elapsed, dep.env["IMAGINEQ_REDIS_URL"], {"states": json.dumps(counts), "stages": _stages(dep)}


def _stages(dep) -> str:  # type: ignore[no-untyped-def]
    """Mean seconds each job spent in each state (where the time goes)."""
    ids = dep.producer.jobs.ids_in_state(JobState.STORED, limit=100_000)
    order = ["queued", "submitting", "generating", "downloading", "stored"]
    sums = dict.fromkeys(order[:-1], 0.0)
    jobs = [job for job in dep.producer.jobs.get_many(ids) if job is not None]
    for job in jobs:
        times = {**job.timestamps, "queued": job.created_at}
        for here, after in itertools.pairwise(order):
            sums[here] += times.get(after, 0) - times.get(here, 0)
    return " ".join(f"{state}={total / max(len(jobs), 1) * 1000:.0f}ms" for state, total in sums.items())


def _terminal(dep) -> int:  # type: ignore[no-untyped-def]
    return sum(count for state, count in dep.producer.jobs.count_by_state().items() if state.terminal)


def run_raw_celery(jobs: int, concurrency: int, log_dir: Path) -> float:
    with localstack.LocalStack(log_dir) as stack:
        url = stack.redis()
        env = {"IMAGINEQ_REDIS_URL": url, "IMAGINEQ_API_KEY": "unused", "PYTHONPATH": str(Path.cwd())}
        for queue in ("submit", "poll", "store"):
            argv = localstack.worker_argv(queue, concurrency=concurrency, name=f"noop-{queue}")
            argv[argv.index("workers")] = "bench.noop_app"
            service = stack.spawn(f"noop-{queue}", argv, env)
            localstack.wait_until(lambda s=service: "ready." in s.log_path.read_text(), 60, f"noop {queue}")
        import os

        os.environ.update(env)
        from bench import noop_app

        client = redis.Redis.from_url(url)
        noop_app.submit.delay("warm-up")
        localstack.wait_until(lambda: int(client.get(noop_app.DONE_KEY) or 0) == 1, 60, "warm-up")
        started = time.perf_counter()
        with noop_app.app.producer_or_acquire() as producer, producer.batch(max_size=500):
            for _ in range(jobs):
                noop_app.submit.apply_async((uuid.uuid4().hex,), producer=producer)
        localstack.wait_until(lambda: int(client.get(noop_app.DONE_KEY) or 0) >= jobs + 1, 600, "noop jobs")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument(
        "--concurrency", type=int, default=2, help="processes per worker (one worker per queue)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    raw_s = run_raw_celery(args.jobs, args.concurrency, root / "raw")
    pipeline_s, _, info = run_pipeline(args.jobs, args.concurrency, root / "pipeline")
    pipeline_rate, raw_rate = args.jobs / pipeline_s, args.jobs / raw_s
    print(f"pipeline: {args.jobs} jobs in {pipeline_s:.1f}s, states {info['states']}")
    print(f"pipeline: mean time in each state: {info['stages']}")
    print(f"raw celery: {args.jobs} jobs in {raw_s:.1f}s")
    print(
        f"RESULT pipeline_jobs_per_s={pipeline_rate:.1f} raw_celery_jobs_per_s={raw_rate:.1f}"
        f" overhead_ratio={raw_rate / pipeline_rate:.2f}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
