"""Callbacks against polling only: recordInfo calls per job and completion → stored latency.

Runs the same workload twice in one go, each time on fresh private services (Redis, SeaweedFS S3, the
simulator with 1 MB videos, real Celery workers): once with polling only (callbacks off, the default
poll schedule), once with callbacks (a real uvicorn ``web`` on a free port that the workers name in
``IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL``, HMAC-signed by the simulator; polling is then the safety net).

Completion is the simulator's own ``completeTime`` (``/__sim__/tasks``); stored is the job's ``stored``
transition time (Redis clock, same host). recordInfo calls are what the simulator counted.

Last line: ``RESULT record_info_per_job_callbacks=… record_info_per_job_polling=…
completion_to_stored_p50_s=… completion_to_stored_p95_s=…`` (latencies of the callbacks run).
Goals: ≤ 1.5 recordInfo calls per job with callbacks; p50 ≤ 1.0 s; p95 ≤ 3 s.
Usage: ``python bench/callbacks.py [--jobs 60] [--gen-time 3:8]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the test deployment


from core.jobs import JobState
from devstack import services
from devstack.deployment import settings_from
from producers.api import Producer
from workers.storage import Storage

HMAC_KEY = "bench-hmac-key"
VIDEO_BYTES = 1024 * 1024


@dataclass
class Run:
    mode: str
    jobs: int
    stored: int
    record_info_calls: int
    latencies_s: list[float]
    wall_s: float

    @property
    def record_info_per_job(self) -> float:
        return self.record_info_calls / self.jobs

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(mode: str, jobs: int, gen_time: str, log_dir: Path) -> Run:
    callbacks = mode == "callbacks"
    with services.terminate_on_signals(), services.LocalStack(log_dir) as stack:
        redis_url = stack.redis()
        s3 = stack.s3()
        sim_args = ["--gen-time", gen_time, "--video-bytes", str(VIDEO_BYTES)]
        if callbacks:
            sim_args += ["--hmac-key", HMAC_KEY]
        simulator = stack.simulator(sim_args)
        web_socket = services.reserve_port()
        port = web_socket.getsockname()[1]
        extra = {"IMAGINEQ_INGRESS_TOKENS": json.dumps(["bench-token-0123456789abcdef"])}
        if callbacks:
            extra |= {
                "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
            }
        env = services.deployment_env(
            redis_url=redis_url,
            s3=s3,
            simulator_url=simulator.url,
            bucket="imagineq-bench",
            extra=extra,
        )
        settings = settings_from(env)
        Storage(settings.s3, settings.http).ensure_bucket()
        if callbacks:
            services.start_web(stack, env, sock=web_socket)
        else:
            web_socket.close()
        for queue, concurrency in (("submit", 4), ("poll", 4), ("store", 8)):
            services.start_worker(stack, env, queue, concurrency=concurrency)
        producer = Producer(settings)
        try:
            started = time.monotonic()
            enqueued = producer.enqueue_many([{"prompt": f"a {mode} benchmark shot {i}"} for i in range(jobs)])
            done = [producer.wait(job.id, timeout=600, interval_s=0.5) for job in enqueued]
            wall_s = time.monotonic() - started
        finally:
            producer.close()
        tasks = requests.get(f"{simulator.url}/__sim__/tasks", timeout=10).json()["tasks"]
        stats = requests.get(f"{simulator.url}/__sim__/stats", timeout=10).json()
    completed_at = {task["taskId"]: task["completeTime"] / 1000 for task in tasks}
    stored = [job for job in done if job.state is JobState.STORED]
    latencies = [job.timestamps[JobState.STORED.value] - completed_at[job.task_id] for job in stored if job.task_id]
    return Run(mode, jobs, len(stored), int(stats["record_info_calls"]), latencies, wall_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--gen-time", default="3:8", help="simulator generation time MIN:MAX seconds")
    args = parser.parse_args()
    results: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="imagineq-bench-") as tmp:
        for mode in ("polling", "callbacks"):
            log_dir = Path(tmp) / mode
            log_dir.mkdir()
            result = results[mode] = run(mode, args.jobs, args.gen_time, log_dir)
            print(
                f"{mode:9s}: {result.stored}/{result.jobs} stored in {result.wall_s:.1f}s, "
                f"recordInfo/job {result.record_info_per_job:.2f}, completion→stored "
                f"p50 {result.quantile(0.5):.2f}s p95 {result.quantile(0.95):.2f}s "
                f"max {max(result.latencies_s, default=float('nan')):.2f}s",
                flush=True,
            )
    cb, poll = results["callbacks"], results["polling"]
    if cb.stored < cb.jobs or poll.stored < poll.jobs:
        print(f"WARNING: not all stored: callbacks {cb.stored}/{cb.jobs}, polling {poll.stored}/{poll.jobs}")
    print(
        f"RESULT record_info_per_job_callbacks={cb.record_info_per_job:.2f} "
        f"record_info_per_job_polling={poll.record_info_per_job:.2f} "
        f"completion_to_stored_p50_s={cb.quantile(0.5):.3f} "
        f"completion_to_stored_p95_s={cb.quantile(0.95):.3f}"
    )


if __name__ == "__main__":
    main()
