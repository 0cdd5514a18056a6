"""Enqueue throughput and Redis memory per queued job.

Starts a private redis-server, enqueues N jobs with ``enqueue_many`` and, in the same run, a loop of
``enqueue`` calls, and measures Redis ``used_memory`` growth per queued job (record + index + message).

    RESULT enqueue_many_per_s=… enqueue_single_per_s=… bytes_per_queued_job=…
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the devstack

from config.settings import load_settings
from devstack import services
from producers.api import Producer

PROMPT = "A red fox trots through fresh snow at dawn, slow tracking shot, soft golden light, number {i}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs for enqueue_many (default 20000)")
    parser.add_argument("--single", type=int, default=5_000, help="jobs for the enqueue loop (default 5000)")
    args = parser.parse_args()

    with services.LocalStack(Path(tempfile.mkdtemp(prefix="bench-enqueue-"))) as stack:
        url = stack.redis()
        client = redis.Redis.from_url(url)
        producer = Producer(load_settings(redis_url=url, api_key="bench"))
        producer.enqueue_many([{"prompt": "warm-up"}])
        client.flushall()

        before = int(cast("dict[str, Any]", client.info("memory"))["used_memory"])
        requests = [{"prompt": PROMPT.format(i=i), "metadata": {"n": i}} for i in range(args.jobs)]
        started = time.perf_counter()
        producer.enqueue_many(requests)
        many_s = time.perf_counter() - started
        bytes_per_job = (int(cast("dict[str, Any]", client.info("memory"))["used_memory"]) - before) / args.jobs
        queued = producer.jobs.count_by_state()

        started = time.perf_counter()
        for i in range(args.single):
            producer.enqueue(PROMPT.format(i=i), metadata={"n": i})
        single_s = time.perf_counter() - started

        print(f"enqueue_many: {args.jobs} jobs in {many_s:.2f}s; enqueue loop: {args.single} in {single_s:.2f}s")
        print(f"jobs by state after enqueue_many: { {k.value: v for k, v in queued.items() if v} }")
        print(
            f"RESULT enqueue_many_per_s={args.jobs / many_s:.0f} enqueue_single_per_s={args.single / single_s:.0f}"
            f" bytes_per_queued_job={bytes_per_job:.0f}"
        )


if __name__ == "__main__":
    main()
