"""Credits at real time: does the ledger charge exactly what the upstream's balances lost, do budgets hold
under 20 concurrent producers, is an account that cannot pay ever sent a job (a 402), and how fast is
``enqueue_many`` with budgets on.

A real deployment (private Redis, S3 server, the simulator with each model's documented generation time,
caps and prices, callbacks on, two accounts, the Procfile's workers and beat reading balances every minute)
takes ``--jobs`` mixed jobs (text-to-video of every duration and resolution, text-to-image, and derived
image-to-video, upscale and extend jobs of them) from ``--producers`` threads, each a principal with a daily
budget (a quarter of them too small for their share: their jobs past it are refused). The simulator fails
``--fail-rate`` of the tasks after creating them (they cost), and moderates the prompts that say so; a few
derived jobs are canceled while they wait for their parent. The accounts' balances are uneven: the first
account runs dry part-way, and the jobs that can run only there (children of its tasks) wait for credits
until the bench refills it, as an operator would, once nothing else moves.

Figures:

- **ledger_minus_upstream**: credits the ledger charged minus what the simulator's balances lost (goal 0);
- **budget_overshoot**: credits charged past a budget's limit, every principal summed (goal 0);
- **upstream_402**: createTask calls the simulator refused for want of credits (goal 0);
- **estimate_error_pct**: mean |estimate − price the upstream took| over the tasks, in % of the price;
- **enqueue_per_s**: ``enqueue_many`` of ``--enqueue`` jobs with every budget on (each checked), on a prefix
  no worker reads (goal ≥ 5,000);
- **refill_resume_s**: from the refill to the first job that waited for it being created.

``--skew PCT`` prices every video PCT % below what the simulator takes, and has the simulator report each
task's consumed credits in its record (as some upstream models do): the estimates are then wrong by that
much, and the ledger must still equal the balances (charges settled on the upstream's figure); a budget,
checked against estimates, may then be overshot by up to the skew.

Prints ``RESULT ledger_minus_upstream=… budget_overshoot=… upstream_402=… estimate_error_pct=…
enqueue_per_s=… …`` as its last line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the devstack

from config.settings import CreditSettings
from core.balances import Balances
from core.credits import CreditPolicy
from core.errors import OverBudget
from core.jobs import Job, JobRequest, JobState
from core.ledger import Ledger
from devstack import services
from devstack.deployment import settings_from
from producers.api import Producer
from simulator.accounts import key_id
from workers.storage import Storage

HMAC_KEY = "bench-hmac-key"
KEYS = ("bench-key-a", "bench-key-b")
#: As the Procfile runs them.
WORKERS = (("submit", 4), ("poll", 8), ("store", 4))
#: The uneven balances: the first account runs dry part-way.
BALANCES = (2500.0, 60000.0)
#: Principals' daily budgets: a quarter of them too small for their share.
GENEROUS, TIGHT = 5000.0, 120.0
DURATIONS = ("6", "10", "15")
RESOLUTIONS = ("480p", "720p")


def mix(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """``n`` base requests: clips of every duration and resolution, images; some moderated."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        word = "forbidden " if rng.random() < 0.03 else ""
        if rng.random() < 0.3:
            out.append({"model": "text-to-image", "prompt": f"{word}a still, take {i}"})
        else:
            duration, resolution = rng.choice(DURATIONS), rng.choice(RESOLUTIONS)
            out.append({"prompt": f"{word}a clip, take {i}", "duration": duration, "resolution": resolution})
    return out


def derived(rng: random.Random, parent: Job) -> dict[str, Any]:
    if parent.model == "text-to-image":
        if rng.random() < 0.5:
            return {"model": "image-to-video", "parent": parent.id, "index": 0, "duration": rng.choice(DURATIONS)}
        return {"model": "upscale", "parent": parent.id}
    return {"model": "extend", "parent": parent.id, "extend_times": rng.choice(("6", "10"))}


