"""Every pool busy at once? A mixed burst of the family's models on one account, at real time.

The simulator enforces each model's documented limits per key (text-to-video 30 in progress / 300 per
hour, image-to-video 25 / 250, text-to-image 50 / 500), generates in each model's documented time
(10–25 s, 15–30 s, 5–15 s) and returns six images per text-to-image task. ImagineQ runs as the Procfile runs
it, with callbacks on, on production settings: ``web``, one ``submit`` worker (``-c 4``), one ``poll``
(``-c 8``), one ``store`` (``-c 4``), on fresh private services per run. The burst, enqueued at once:
150 text-to-video jobs (durations 6/10/15 s, 480p and 720p), 100 image-to-video jobs (five different
images, given as files: uploaded once each) and 200 text-to-image jobs.

Per pool, from the simulator's own record of each task, as ``bench/slots.py`` computes it: slot use = the
pool's in-progress time between its first and its last creation ÷ (its cap × that span), and its peak.
Every output is checked against the bytes the simulator served (sha256 per output).

A second run turns the account's createTask rate on (20 requests per 10 s, on the simulator and in
ImagineQ) with a third of the burst: the rate binds there, so only its 429s count.

    RESULT slot_use_t2v=… slot_use_i2v=… slot_use_t2i=… peak_t2v=… peak_i2v=… peak_t2i=… upstream_429=…
           outputs_stored=… outputs_expected=… rate_run_429=… rate_run_max_requests_per_10s=…
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the devstack

from bench.slots import wait_terminal
from core.jobs import JobState
from devstack import services
from devstack.deployment import settings_from
from producers.api import Producer
from workers.storage import Storage, build_s3_client

HMAC_KEY = "bench-hmac-key"
VIDEO_BYTES = 1024 * 1024
WORKERS = (("submit", 4), ("poll", 8), ("store", 4))
CAPS = {"text-to-video": 30, "image-to-video": 25, "text-to-image": 50}
SHORT = {"text-to-video": "t2v", "image-to-video": "i2v", "text-to-image": "t2i"}


def images() -> list[bytes]:
    out = []
    for index in range(5):
        buffer = io.BytesIO()
        Image.new("RGB", (256 + 16 * index, 256), (40 * index, 90, 200 - 30 * index)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def burst(t2v: int, i2v: int, t2i: int) -> list[dict[str, Any]]:
    pictures = images()
    jobs: list[dict[str, Any]] = []
    for i in range(t2v):
        jobs.append(
            {
                "model": "text-to-video",
                "prompt": f"a mixed burst clip {i}",
                "duration": ("6", "10", "15")[i % 3],
                "resolution": ("480p", "720p")[i % 2],
                "aspect_ratio": ("16:9", "9:16", "2:3")[i % 3],
            }
        )
    for i in range(i2v):
        jobs.append({"model": "image-to-video", "prompt": f"animate {i}", "image": pictures[i % len(pictures)]})
    for i in range(t2i):
        jobs.append({"model": "text-to-image", "prompt": f"a mixed burst picture {i}", "aspect_ratio": "1:1"})
    return jobs


def run(log_dir: Path, counts: tuple[int, int, int], *, rate: bool) -> dict[str, Any]:
    with services.terminate_on_signals(), services.LocalStack(log_dir) as stack:
        redis_url = stack.redis()
        s3 = stack.s3()
        sim_args = ["--video-bytes", str(VIDEO_BYTES), "--images-per-task", "6", "--hmac-key", HMAC_KEY]
        if rate:
            sim_args += ["--create-rate", "20", "--create-rate-window-s", "10"]
        simulator = stack.simulator(sim_args)
        web_socket = services.reserve_port()
        account: dict[str, Any] = {"name": "main", "api_key": "sim-key", "base_url": simulator.url}
        if rate:
            account |= {"create_requests_per_window": 20, "create_requests_window_s": 10}
        env = services.deployment_env(
            redis_url=redis_url,
            s3=s3,
            simulator_url=simulator.url,
            bucket="imagineq-bench",
            extra={
                "IMAGINEQ_ACCOUNTS": json.dumps([account]),
                "IMAGINEQ_INGRESS_TOKENS": json.dumps(["bench-token-0123456789abcdef"]),
                "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{web_socket.getsockname()[1]}",
                "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
            },
        )
        settings = settings_from(env)
        Storage(settings.s3, settings.http).ensure_bucket()
        services.start_web(stack, env, sock=web_socket)
        for queue, concurrency in WORKERS:
            services.start_worker(stack, env, queue, concurrency=concurrency)
        producer = Producer(settings)
        try:
            started = time.monotonic()
            enqueued = producer.enqueue_many(burst(*counts))
            print(f"enqueued {len(enqueued)} jobs in {time.monotonic() - started:.1f}s", file=sys.stderr)
            wait_terminal(producer, len(enqueued), timeout_s=900)
            done = [producer.get(job.id) for job in enqueued]
        finally:
            producer.close()
        tasks = requests.get(f"{simulator.url}/__sim__/tasks", timeout=30).json()["tasks"]
        stats = requests.get(f"{simulator.url}/__sim__/stats", timeout=30).json()
        stored = [job for job in done if job is not None and job.state is JobState.STORED]
        by_task = {task["taskId"]: task for task in tasks}
        s3_client = build_s3_client(settings.s3, settings.http)
        matched = expected = 0
        for job in stored:
            task = by_task[job.task_id]
            expected += task["outputs"]
            for output in job.outputs:
                answer = requests.get(
                    f"{simulator.url}/__sim__/files/{job.task_id}/sha256",
                    params={"index": output["index"]},
                    timeout=30,
                ).json()
                bucket, key = str(output["uri"]).removeprefix("s3://").split("/", 1)
                size = s3_client.head_object(Bucket=bucket, Key=key)["ContentLength"]
                matched += answer["sha256"] == output["sha256"] and size == output["size"]
    pools: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for task in tasks:
        pools[task["pool"]].append((task["createTime"] / 1000, task["completeTime"] / 1000))
    result: dict[str, Any] = {
        "jobs": len(done),
        "stored": len(stored),
        "failed": [(job.id, job.reason, job.error) for job in done if job and job.state is not JobState.STORED][:5],
        "outputs_stored": matched,
        "outputs_expected": expected,
        "upstream_429": stats["rate_limited"],
        "max_requests_per_window": stats["max_create_requests_in_window"],
        "uploads": stats["uploads"],
    }
    for pool, spans in pools.items():
        spans.sort()
        first, last = spans[0][0], spans[-1][0]
        busy = sum(max(0.0, min(end, last) - max(start, first)) for start, end in spans)
        cap = CAPS.get(pool, 10)
        result[f"slot_use_{SHORT.get(pool, pool)}"] = busy / (cap * (last - first)) if last > first else float("nan")
        result[f"peak_{SHORT.get(pool, pool)}"] = stats["pools"][pool]["peak_in_progress"]
        result[f"drain_{SHORT.get(pool, pool)}_s"] = max(end for _, end in spans) - first
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--t2v", type=int, default=150)
    parser.add_argument("--i2v", type=int, default=100)
    parser.add_argument("--t2i", type=int, default=200)
    parser.add_argument("--no-rate-run", action="store_true", help="skip the run with the createTask rate on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as folder:
        mixed = run(Path(folder) / "mixed", (args.t2v, args.i2v, args.t2i), rate=False)
        print(f"mixed burst: {json.dumps(mixed)}", file=sys.stderr)
        rated: dict[str, Any] = {"upstream_429": "skipped", "max_requests_per_window": "skipped"}
        if not args.no_rate_run:
            rated = run(Path(folder) / "rate", (args.t2v // 3, args.i2v // 3, args.t2i // 3), rate=True)
            print(f"with the createTask rate on: {json.dumps(rated)}", file=sys.stderr)
    fields = [f"{name}={mixed[name]:.3f}" for name in ("slot_use_t2v", "slot_use_i2v", "slot_use_t2i")]
    fields += [f"{name}={mixed[name]}" for name in ("peak_t2v", "peak_i2v", "peak_t2i", "upstream_429")]
    fields += [f"outputs_stored={mixed['outputs_stored']}", f"outputs_expected={mixed['outputs_expected']}"]
    fields += [
        f"rate_run_429={rated['upstream_429']}",
        f"rate_run_max_requests_per_10s={rated['max_requests_per_window']}",
    ]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
