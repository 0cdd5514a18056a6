"""Webhook latency and throughput: ``--jobs`` jobs (default 1,000) stored, each POSTed to a receiver.

A deployment on private services (Redis, SeaweedFS, the simulator generating at once, quotas lifted as in
``bench/pipeline.py``), the Procfile's worker layout for ``submit``/``poll``/``store`` at 2 processes each
and ``notify`` as the Procfile runs it (``-c 8``, its dispatcher thread); every job carries a
``notify_url`` pointing at a receiver in this process (a threaded HTTP server on loopback) that verifies
each delivery's Standard Webhooks signature and notes when it arrived. Per job, the latency is the time
from its ``stored`` timestamp (Redis clock, the same host) to the arrival of its ``job.stored`` delivery.

    RESULT notify_p50_s=… notify_p95_s=… deliveries_per_s=… lost=… jobs=…

``--rate N`` enqueues N jobs per second instead of all at once (the deployment then is not saturated).
``deliveries_per_s`` is the deliveries over the time from the first arrival to the last; ``lost`` the
stored jobs whose delivery had not arrived 60 s after the last job was stored.
Goals: p50 ≤ 0.2 s, p95 ≤ 0.5 s, lost 0.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the test deployment

from standardwebhooks.webhooks import Webhook

from bench.pipeline import SIMULATOR_ARGS, UNLIMITED
from core.jobs import JobState
from devstack.deployment import deployment

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.rejected = 0
        self.lock = threading.Lock()
        receiver = self
        verifier = Webhook(SECRET)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                arrived = time.time()
                try:
                    payload = verifier.verify(body, {k.lower(): v for k, v in self.headers.items()})
                    with receiver.lock:
                        receiver.arrivals.setdefault(payload["data"]["job"]["id"], arrived)
                    status = 200
                except Exception:
                    with receiver.lock:
                        receiver.rejected += 1
                    status = 400
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _dispatch_times(dep: Any, records: list[Any], url: str) -> list[tuple[Any, float]]:
    """(job, when its delivery record was written), from each job's delivery log and record."""
    import hashlib

    out = []
    for job in records:
        log = dep.producer.redis.lrange(dep.producer.keys.job_deliveries(job.id), -1, -1)
        if not log:
            continue
        event_id = json.loads(log[0])["event_id"]
        delivery_id = hashlib.sha256(f"{event_id}|job|{url}".encode()).hexdigest()[:32]
        created = dep.producer.redis.hget(dep.producer.keys.delivery(delivery_id), "created_ms")
        if created:
            out.append((job, int(created) / 1000))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=0, help="enqueue this many jobs per second (default 0: all at once)"
    )
    args = parser.parse_args()
    receiver = Receiver()
    env = {
        "IMAGINEQ_ACCOUNTS": UNLIMITED,
        "IMAGINEQ_SUBMIT_RATE_LIMIT": "0/s",
        "IMAGINEQ_POLL_RATE_LIMIT": "0/s",
        "IMAGINEQ_NOTIFY__SIGNING_SECRET": SECRET,
        "IMAGINEQ_NOTIFY__ALLOW_NETWORKS": '["127.0.0.0/8"]',
    }
    with deployment(
        Path(tempfile.mkdtemp(prefix="bench-notify-")),
        simulator_args=SIMULATOR_ARGS,
        env=env,
        workers={"submit": 2, "poll": 2, "store": 2, "notify": 8},
    ) as dep:
        warm = dep.producer.enqueue("warm-up", notify_url=receiver.url)
        dep.wait_for(lambda: warm.id in receiver.arrivals, 60, "the warm-up delivery")
        started = time.perf_counter()
        requests = [{"prompt": f"bench prompt {i}", "notify_url": receiver.url} for i in range(args.jobs)]
        if args.rate > 0:
            jobs = []
            for index, request in enumerate(requests):
                time.sleep(max(0.0, started + index / args.rate - time.perf_counter()))
                jobs += dep.producer.enqueue_many([request])
        else:
            jobs = dep.producer.enqueue_many(requests)
        ids = [job.id for job in jobs]
        dep.wait_for(
            lambda: dep.producer.jobs.count_by_state().get(JobState.STORED, 0) >= args.jobs + 1, 600, "every job stored"
        )
        stored_s = time.perf_counter() - started
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(job_id in receiver.arrivals for job_id in ids):
            time.sleep(0.1)
        records = [job for job in dep.producer.jobs.get_many(ids) if job is not None]
        dispatched = _dispatch_times(dep, records, receiver.url)

    latencies = sorted(
        receiver.arrivals[job.id] - job.timestamps["stored"] for job in records if job.id in receiver.arrivals
    )
    arrivals = sorted(receiver.arrivals[job_id] for job_id in ids if job_id in receiver.arrivals)
    lost = sum(1 for job in records if job.id not in receiver.arrivals)
    span = max(arrivals[-1] - arrivals[0], 1e-9) if len(arrivals) > 1 else 1e-9
    p50, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[-1]
    print(
        f"{args.jobs} jobs stored in {stored_s:.1f} s; {len(arrivals)} deliveries over {span:.1f} s; "
        f"stored -> arrival p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
        f"{receiver.rejected} rejected signatures; {json.dumps({'lost': lost})}"
    )
    to_record = sorted(at - job.timestamps["stored"] for job, at in dispatched)
    to_arrival = sorted(receiver.arrivals[job.id] - at for job, at in dispatched if job.id in receiver.arrivals)
    if len(to_record) > 1 and len(to_arrival) > 1:
        print(
            "where the time goes: stored -> delivery record (the dispatcher) "
            f"p50 {_ms(statistics.median(to_record))}, p95 {_ms(statistics.quantiles(to_record, n=20)[-1])}; "
            "record -> arrival (the deliver task's queue and the POST) "
            f"p50 {_ms(statistics.median(to_arrival))}, p95 {_ms(statistics.quantiles(to_arrival, n=20)[-1])}"
        )
    print(
        f"RESULT notify_p50_s={p50:.3f} notify_p95_s={p95:.3f} deliveries_per_s={len(arrivals) / span:.1f}"
        f" lost={lost} jobs={args.jobs} rate={args.rate:g}"
    )


if __name__ == "__main__":
    main()