class Producers:
    """The producer threads: each a principal enqueueing its share one job at a time."""

    def __init__(self, producer: Producer, principals: list[str], per_principal: int, seed: int) -> None:
        self.producer = producer
        self.principals = principals
        self.per_principal = per_principal
        self.seed = seed
        self.jobs: list[Job] = []
        self.refused = 0
        self.canceled = 0
        self.enqueue_s: list[float] = []
        self._lock = threading.Lock()

    def _one(self, owner: str, values: dict[str, Any]) -> Job | None:
        request = JobRequest.from_mapping(values, owner=owner)
        started = time.perf_counter()
        try:
            ((job, _),) = self.producer.enqueue_prepared(self.producer.prepare([request], owner=owner))
        except OverBudget:
            with self._lock:
                self.refused += 1
            return None
        with self._lock:
            self.jobs.append(job)
            self.enqueue_s.append(time.perf_counter() - started)
        return job

    def run_one(self, index: int) -> None:
        rng = random.Random(self.seed + index)
        owner = self.principals[index]
        bases = self.per_principal * 2 // 3
        parents = [job for values in mix(rng, bases) if (job := self._one(owner, values)) is not None]
        for parent in rng.sample(parents, min(len(parents), self.per_principal - bases)):
            child = self._one(owner, derived(rng, parent))
            if child is not None and child.state is JobState.WAITING and rng.random() < 0.1:
                try:
                    self.producer.cancel(child.id, by="the bench")
                except Exception:  # it moved on meanwhile: it runs
                    continue
                with self._lock:
                    self.canceled += 1

    def run(self) -> None:
        threads = [threading.Thread(target=self.run_one, args=(i,)) for i in range(len(self.principals))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def enqueue_rate(redis_url: str, env: dict[str, str], jobs: int) -> float:
    """``enqueue_many`` with every budget on (each job checked against four), on a prefix no worker reads."""
    settings = settings_from({**env, "IMAGINEQ_REDIS_PREFIX": "bench-enqueue"})
    credits = CreditSettings(principal_day=1e9, principal_month=1e10, daily_cap=1e10)
    producer = Producer(settings.model_copy(update={"credits": credits}))
    try:
        producer.enqueue_many([{"prompt": "warm-up"}])
        requests_ = [{"prompt": f"a red fox in fresh snow, take {i}", "metadata": {"n": i}} for i in range(jobs)]
        started = time.perf_counter()
        producer.enqueue_many(requests_)
        elapsed = time.perf_counter() - started
        for key in producer.redis.scan_iter(match="bench-enqueue:*", count=10_000):
            producer.redis.delete(key)
        return jobs / elapsed
    finally:
        producer.close()


def run(
    jobs: int, producers: int, fail_rate: float, enqueue_jobs: int, skew_pct: float, log_dir: Path
) -> dict[str, float]:
    with services.terminate_on_signals(), services.LocalStack(log_dir) as stack:
        redis_url = stack.redis()
        s3 = stack.s3()
        sim_args = ["--images-per-task", "4", "--video-bytes", "65536", "--hmac-key", HMAC_KEY]
        sim_args += ["--fail-rate", str(fail_rate), "--credits", "0"]
        if skew_pct:
            sim_args.append("--report-credits")
        sim_args += [arg for key in KEYS for arg in ("--api-key", key)]
        simulator = stack.simulator(sim_args)
        sim = f"{simulator.url}/__sim__"
        web_socket = services.reserve_port()
        principals = [f"p{i:02d}" for i in range(producers)]
        extra = {
            "IMAGINEQ_ACCOUNTS": json.dumps(
                [{"name": f"acct{i}", "api_key": key, "base_url": simulator.url} for i, key in enumerate(KEYS)]
            ),
            "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{web_socket.getsockname()[1]}",
            "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
            "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(
                [
                    {
                        "name": name,
                        "token_sha256": f"{i:064x}",
                        "budget_day": TIGHT if i % 4 == 0 else GENEROUS,
                    }
                    for i, name in enumerate(principals)
                ]
            ),
        }
        if skew_pct:
            per_second = {"480p": 2.4 * (1 - skew_pct / 100), "720p": 4.5 * (1 - skew_pct / 100)}
            video = {"credits_per_second": per_second}
            extra["IMAGINEQ_MODELS"] = json.dumps({"text-to-video": video, "image-to-video": video})
        env = services.deployment_env(
            redis_url=redis_url, s3=s3, simulator_url=simulator.url, bucket="imagineq-bench", extra=extra
        )
        settings = settings_from(env)
        Storage(settings.s3, settings.http).ensure_bucket()
        services.start_web(stack, env, sock=web_socket)
        for queue, concurrency in WORKERS:
            services.start_worker(stack, env, queue, concurrency=concurrency)
        balances_set = {key_id(key): balance for key, balance in zip(KEYS, BALANCES, strict=True)}
        requests.post(f"{sim}/config", json={"credits": balances_set}, timeout=10).raise_for_status()
        started_beat = time.time()
        services.start_beat(stack, env)
        producer = Producer(settings)
        balances = Balances(producer.redis, producer.keys)
        services.wait_until(
            lambda: all((b.read_at or 0) > started_beat for b in balances.read(["acct0", "acct1"])),
            90,
            "beat's first balance reading",
        )
        try:
            print(f"enqueueing {jobs} jobs from {producers} producers", flush=True)
            crowd = Producers(producer, principals, max(3, jobs // producers), seed=7)
            began = time.monotonic()
            crowd.run()
            refill_resume_s, refilled = _drain(producer, crowd.jobs, sim, began)
            done = [producer.get(job.id) for job in crowd.jobs]
        finally:
            producer.close()
        stats = requests.get(f"{sim}/stats", timeout=30).json()
        tasks = requests.get(f"{sim}/tasks", timeout=30).json()["tasks"]
        producer = Producer(settings)
        ledger = Ledger(producer.redis, producer.keys)
        charged = ledger.totals().get("c|*|t", 0.0)
        policy = CreditPolicy(settings)
        overshoot = 0.0
        for name in principals:
            day = ledger.budgets(policy, name)[0]
            if day.limit is not None:
                overshoot += max(0.0, day.charged + day.reserved - day.limit)
        producer.close()
        rate = enqueue_rate(redis_url, env, enqueue_jobs)
    upstream = round(sum(entry["credits_spent"] for entry in stats["per_key"].values()), 2)
    errors_402 = sum(entry["errors_by_code"].get("402", 0) for entry in stats["per_key"].values())
    by_task = {task["taskId"]: task for task in tasks}
    errors = [
        abs(job.estimate - by_task[job.task_id]["credits"]) / by_task[job.task_id]["credits"]
        for job in done
        if job is not None and job.task_id in by_task and job.estimate is not None
    ]
    states: dict[str, int] = {}
    for job in done:
        key = job.state.value if job is not None else "gone"
        states[key] = states.get(key, 0) + 1
    print(
        f"{len(crowd.jobs)} jobs accepted, {crowd.refused} refused over budget, {crowd.canceled} canceled; "
        f"ended {states}; {len(tasks)} tasks; refilled: {refilled}"
    )
    print(f"ledger charged {charged:.2f}, upstream balances lost {upstream:.2f}; 402s: {errors_402}")
    return {
        "ledger_minus_upstream": round(charged - upstream, 2),
        "budget_overshoot": round(overshoot, 2),
        "upstream_402": errors_402,
        "estimate_error_pct": round(100 * sum(errors) / len(errors), 3) if errors else float("nan"),
        "enqueue_per_s": round(rate),
        "jobs": len(crowd.jobs),
        "refused": crowd.refused,
        "canceled": crowd.canceled,
        "failed": states.get("failed", 0),
        "stored": states.get("stored", 0),
        "charged": round(charged, 2),
        "refill_resume_s": round(refill_resume_s, 1) if refilled else float("nan"),
    }


def _drain(producer: Producer, jobs: list[Job], sim: str, began: float) -> tuple[float, bool]:
    """Wait for every job to end; once nothing but jobs waiting for credits is left (no job ended for a while
    and the first account cannot pay), refill it as an operator would. Returns (seconds from the refill to
    the next creation, whether it was refilled)."""
    deadline = time.monotonic() + 1800
    refilled_at: float | None = None
    resumed_s = 0.0
    last_change, last_open = time.monotonic(), -1
    while time.monotonic() < deadline:
        records = [producer.get(job.id) for job in jobs]
        still = [job for job in records if job is not None and not job.state.terminal]
        if not still:
            return resumed_s, refilled_at is not None
        if len(still) != last_open:
            last_change, last_open = time.monotonic(), len(still)
        stalled = time.monotonic() - last_change > 45
        if refilled_at is None and stalled and all(job.state in (JobState.QUEUED, JobState.WAITING) for job in still):
            created_before = requests.get(f"{sim}/stats", timeout=10).json()["created"]
            requests.post(f"{sim}/config", json={"credits": {key_id(KEYS[0]): 60000}}, timeout=10).raise_for_status()
            refilled_at = time.monotonic()
            print(f"{len(still)} jobs wait for credits after {refilled_at - began:.0f}s: refilled acct0", flush=True)
            while requests.get(f"{sim}/stats", timeout=10).json()["created"] == created_before:
                if time.monotonic() - refilled_at > 300:
                    break
                time.sleep(0.5)
            resumed_s = time.monotonic() - refilled_at
        time.sleep(2)
    raise TimeoutError("jobs still open after 30 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500, help="jobs the producers offer (default 500)")
    parser.add_argument("--producers", type=int, default=20, help="concurrent producers, one principal each")
    parser.add_argument("--fail-rate", type=float, default=0.08, help="tasks the simulator fails (default 0.08)")
    parser.add_argument("--enqueue", type=int, default=20_000, help="jobs for the enqueue_many rate (default 20000)")
    parser.add_argument(
        "--skew", type=float, default=0.0, help="price videos this %% below the upstream, which reports its own figures"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagineq-bench-credits-") as folder:
        result = run(args.jobs, args.producers, args.fail_rate, args.enqueue, args.skew, Path(folder))
    print("RESULT " + " ".join(f"{name}={value}" for name, value in result.items()))


if __name__ == "__main__":
    main()
