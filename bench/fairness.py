"""Fair share at real time: do principals get the creations their weights say, and does an interactive
newcomer get through while two deep backlogs wait?

One account of 30 slots, generation 10–25 s, callbacks on, production settings, the Procfile's workers
(``web``, ``submit -c 4``, ``poll -c 8``, ``store -c 4``) on fresh private services. Principal A (weight 1)
and principal B (weight 3) each enqueue 1,000 jobs at once; principal C sends one interactive job every
2 s. The run is measured for ``--seconds`` (default 300), both backlogs staying deep throughout:

- share error: A's and B's shares of their own creations against 1:3, the worse of the two, in %;
- C's wait: from its enqueue to its createTask (the job's ``submitting`` time), p50 and p95;
- slot use: the tasks' in-progress time between the first and the last creation ÷ (30 × that span), from
  the simulator's own record, as ``bench/slots.py`` computes it;
- CPU per creation: every process of the run (Redis, S3, simulator, web, workers), as ``bench/slots.py``;
- c_sent / c_started: C's jobs sent, and those that reached createTask within the run (the waits are
  those of the started ones: a job still waiting at the end has waited longer than any of them).

    RESULT share_error_max_pct=… c_wait_p50_s=… c_wait_p95_s=… slot_use=… cpu_ms_per_creation=… c_sent=…
           c_started=…

What C may expect: fair share gives C its weight's share of the creations, 1/5 with the defaults, about
0.34 per second with 30 slots turning over every 17.5 s; one job every 2 s is 0.5. C then asks for more than
its share and queues behind A and B like them; and the account's 300 creations per hour end every creation
after about three minutes. ``--c-weight`` and ``--creations-per-hour`` (both the account's and the
simulated upstream's) measure the other case: a C within its share, on an account with a larger plan.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the devstack

from bench.slots import cpu_s
from core.jobs import Job, JobState
from devstack import services
from devstack.deployment import settings_from
from producers.api import Producer
from workers.storage import Storage

SLOTS = 30
HMAC_KEY = "bench-hmac-key"
WORKERS = (("submit", 4), ("poll", 8), ("store", 4))


def principals(c_weight: float) -> list[dict[str, Any]]:
    return [
        {"name": "A", "token": "bench-a-token-0123456789abcdef", "weight": 1},
        {"name": "B", "token": "bench-b-token-0123456789abcdef", "weight": 3},
        {"name": "C", "token": "bench-c-token-0123456789abcdef", "weight": c_weight},
    ]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def enqueue_as(producer: Producer, owner: str, count: int, tag: str) -> list[Job]:
    requests_ = producer.prepare([{"prompt": f"{owner} {tag} {i}"} for i in range(count)], owner=owner)
    return [job for job, _ in producer.enqueue_prepared(requests_)]


def run(log_dir: Path, seconds: float, backlog: int, *, c_weight: float, per_hour: int) -> dict[str, Any]:
    with services.terminate_on_signals(), services.LocalStack(log_dir) as stack:
        redis_url = stack.redis()
        s3 = stack.s3()
        simulator = stack.simulator(
            ["--video-bytes", "65536", "--hmac-key", HMAC_KEY, "--max-per-window", str(per_hour)]
        )
        web_socket = services.reserve_port()
        env = services.deployment_env(
            redis_url=redis_url,
            s3=s3,
            simulator_url=simulator.url,
            bucket="imagineq-bench",
            extra={
                "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(principals(c_weight)),
                "IMAGINEQ_ACCOUNTS": json.dumps(
                    [
                        {
                            "name": "default",
                            "api_key": "sim-key",
                            "base_url": simulator.url,
                            "max_creations_per_window": per_hour,
                        }
                    ]
                ),
                "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{web_socket.getsockname()[1]}",
                "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
            },
        )
        settings = settings_from(env)
        Storage(settings.s3, settings.http).ensure_bucket()
        processes = {"simulator": simulator, "redis": stack.services[0], "s3": stack.services[1]}
        processes["web"] = services.start_web(stack, env, sock=web_socket)
        for queue, concurrency in WORKERS:
            processes[queue] = services.start_worker(stack, env, queue, concurrency=concurrency)
        cpu_before = {name: cpu_s(service.process.pid) for name, service in processes.items()}
        producer = Producer(settings)
        try:
            backlogs = enqueue_as(producer, "A", backlog, "backlog") + enqueue_as(producer, "B", backlog, "backlog")
            started = time.monotonic()
            newcomer: list[Job] = []
            while time.monotonic() - started < seconds:
                newcomer += enqueue_as(producer, "C", 1, f"at {time.monotonic() - started:.0f}s")
                time.sleep(2.0)
            cpu = sum(cpu_s(service.process.pid) - cpu_before[name] for name, service in processes.items())
            jobs = [job for job in producer.jobs.get_many([job.id for job in backlogs + newcomer]) if job is not None]
            tasks = requests.get(f"{simulator.url}/__sim__/tasks", timeout=30).json()["tasks"]
        finally:
            producer.close()
    by_task = {job.task_id: job for job in jobs if job.task_id}
    created = [(task["createTime"] / 1000, task["completeTime"] / 1000, by_task.get(task["taskId"])) for task in tasks]
    owners = [job.owner for _, _, job in created if job is not None]
    a, b = owners.count("A"), owners.count("B")
    errors = [abs(a / (a + b) - 0.25) / 0.25 * 100, abs(b / (a + b) - 0.75) / 0.75 * 100] if a + b else [float("nan")]
    waits = [
        job.timestamps[JobState.SUBMITTING.value] - job.created_at
        for job in jobs
        if job.owner == "C" and JobState.SUBMITTING.value in job.timestamps
    ]
    spans = sorted((start, end) for start, end, _ in created)
    first, last = spans[0][0], spans[-1][0]
    busy = sum(max(0.0, min(end, last) - max(start, first)) for start, end in spans)
    return {
        "creations": len(created),
        "creations_a": a,
        "creations_b": b,
        "creations_c": owners.count("C"),
        "c_sent": sum(1 for job in jobs if job.owner == "C"),
        "c_started": len(waits),
        "share_error_max_pct": max(errors),
        "c_wait_p50_s": quantile(waits, 0.5),
        "c_wait_p95_s": quantile(waits, 0.95),
        "slot_use": busy / (SLOTS * (last - first)) if last > first else float("nan"),
        "cpu_ms_per_creation": cpu * 1000 / max(1, len(created)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="how long C keeps sending (default 300)")
    parser.add_argument("--backlog", type=int, default=1000, help="jobs A and B each queue at once (default 1000)")
    parser.add_argument("--c-weight", type=float, default=1.0, help="C's weight (default 1, as A's)")
    parser.add_argument(
        "--creations-per-hour", type=int, default=300, help="the account's creations per hour (default 300)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as folder:
        result = run(Path(folder), args.seconds, args.backlog, c_weight=args.c_weight, per_hour=args.creations_per_hour)
    print(json.dumps(result), file=sys.stderr)
    names = ("share_error_max_pct", "c_wait_p50_s", "c_wait_p95_s", "slot_use", "cpu_ms_per_creation")
    counts = f"c_sent={result['c_sent']} c_started={result['c_started']}"
    print("RESULT " + " ".join(f"{name}={result[name]:.3f}" for name in names) + " " + counts)


if __name__ == "__main__":
    main()
