"""Workflows at real time: how soon a parent's end releases its children, and that each runs on its
parent's account and is created exactly once.

A real deployment (private Redis, S3 server, the simulator with each model's documented generation time
and caps, callbacks on, two accounts, the Procfile's workers) runs ``--workflows`` workflows of one image →
videos of images 0 and 3 → an extension of the first video, started one every ``--every`` seconds (so the
accounts have free slots: the release time measures ImagineQ, not a full pool). Figures:

- **release**: from a parent stored (its record's ``at_stored``) to its child's createTask (the
  simulator's ``createTime`` of the child's task), per child, p50 and p95;
- **wrong_account**: children whose task ran on another account than their parent's;
- **creations**: the simulator's tasks, against ``creations_expected`` (4 per workflow; a node created
  twice would add one).

Prints ``RESULT workflows=… completed=… creations=… creations_expected=… wrong_account=… release_p50_s=…
release_p95_s=…`` as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the devstack

from devstack import services
from devstack.deployment import settings_from
from producers.api import Producer
from workers.storage import Storage

HMAC_KEY = "bench-hmac-key"
KEYS = ("bench-key-a", "bench-key-b")
#: As the Procfile runs them.
WORKERS = (("submit", 4), ("poll", 8), ("store", 4))


def workflow_body(i: int) -> dict[str, object]:
    return {
        "nodes": [
            {"name": "image", "model": "text-to-image", "prompt": f"a lighthouse, take {i}", "aspect_ratio": "16:9"},
            {"name": "first", "model": "image-to-video", "parent": "image", "index": 0},
            {"name": "fourth", "model": "image-to-video", "parent": "image", "index": 3},
            {"name": "longer", "model": "extend", "parent": "first", "extend_times": "6"},
        ]
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(workflows: int, every_s: float, log_dir: Path) -> dict[str, float]:
    with services.terminate_on_signals(), services.LocalStack(log_dir) as stack:
        redis_url = stack.redis()
        s3 = stack.s3()
        sim_args = ["--images-per-task", "4", "--video-bytes", "262144", "--hmac-key", HMAC_KEY]
        sim_args += [arg for key in KEYS for arg in ("--api-key", key)]
        simulator = stack.simulator(sim_args)
        web_socket = services.reserve_port()
        extra = {
            "IMAGINEQ_ACCOUNTS": json.dumps(
                [{"name": f"acct{i}", "api_key": key, "base_url": simulator.url} for i, key in enumerate(KEYS)]
            ),
            "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{web_socket.getsockname()[1]}",
            "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
        }
        env = services.deployment_env(
            redis_url=redis_url, s3=s3, simulator_url=simulator.url, bucket="imagineq-bench", extra=extra
        )
        settings = settings_from(env)
        Storage(settings.s3, settings.http).ensure_bucket()
        services.start_web(stack, env, sock=web_socket)
        for queue, concurrency in WORKERS:
            services.start_worker(stack, env, queue, concurrency=concurrency)
        producer = Producer(settings)
        try:
            made = []
            start = time.monotonic()
            for i in range(workflows):
                time.sleep(max(0.0, start + i * every_s - time.monotonic()))
                made.append(producer.submit_workflow(workflow_body(i))[0])
            deadline = time.monotonic() + 600
            summaries = []
            for workflow in made:
                while True:
                    summary = producer.workflow(workflow.id) or {}
                    if summary.get("state") != "running" or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                summaries.append(summary)
            jobs = {node["job_id"]: producer.get(node["job_id"]) for summary in summaries for node in summary["nodes"]}
        finally:
            producer.close()
        tasks = requests.get(f"{simulator.url}/__sim__/tasks", timeout=30).json()["tasks"]
    by_task = {task["taskId"]: task for task in tasks}
    releases: list[float] = []
    wrong = 0
    for summary in summaries:
        nodes = {node["name"]: jobs[node["job_id"]] for node in summary["nodes"]}
        for child, parent in (("first", "image"), ("fourth", "image"), ("longer", "first")):
            kid, mother = nodes[child], nodes[parent]
            if kid is None or mother is None or not kid.task_id or "stored" not in mother.timestamps:
                continue
            task, parent_task = by_task[kid.task_id], by_task[mother.task_id or ""]
            if task["key_id"] != parent_task["key_id"] or kid.account != mother.account:
                wrong += 1
            releases.append(task["createTime"] / 1000 - mother.timestamps["stored"])
    completed = sum(1 for summary in summaries if summary.get("state") == "completed")
    print(
        f"{workflows} workflows, {completed} completed; {len(tasks)} creations for {4 * workflows} nodes; "
        f"release (parent stored → child's createTask) over {len(releases)} children: "
        f"p50 {quantile(releases, 0.5):.3f}s p95 {quantile(releases, 0.95):.3f}s max {max(releases, default=0):.3f}s"
    )
    return {
        "workflows": workflows,
        "completed": completed,
        "creations": len(tasks),
        "creations_expected": 4 * workflows,
        "wrong_account": wrong,
        "release_p50_s": round(quantile(releases, 0.5), 3),
        "release_p95_s": round(quantile(releases, 0.95), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=50, help="workflows to run (default 50)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between workflow starts (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagineq-bench-workflow-") as folder:
        result = run(args.workflows, args.every, Path(folder))
    print("RESULT " + " ".join(f"{name}={value}" for name, value in result.items()))


if __name__ == "__main__":
    main()
