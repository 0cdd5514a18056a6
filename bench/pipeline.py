"""End-to-end pipeline throughput against raw Celery, in one run, each on fresh private services.

The simulator generates instantly (gen-time 0), quotas are lifted (Redis limits out of reach, no Celery
``rate_limit``: the baselines have none) and videos are 1 KB. Three runs, same worker layout (one worker
per queue, ``--concurrency`` processes each) and the same Celery configuration:

1. ``raw_celery``: the same message flow (submit → chain(poll, store)) with no-op tasks (``noop_app``).
2. ``io_floor``: that flow with tasks making only the calls a job cannot do without — createTask,
   recordInfo, the result download, the video and sidecar PUTs — with plain requests and boto3.
3. ``pipeline``: ImagineQ itself (job records, Lua compare-and-sets, quota scripts, checks, hashing).

Each run also prints the CPU milliseconds per job spent by every process (workers' main and pool
processes, Redis, the S3 server, the simulator): on a small machine they all share the same cores.

    RESULT pipeline_jobs_per_s=… raw_celery_jobs_per_s=… overhead_ratio=… io_floor_jobs_per_s=…
           io_floor_ratio=… overhead_vs_io_floor=…

Runs 2 and 3 happen once per S3 server of ``--s3`` (default ``seaweedfs,moto``: the local default and
the in-memory mock it replaced, side by side); RESULT names the first plainly and prefixes the others
(``moto_pipeline_jobs_per_s=…``).

``--tracing``: instead, the pipeline alone, with traces off and on (exported over OTLP/HTTP to a sink in the
bench process, which discards them), interleaved; ``tracing_overhead_pct`` is the pipeline's CPU per job with
traces on over off, less 1 (the sink's own CPU is the collector's, not counted), and
``tracing_throughput_pct`` the drop in jobs per second. The producer (this process) starts each job's trace in
both; ``--sample R`` keeps a share R of the traces (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``).

    RESULT tracing_overhead_pct=… tracing_throughput_pct=… cpu_ms_per_job_off=… cpu_ms_per_job_on=…

Medians of ``--rounds`` interleaved rounds (the machine is shared and noisy); every round is printed.
overhead_ratio = raw ÷ pipeline (the issue's figure); io_floor_ratio = raw ÷ io_floor (what the calls
alone cost); overhead_vs_io_floor = io_floor ÷ pipeline (what ImagineQ adds to them).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench reuses the test deployment

from core.jobs import JobState
from devstack import services
from devstack.deployment import deployment, settings_from

#: Instant generation, 1 KB videos, no simulated quota: the same for the pipeline and the I/O floor.
SIMULATOR_ARGS = (
    "--gen-time",
    "0:0",
    "--video-bytes",
    "1024",
    "--max-in-progress",
    "1000000",
    "--max-per-window",
    "1000000000",
    "--record-info-per-s",
    "0",
)
UNLIMITED = json.dumps(
    [
        {
            "name": "bench",
            "api_key": "sim-key",
            "base_url": "{simulator}",
            "max_in_progress": 100000,
            "max_creations_per_window": 10**9,
            "record_info_per_s": 100000,
        }
    ]
)


def _ready(service: services.Service) -> Callable[[], bool]:
    """True once the Celery worker ``service`` logged that it is ready."""
    return lambda: "ready." in service.log_tail(100_000)


def _role(process: psutil.Process) -> str:
    """A short name for a process of the run: s3, simulator, redis, or the worker's queue (main/pool)."""
    try:
        argv = process.cmdline()
    except psutil.Error:
        return "gone"
    line = " ".join(argv)
    for name, role in (("s3server", "s3"), ("weed", "s3"), ("simulator", "simulator"), ("redis-server", "redis")):
        if name in line:
            return role
    if "-Q" in argv:
        queue = argv[argv.index("-Q") + 1]
        parent = process.parent()
        pool = parent is not None and "-Q" in parent.cmdline()
        return f"{queue}-{'pool' if pool else 'main'}"
    return "bench" if process.pid == psutil.Process().pid else "other"


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every descendant, with its role."""
    me = psutil.Process()
    out: dict[int, tuple[str, float]] = {}
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            out[process.pid] = (_role(process), times.user + times.system)
    return out


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, summed by role (processes alive at the end)."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent[role] = spent.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def _cpu_line(spent: dict[str, float], jobs: int, elapsed: float) -> str:
    total = sum(spent.values())
    parts = " ".join(f"{role}={seconds / jobs * 1000:.1f}" for role, seconds in spent.items() if seconds > 0)
    return f"{total / jobs * 1000:.1f} ms CPU/job ({total / elapsed:.2f} cores busy): {parts}"


def run_pipeline(
    jobs: int,
    concurrency: int,
    log_dir: Path,
    s3_kind: str,
    *,
    otlp: str | None = None,
    extra: dict[str, str] | None = None,
) -> tuple[float, str, dict[str, str]]:
    env = {"IMAGINEQ_ACCOUNTS": UNLIMITED, "IMAGINEQ_SUBMIT_RATE_LIMIT": "0/s", "IMAGINEQ_POLL_RATE_LIMIT": "0/s"}
    if otlp is not None:
        env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, **(extra or {})})
    with deployment(
        log_dir,
        s3_kind=s3_kind,
        simulator_args=SIMULATOR_ARGS,
        env=env,
        workers={"submit": concurrency, "poll": concurrency, "store": concurrency},
    ) as dep:
        dep.producer.enqueue_many([{"prompt": "warm-up"}])
        dep.wait_for(lambda: dep.producer.jobs.count_by_state().get(JobState.STORED, 0) == 1, 60, "warm-up")
        requests = [{"prompt": f"bench prompt {i}"} for i in range(jobs)]
        before = cpu_snapshot()
        started = time.perf_counter()
        dep.producer.enqueue_many(requests)
        dep.wait_for(lambda: _terminal(dep) >= jobs + 1, 600, "every job to end")
        elapsed = time.perf_counter() - started
        spent = cpu_by_role(before, cpu_snapshot())
        cpu = _cpu_line(spent, jobs, elapsed)
        counts = {k.value: v for k, v in dep.producer.jobs.count_by_state().items() if v}
        return (
            elapsed,
            dep.env["IMAGINEQ_REDIS_URL"],
            {
                "states": json.dumps(counts),
                "stages": _stages(dep),
                "cpu": cpu,
                # The pipeline's own processes: not the bench (the producer, and the traces' sink).
                "cpu_ms_per_job": f"{sum(v for role, v in spent.items() if role != 'bench') / jobs * 1000:.3f}",
            },
        )


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


def run_baseline(jobs: int, concurrency: int, log_dir: Path, *, io: bool, s3_kind: str = "") -> tuple[float, str]:
    """Raw Celery (``bench/noop_app.py``) on fresh services; ``io``: tasks make the unavoidable calls."""
    from celery import Celery

    from bench.noop_app import DONE_KEY
    from config.celery import celery_config

    with services.LocalStack(log_dir) as stack:
        url = stack.redis()
        env = {"IMAGINEQ_REDIS_URL": url, "IMAGINEQ_API_KEY": "sim-key", "PYTHONPATH": str(Path.cwd())}
        if io:
            simulator = stack.simulator(SIMULATOR_ARGS)
            env |= services.deployment_env(redis_url=url, s3=stack.s3(kind=s3_kind), simulator_url=simulator.url)
            env["BENCH_IO"] = "1"
        settings = settings_from(env)
        if io:
            from workers.storage import Storage

            Storage(settings.s3, settings.http).ensure_bucket()
        for queue in ("submit", "poll", "store"):
            argv = services.worker_argv(queue, concurrency=concurrency, name=f"noop-{queue}")
            argv[argv.index("workers")] = "bench.noop_app"
            service = stack.spawn(f"noop-{queue}", argv, env)
            services.wait_until(_ready(service), 60, f"noop {queue}")
        producer_app = Celery("noop-producer")
        producer_app.conf.update(celery_config(settings))
        client = redis.Redis.from_url(url)
        producer_app.send_task("bench.submit", ("warm-up",), queue="submit")
        services.wait_until(lambda: int(cast("bytes | None", client.get(DONE_KEY)) or 0) == 1, 60, "warm-up")
        before = cpu_snapshot()
        started = time.perf_counter()
        with producer_app.producer_or_acquire() as producer, producer.batch(max_size=500):
            for _ in range(jobs):
                producer_app.send_task("bench.submit", (uuid.uuid4().hex,), queue="submit", producer=producer)
        services.wait_until(lambda: int(cast("bytes | None", client.get(DONE_KEY)) or 0) >= jobs + 1, 600, "noop jobs")
        elapsed = time.perf_counter() - started
        return elapsed, _cpu_line(cpu_by_role(before, cpu_snapshot()), jobs, elapsed)


def otlp_sink() -> str:
    """An OTLP/HTTP endpoint in this process that takes spans and discards them (a collector's stand-in)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def tracing_overhead(jobs: int, concurrency: int, rounds: int, root: Path, sample: float | None) -> None:
    sink = otlp_sink()
    # The producer (this process) starts each job's trace, as a traced deployment's producers do; its CPU is
    # not counted (nor the sink's). With a ratio, the root's sampling decision holds for the whole trace.
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink
    sampling: dict[str, str] = {}
    if sample is not None:
        sampling = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(sample)}
        os.environ.update(sampling)
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    rate: dict[str, list[float]] = {"off": [], "on": []}
    for n in range(1, rounds + 1):
        print(f"round {n}: {jobs} jobs each")
        for mode in ("off", "on") if n % 2 else ("on", "off"):
            otlp = sink if mode == "on" else None
            elapsed, _, info = run_pipeline(
                jobs, concurrency, root / f"tracing-{mode}-{n}", "seaweedfs", otlp=otlp, extra=sampling
            )
            cpu[mode].append(float(info["cpu_ms_per_job"]))
            rate[mode].append(jobs / elapsed)
            print(f"  traces {mode:3} {elapsed:5.1f}s  {info['cpu']}")
        sys.stdout.flush()
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    rate_off, rate_on = statistics.median(rate["off"]), statistics.median(rate["on"])
    overhead, slower = (on / off - 1) * 100, (1 - rate_on / rate_off) * 100
    print(
        f"RESULT tracing_overhead_pct={overhead:.1f} tracing_throughput_pct={slower:.1f} cpu_ms_per_job_off={off:.2f}"
        f" cpu_ms_per_job_on={on:.2f} jobs_per_s_off={rate_off:.1f} jobs_per_s_on={rate_on:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker (one worker per queue)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the three runs, interleaved; RESULT gives medians"
    )
    parser.add_argument(
        "--s3", default="seaweedfs,moto", help="S3 servers to run the I/O floor and the pipeline on (first: RESULT)"
    )
    parser.add_argument("--tracing", action="store_true", help="measure traces' overhead instead (see above)")
    parser.add_argument(
        "--sample", type=float, default=None, help="with --tracing: keep this share of the traces (parent-based ratio)"
    )
    args = parser.parse_args()
    kinds = args.s3.split(",")
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    if args.tracing:
        tracing_overhead(args.jobs, args.concurrency, args.rounds, root, args.sample)
        return
    rates: dict[str, list[float]] = {"raw": []}
    for n in range(1, args.rounds + 1):
        raw_s, raw_cpu = run_baseline(args.jobs, args.concurrency, root / f"raw-{n}", io=False)
        rates["raw"].append(args.jobs / raw_s)
        print(f"round {n}: {args.jobs} jobs each")
        print(f"  raw                 {raw_s:5.1f}s  {raw_cpu}")
        for kind in kinds:
            floor_s, floor_cpu = run_baseline(
                args.jobs, args.concurrency, root / f"io-{kind}-{n}", io=True, s3_kind=kind
            )
            pipeline_s, _, info = run_pipeline(args.jobs, args.concurrency, root / f"pipeline-{kind}-{n}", kind)
            rates.setdefault(f"{kind}-floor", []).append(args.jobs / floor_s)
            rates.setdefault(f"{kind}-pipeline", []).append(args.jobs / pipeline_s)
            print(f"  pipeline ({kind:9}) {pipeline_s:5.1f}s  {info['cpu']}  states {info['states']}")
            print(f"                      mean time in each state: {info['stages']}")
            print(f"  io floor ({kind:9}) {floor_s:5.1f}s  {floor_cpu}")
        sys.stdout.flush()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    raw_rate = medians["raw"]
    parts = [f"raw_celery_jobs_per_s={raw_rate:.1f}"]
    for index, kind in enumerate(kinds):
        prefix = "" if index == 0 else f"{kind}_"
        floor_rate, pipeline_rate = medians[f"{kind}-floor"], medians[f"{kind}-pipeline"]
        parts += [
            f"{prefix}pipeline_jobs_per_s={pipeline_rate:.1f}",
            f"{prefix}overhead_ratio={raw_rate / pipeline_rate:.2f}",
            f"{prefix}io_floor_jobs_per_s={floor_rate:.1f}",
            f"{prefix}io_floor_ratio={raw_rate / floor_rate:.2f}",
            f"{prefix}overhead_vs_io_floor={floor_rate / pipeline_rate:.2f}",
        ]
    print(f"RESULT s3={kinds[0]} " + " ".join(parts))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
