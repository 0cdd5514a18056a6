"""Dashboard page times with a million jobs in Redis.

Starts a private Redis, a SeaweedFS S3 server, the simulator (the accounts' credits) and the web process;
writes ``--jobs`` job records (default 1,000,000) with their state index entries straight through a
pipeline, spread over the last 30 days (most stored, some failed, expired, canceled, a few live, the
newest in the last hour, one batch of 5,000 among them) and a full hour of creations in the account's
log; signs in through ``/signin`` like a browser, then times, client side, ``--rounds`` GETs of each page:

- ``/`` (the overview), ``/jobs`` (all states, newest first), ``/jobs?state=failed``, ``/jobs?batch=…``
  (a filter over the newest entries), one job's page, and ``/healthz`` as the baseline of a request that
  reads almost nothing (same process, same client, same run).

    RESULT overview_ms_p50=… jobs_page_ms_p50=… jobs=… overview_ms_p95=… jobs_page_ms_p95=…
           failed_page_ms_p50=… batch_page_ms_p50=… job_page_ms_p50=… healthz_ms_p50=…

Goal: overview and jobs page p50 under 200 ms with 1,000,000 jobs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs import Job, JobRequest, JobState
from core.keys import Keys
from devstack import services

TOKEN = f"bench-{uuid.uuid4().hex}"
DAY_S = 86400.0
#: Share of the jobs in each state (the rest is stored).
SHARES = {
    JobState.FAILED: 0.02,
    JobState.EXPIRED: 0.005,
    JobState.CANCELED: 0.005,
    JobState.QUEUED: 0.001,
    JobState.GENERATING: 0.0003,
}
BATCH_JOBS = 5000


def populate(client: redis.Redis, keys: Keys, jobs: int, now: float) -> tuple[str, str]:
    """Write the records and index entries; return a stored job's id and the batch id."""
    rng = random.Random(7)
    batch_id = uuid.uuid4().hex
    states = [state for state, share in SHARES.items() for _ in range(round(share * 10_000))]
    states += [JobState.STORED] * (10_000 - len(states))
    sample_stored = ""
    pipe = client.pipeline(transaction=False)
    for index in range(jobs):
        # The newest jobs are the last written: 2 % in the last hour, the rest over 30 days.
        age_s = rng.uniform(0, 3600) if index >= jobs * 0.98 else rng.uniform(3600, 30 * DAY_S)
        created = now - age_s
        state = states[index % len(states)]
        request = JobRequest(
            prompt=f"A red fox trots through fresh snow at dawn, take {index}",
            batch_id=batch_id if index % (jobs // BATCH_JOBS or 1) == 0 else None,
        )
        job = Job.new(request, created_at=created)
        job.state = state
        if state is not JobState.QUEUED:
            job.account, job.task_id = "default", uuid.uuid4().hex
            job.timestamps |= {"submitting": created + 1, "generating": created + 1.2}
        ended = created + rng.uniform(12, 30)
        if state is JobState.STORED:
            job.timestamps |= {"downloading": ended - 0.8, "stored": ended}
            job.s3_uri = f"s3://imagineq-bench/videos/{job.id}.mp4"
            job.size, job.sha256 = 4_000_000, uuid.uuid4().hex * 2
            sample_stored = job.id
        elif state in (JobState.FAILED, JobState.EXPIRED, JobState.CANCELED):
            job.timestamps[state.value] = ended
            job.reason, job.error = "generation_failed", "upstream generation failed: internal error"
        job.updated_at = max(job.timestamps.values())
        pipe.hset(keys.job(job.id), mapping=job.to_hash())
        pipe.zadd(keys.state_index(state.value), {job.id: job.timestamps[state.value] * 1000})
        if index % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    creations = {uuid.uuid4().hex: (now - rng.uniform(0, 3600)) * 1000 for _ in range(290)}
    client.zadd(keys.creations("default"), cast("dict[Any, Any]", creations))
    return sample_stored, batch_id


def timed(session: requests.Session, url: str, rounds: int) -> list[float]:
    session.get(url, timeout=60).raise_for_status()  # warm
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        reply = session.get(url, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        reply.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    with services.LocalStack(Path(tempfile.mkdtemp(prefix="bench-dashboard-"))) as stack:
        redis_url = stack.redis()
        s3 = stack.s3()
        simulator = stack.simulator(["--record-info-per-s", "0"])
        env = services.deployment_env(
            redis_url=redis_url,
            s3=s3,
            simulator_url=simulator.url,
            bucket="imagineq-bench",
            extra={"IMAGINEQ_INGRESS_PRINCIPALS": json.dumps([{"name": "ops", "token": TOKEN, "admin": True}])},
        )
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        keys = Keys("iq")
        started = time.perf_counter()
        now = float(cast("tuple[int, int]", client.time())[0])
        sample, batch_id = populate(client, keys, args.jobs, now)
        memory_mb = int(cast("dict[str, Any]", client.info("memory"))["used_memory"]) / 1e6
        print(f"wrote {args.jobs:,} jobs in {time.perf_counter() - started:.0f} s; Redis uses {memory_mb:,.0f} MB")
        counts = {state.value: int(cast(int, client.zcard(keys.state_index(state.value)))) for state in JobState}
        print(f"jobs by state: {counts}")

        from config.settings import load_settings
        from workers.storage import Storage

        settings = load_settings(
            s3={
                "endpoint_url": s3.url,
                "bucket": "imagineq-bench",
                "create_bucket": True,
                "access_key_id": s3.extra["access_key_id"],
                "secret_access_key": s3.extra["secret_access_key"],
            },
            redis_url=redis_url,
        )
        Storage(settings.s3, settings.http).ensure_bucket()  # the job page reads its sidecar from there
        web = services.start_web(stack, env)
        session = requests.Session()
        session.post(f"{web.url}/signin", data={"token": TOKEN}, timeout=30).raise_for_status()
        assert "Overview" in session.get(f"{web.url}/", timeout=60).text
        pages = {
            "overview": "/",
            "jobs_page": "/jobs",
            "failed_page": "/jobs?state=failed",
            "batch_page": f"/jobs?batch={batch_id}",
            "job_page": f"/jobs/{sample}",
            "healthz": "/healthz",
        }
        results: dict[str, list[float]] = {}
        for name, path in pages.items():
            results[name] = timed(session, web.url + path, args.rounds)
            times = results[name]
            print(
                f"{path:44} p50 {statistics.median(times):7.1f} ms  "
                f"p95 {statistics.quantiles(times, n=20)[-1]:7.1f} ms  max {max(times):7.1f} ms"
            )

    def p50(name: str) -> str:
        return f"{statistics.median(results[name]):.1f}"

    def p95(name: str) -> str:
        return f"{statistics.quantiles(results[name], n=20)[-1]:.1f}"

    print(
        f"RESULT overview_ms_p50={p50('overview')} jobs_page_ms_p50={p50('jobs_page')} jobs={args.jobs}"
        f" overview_ms_p95={p95('overview')} jobs_page_ms_p95={p95('jobs_page')}"
        f" failed_page_ms_p50={p50('failed_page')} batch_page_ms_p50={p50('batch_page')}"
        f" job_page_ms_p50={p50('job_page')} healthz_ms_p50={p50('healthz')}"
    )


if __name__ == "__main__":
    main()
