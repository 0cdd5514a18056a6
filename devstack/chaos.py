"""The chaos stack and its scenarios: a real stack keeps its promises while things break, one scenario at a
time (``bench/chaos.py`` runs them and prints their figures; ``make chaos`` runs them as tests).


The stack: a private Redis with AOF on a fixed port and directory, a SeaweedFS S3 server (bucket versioning
on, so every write of an object is counted), the simulator (signed callbacks), the web process
(callbacks), two workers per queue, and a loop that sends ``imagineq.reconcile`` every few seconds (the
reconciler's thresholds are shortened to match). Each scenario enqueues a stream of jobs, injects its
faults while they run, then waits for every job to end (the drain deadline) and reports::

    SCENARIO <name> accepted=… stored=… failed=… (reasons) lost=… duplicate_creations=…
             unknown_outcome=… duplicate_s3_writes=… peak_in_progress=… violations=…
    RESULT scenarios=… accepted=… stored=… lost=… duplicate_creations=… violations=…

- **lost**: accepted, but in no terminal state at the drain deadline.
- **duplicate_creations**: upstream tasks beyond the first for one job (the simulator's task list, mapped
  to jobs through each task's callBackUrl). ``unknown_outcome`` counts the jobs failed ``outcome_unknown``
  (a createTask whose answer never came: the task may exist; never resubmitted blindly): the documented
  window, reported apart.
- **duplicate_s3_writes**: object versions beyond the first for one video key.
- **violations**: a failed job without a reason, a stored job whose S3 object or sha256 is wrong, more
  upstream tasks in progress than the account allows, a terminal job that moved again.

S3 outage, in two halves: first the SeaweedFS server frozen (SIGSTOP/SIGCONT): the ports stay bound and
connections hang, exactly what a network partition looks like to a client; then it crashes (SIGKILL),
stays down (connections refused) and comes back on the same ports and data directory, with every object
it had stored, which the checks afterwards read back.

Redis failover, on a stack of its own: a primary, two replicas and three Sentinels, the clients given only
the Sentinels, and the real creation window (300 per hour) on both sides; the primary is SIGKILLed while
jobs are in every state.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from config.celery import TASK_RECONCILE
from core.jobs import Job, JobState
from devstack import services
from devstack.deployment import Deployment
from devstack.services import LocalStack
from producers.web.callbacks import sign

HMAC_KEY = "chaos-hmac-key"
BUCKET = "imagineq-chaos"
VIDEO_BYTES = 262144
IN_PROGRESS_LIMIT = 30
#: Scenarios run back to back within the hour: the creation window (tested in tests/integration/test_quota*)
#: is lifted here, on both sides, so one scenario's creations never hold the next one back.
CREATIONS_PER_HOUR = 1_000_000
#: Reconciler cadence and thresholds for this stack (production: 60 s / 300 s / 180 s / 600 s).
RECONCILE_EVERY_S = 2.0
STACK_ENV = {
    "IMAGINEQ_POLL__SCHEDULE": json.dumps([[600, 0.5]]),
    "IMAGINEQ_POLL__FIRST_CHECK_S": "0",
    "IMAGINEQ_POLL__SAFETY_FIRST_S": "4",
    "IMAGINEQ_POLL__SAFETY_INTERVAL_S": "2",
    "IMAGINEQ_HTTP__CONNECT_TIMEOUT_S": "2",
    "IMAGINEQ_HTTP__READ_TIMEOUT_S": "3",
    "IMAGINEQ_HTTP__DOWNLOAD_READ_TIMEOUT_S": "5",
    "IMAGINEQ_QUOTA_WAIT_MAX_S": "5",
    "IMAGINEQ_QUOTA_LEASE_TTL_S": "30",
    "IMAGINEQ_UNKNOWN_OUTCOME_GRACE_S": "30",
    "IMAGINEQ_PAUSE_CHECK_INTERVAL_S": "1",
    # A live submit lasts at most quota_wait_max_s + connect + read timeouts (≈ 10 s here): 20 s means dead.
    "IMAGINEQ_RECONCILE_SUBMITTING_STALE_S": "20",
    "IMAGINEQ_RECONCILE_POLL_SILENT_S": "10",
    "IMAGINEQ_RECONCILE_STORE_SILENT_S": "20",
    "IMAGINEQ_RECONCILE_INTERVAL_S": str(RECONCILE_EVERY_S),
    "IMAGINEQ_RECONCILE_LOST_MIN_AGE_S": "15",
}
#: The Redis failover runs on its own stack with the real creation window on both sides: a failover that
#: forgot creation-log entries would let ImagineQ create past it, and the simulator refuse (429).
HA_CREATIONS_PER_HOUR = 300
HA_MASTER = "imagineq-chaos"
SIMULATOR_ARGS = (
    "--gen-time",
    "1:3",
    "--video-bytes",
    str(VIDEO_BYTES),
    "--hmac-key",
    HMAC_KEY,
    "--callback-backoff-s",
    "0.5",
    "--callback-timeout-s",
    "3",
    "--seed",
    "8",
    # The harness itself reads task records to replay callbacks, as the upstream would, outside
    # ImagineQ's shared recordInfo budget: the key allows room for both (bench/slots.py measures the
    # real 10 per second).
    "--record-info-per-s",
    "100",
)
SIM_DEFAULTS = {
    "force_status": [],
    "delay_s": 0,
    "credits": -1,
    "maintenance": False,
    "drop_callbacks": False,
    "callback_duplicates": 0.0,
    "file_rate_bytes_per_s": 0,
}


# -- the stack ----------------------------------------------------------------------------------------------


class ChaosStack:
    """Every process of a deployment, each one killable and restartable."""

    def __init__(self, stack: LocalStack, workers_per_queue: int = 2, *, ha: bool = False) -> None:
        self.stack = stack
        self.redis_port = services.free_port()
        redis_env: dict[str, str] = {}
        self.cluster: services.ReplicatedRedis | None = None
        if ha:
            # Two replicas and three Sentinels (quorum 2) follow the primary; clients find it through them.
            self.cluster = services.start_replicated_redis(
                stack, master=HA_MASTER, port=self.redis_port, appendonly=True
            )
            self.redis = self.cluster.primary
            redis_env["IMAGINEQ_REDIS_SENTINEL_MASTER"] = HA_MASTER
        else:
            self.redis = stack.add(services.start_redis(stack.log_dir, port=self.redis_port, appendonly=True))
        redis_url = self.cluster.url if self.cluster is not None else self.redis.url
        self.creations_per_hour = HA_CREATIONS_PER_HOUR if ha else CREATIONS_PER_HOUR
        self.s3 = stack.add(services.start_s3(stack.log_dir))
        self.simulator = stack.simulator([*SIMULATOR_ARGS, "--max-per-window", str(self.creations_per_hour)])
        web_socket = services.reserve_port()
        web_port = web_socket.getsockname()[1]
        self.env = services.deployment_env(
            redis_url=redis_url,
            s3=self.s3,
            simulator_url=self.simulator.url,
            bucket=BUCKET,
            extra={
                **STACK_ENV,
                **redis_env,
                "IMAGINEQ_ACCOUNTS": json.dumps(
                    [
                        {
                            "name": "default",
                            "api_key": "sim-key",
                            "base_url": self.simulator.url,
                            "max_in_progress": IN_PROGRESS_LIMIT,
                            "max_creations_per_window": self.creations_per_hour,
                        }
                    ]
                ),
                "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
                "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
                "IMAGINEQ_INGRESS_TOKENS": '["chaos-token-0123456789abcdef"]',
            },
        )
        self.dep = Deployment(stack, self.env, self.simulator)
        self.dep.s3.create_bucket(Bucket=BUCKET)
        self.dep.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        self.web = services.start_web(stack, self.env, sock=web_socket)
        for queue in ("submit", "poll", "store"):
            for _ in range(workers_per_queue):
                self.dep.start_worker(queue, concurrency=2)
        self.figures: dict[str, float] = {}
        self._stop = threading.Event()
        self._workers_lock = threading.Lock()
        #: Workers that exited by themselves and were restarted (as compose's ``restart: unless-stopped``).
        self.crashes: Counter[str] = Counter()
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True)
        self._reconciler.start()
        # Long-lived: the workers it restarts die with the thread that spawned them (PR_SET_PDEATHSIG).
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        stack.callback(self._stop.set)

    @property
    def ha(self) -> bool:
        """Redis is a Sentinel cluster (a failover can be injected)."""
        return self.cluster is not None

    @property
    def jobs(self) -> Any:
        return self.dep.producer.jobs

    def _reconcile_loop(self) -> None:
        """Beat's job, at a chaos pace: publish the reconcile task (a poll worker runs it)."""
        while not self._stop.wait(RECONCILE_EVERY_S):
            with contextlib.suppress(Exception):  # Redis may be down: try again next tick
                self.dep.producer.app.send_task(TASK_RECONCILE)

    def close(self) -> None:
        """Stop the loops before the processes stop (the supervisor must not restart what is closing)."""
        self._stop.set()
        self._supervisor.join(timeout=90)
        self._reconciler.join(timeout=10)
        self.dep.close()

    def _supervise(self) -> None:
        """A process supervisor's job: a worker that exited by itself is started again."""
        while not self._stop.wait(1.0):
            for queue, group in list(self.dep.workers.items()):
                with self._workers_lock:
                    dead = [service for service in group if not service.alive()]
                    for service in dead:
                        group.remove(service)
                for service in dead:
                    if self._stop.is_set():
                        return
                    self.crashes[queue] += 1
                    print(f"  supervisor: {service.name} exited ({service.process.returncode}); restarting", flush=True)
                    with contextlib.suppress(services.ServiceError):
                        self.dep.start_worker(queue, concurrency=2)

    # -- faults -------------------------------------------------------------------------------------
    def kill_worker(self, queue: str) -> None:
        """SIGKILL one worker of ``queue`` (main process and pool), then start a fresh one."""
        with self._workers_lock:
            victim = self.dep.workers[queue].pop(0)
        victim.kill()
        self.dep.start_worker(queue, concurrency=2)

    def kill_primary(self) -> float:
        """SIGKILL the current primary; returns the seconds until the Sentinels had promoted a replica."""
        assert self.cluster is not None, "a failover needs the Sentinel stack (ha=True)"
        killed_at = time.monotonic()
        self.cluster.kill_primary()
        return time.monotonic() - killed_at

    def restart_redis(self, down_s: float) -> None:
        """Stop Redis (SIGTERM: it fsyncs the AOF), keep it down, start it again on the same port and dir."""
        self.redis.stop()
        time.sleep(down_s)
        self.redis = self.stack.add(services.start_redis(self.stack.log_dir, port=self.redis_port, appendonly=True))

    @contextlib.contextmanager
    def s3_frozen(self) -> Iterator[None]:
        os.killpg(self.s3.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.s3.process.pid, signal.SIGCONT)

    def crash_s3(self, down_s: float) -> None:
        """SIGKILL the S3 server, keep it down, start it again on the same ports and data directory."""
        ports, data_dir = services.s3_ports(self.s3), Path(self.s3.extra["data_dir"])
        self.s3.kill()
        time.sleep(down_s)
        self.s3 = self.stack.add(services.start_s3(self.stack.log_dir, data_dir=data_dir, ports=ports))

    def sim(self, **changes: Any) -> None:
        self.dep.sim_config(**changes)

    def reset_simulator(self) -> None:
        self.dep.sim("reset", {})
        self.dep.sim_config(**SIM_DEFAULTS)


# -- one scenario -----------------------------------------------------------------------------------------


@dataclass
class Report:
    name: str
    accepted: int = 0
    stored: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicate_creations: int = 0
    unknown_outcome: int = 0
    duplicate_s3_writes: int = 0
    peak_in_progress: int = 0
    violations: list[str] = field(default_factory=list)
    #: Workers that exited by themselves during the scenario (restarted by the supervisor).
    worker_crashes: int = 0
    #: The most creations the upstream saw in one rolling window, and its 429 refusals.
    max_creations_in_window: int = 0
    upstream_refusals: int = 0
    #: What the scenario measured itself (seconds to promote, to recover, ...).
    figures: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def line(self) -> str:
        reasons = ",".join(f"{reason}:{n}" for reason, n in sorted(self.failed.items())) or "-"
        return (
            f"SCENARIO {self.name} accepted={self.accepted} stored={self.stored} "
            f"failed={sum(self.failed.values())} ({reasons}) lost={self.lost} "
            f"duplicate_creations={self.duplicate_creations} unknown_outcome={self.unknown_outcome} "
            f"duplicate_s3_writes={self.duplicate_s3_writes} peak_in_progress={self.peak_in_progress} "
            f"worker_crashes={self.worker_crashes} max_creations_in_window={self.max_creations_in_window} "
            f"upstream_refusals={self.upstream_refusals} violations={len(self.violations)} "
            + "".join(f"{key}={value:.1f} " for key, value in self.figures.items())
            + f"elapsed_s={self.elapsed_s:.0f}"
        )


Injector = Callable[[ChaosStack, list[Job]], None]


def run_scenario(
    chaos: ChaosStack, name: str, inject: Injector, *, jobs: int, drain_s: float, spread_s: float = 10.0
) -> Report:
    """Enqueue ``jobs`` over ``spread_s`` (a stream, not one burst) while ``inject`` runs; drain; check."""
    chaos.reset_simulator()
    chaos.figures = {}
    crashes_before = sum(chaos.crashes.values())
    started = time.monotonic()
    accepted: list[Job] = []
    feeder_done = threading.Event()

    run = uuid.uuid4().hex[:8]

    def feed() -> None:
        """A careful producer: when Redis is down it retries with the same idempotency keys, so a chunk
        that was written before the connection broke is returned, not written twice."""
        try:
            batches = max(1, int(spread_s))
            for step in range(batches):
                size = jobs // batches + (1 if step < jobs % batches else 0)
                chunk = [
                    {
                        "prompt": f"{name} scene {len(accepted) + i}",
                        "metadata": {"scenario": name},
                        "idempotency_key": f"chaos:{run}:{len(accepted) + i}",
                    }
                    for i in range(size)
                ]
                deadline = time.monotonic() + 120
                while True:
                    try:
                        accepted.extend(chaos.dep.producer.enqueue_many(chunk))
                        break
                    except redis.RedisError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.5)
                time.sleep(spread_s / batches)
        finally:
            feeder_done.set()

    feeder = threading.Thread(target=feed, name="feeder", daemon=True)
    feeder.start()
    inject(chaos, accepted)
    feeder_done.wait()
    chaos.sim(**SIM_DEFAULTS)
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline and not _all_terminal(chaos, accepted):
        time.sleep(1.0)
    report = _check(chaos, name, accepted)
    report.worker_crashes = sum(chaos.crashes.values()) - crashes_before
    report.figures = dict(chaos.figures)
    report.elapsed_s = time.monotonic() - started
    return report


def _all_terminal(chaos: ChaosStack, jobs: list[Job]) -> bool:
    with contextlib.suppress(redis.RedisError):
        return all(job is not None and job.terminal for job in chaos.jobs.get_many([j.id for j in jobs]))
    return False


def _check(chaos: ChaosStack, name: str, accepted: list[Job]) -> Report:
    report = Report(name, accepted=len(accepted))
    jobs = dict(zip((j.id for j in accepted), chaos.jobs.get_many([j.id for j in accepted]), strict=True))
    for job_id, job in jobs.items():
        if job is None:
            report.violations.append(f"job {job_id} vanished")
        elif not job.terminal:
            report.lost += 1
            report.violations.append(f"job {job_id} lost in {job.state.value}")
        elif job.state is JobState.STORED:
            report.stored += 1
        else:
            report.failed[job.reason or "NO_REASON"] += 1
            if not job.reason or not job.error:
                report.violations.append(f"job {job_id} {job.state.value} without a reason")
    report.unknown_outcome = report.failed.get("outcome_unknown", 0)
    stats = chaos.dep.stats()
    report.peak_in_progress = int(stats["peak_in_progress"])
    if report.peak_in_progress > IN_PROGRESS_LIMIT:
        report.violations.append(f"peak in progress {report.peak_in_progress} > {IN_PROGRESS_LIMIT}")
    report.max_creations_in_window = int(stats["max_creations_in_window"])
    if report.max_creations_in_window > chaos.creations_per_hour:
        report.violations.append(f"{report.max_creations_in_window} creations in a window > {chaos.creations_per_hour}")
    report.upstream_refusals = int(stats["rate_limited"])
    if chaos.ha and report.upstream_refusals:
        # Nothing here forces a 429: one means ImagineQ sent past a quota it should have known.
        report.violations.append(f"the upstream refused {report.upstream_refusals} createTask calls (429)")
    per_job: Counter[str] = Counter()
    for task in chaos.dep.sim("tasks")["tasks"]:
        url = task.get("callBackUrl") or ""
        parts = url.split("/v1/callbacks/")
        if len(parts) == 2:
            per_job[parts[1].split("/")[0]] += 1
    report.duplicate_creations = sum(n - 1 for job_id, n in per_job.items() if n > 1 and job_id in jobs)
    for job_id, n in per_job.items():
        if n > 1 and job_id in jobs:
            job = jobs[job_id]
            report.violations.append(f"job {job_id} created {n} upstream tasks ({job.reason if job else '?'})")
    report.duplicate_s3_writes, problems = _s3_check(chaos, [j for j in jobs.values() if j is not None])
    report.violations.extend(problems)
    return report


def _s3_check(chaos: ChaosStack, jobs: list[Job]) -> tuple[int, list[str]]:
    """Versions per video key (a second write of one job's video is a duplicate) and the stored bytes."""
    s3 = chaos.dep.s3
    versions: Counter[str] = Counter()
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=BUCKET):
        for version in page.get("Versions", []):
            if version["Key"].endswith(".mp4"):
                versions[version["Key"]] += 1
    problems: list[str] = []
    duplicates = 0
    for job in jobs:
        if job.state is not JobState.STORED:
            continue
        if not job.s3_uri or not job.task_id:
            problems.append(f"job {job.id} stored without an S3 URI or taskId")
            continue
        key = job.s3_uri.split("/", 3)[3]
        if versions.get(key, 0) == 0:
            problems.append(f"job {job.id} stored but {key} is missing")
        duplicates += max(0, versions.get(key, 0) - 1)
        if job.sha256 != chaos.dep.expected_sha256(job.task_id) or job.size != VIDEO_BYTES:
            problems.append(f"job {job.id} stored bytes that differ from the upstream's")
    return duplicates, problems


# -- the scenarios ----------------------------------------------------------------------------------------


def _wait_for_state(chaos: ChaosStack, jobs: list[Job], state: JobState, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            current = chaos.jobs.get_many([j.id for j in list(jobs)])
            if any(job is not None and job.state is state for job in current):
                return True
        time.sleep(0.1)
    return False


def calm(chaos: ChaosStack, jobs: list[Job]) -> None:
    """No fault: the reference figures."""


def kill_workers(kills: int) -> Injector:
    def inject(chaos: ChaosStack, jobs: list[Job]) -> None:
        # Slow downloads and answers, so there is always a task in flight to kill.
        chaos.sim(file_rate_bytes_per_s=VIDEO_BYTES, delay_s=0.3)
        for _ in range(kills):
            for queue, state in (
                ("submit", JobState.SUBMITTING),
                ("poll", JobState.GENERATING),
                ("store", JobState.DOWNLOADING),
            ):
                _wait_for_state(chaos, jobs, state)
                chaos.kill_worker(queue)
        chaos.sim(file_rate_bytes_per_s=0, delay_s=0)

    return inject


def redis_restart(down_s: float) -> Injector:
    def inject(chaos: ChaosStack, jobs: list[Job]) -> None:
        chaos.sim(file_rate_bytes_per_s=VIDEO_BYTES)
        time.sleep(4)  # let jobs reach every state
        for state in (JobState.SUBMITTING, JobState.GENERATING, JobState.DOWNLOADING):
            _wait_for_state(chaos, jobs, state, timeout_s=10)
        chaos.restart_redis(down_s)
        chaos.sim(file_rate_bytes_per_s=0)

    return inject


def upstream_faults(phase_s: float) -> Injector:
    def inject(chaos: ChaosStack, jobs: list[Job]) -> None:
        phases: list[dict[str, Any]] = [
            {"force_status": {"code": 429, "count": 15, "endpoint": "createTask", "retry_after_s": 1}},
            {"force_status": {"code": 500, "count": 20, "endpoint": "*"}},
            {"maintenance": True},
            {"delay_s": 1.0},  # slow answers, under the 3 s read timeout
            {"delay_s": 4.0},  # read timeouts: createTask outcome unknown, recordInfo retried
            {"credits": 0},
        ]
        for phase in phases:
            chaos.sim(**phase)
            time.sleep(phase_s)
            chaos.sim(**SIM_DEFAULTS)
            time.sleep(phase_s / 2)

    return inject


def s3_outage(outage_s: float) -> Injector:
    def inject(chaos: ChaosStack, jobs: list[Job]) -> None:
        _wait_for_state(chaos, jobs, JobState.DOWNLOADING)
        with chaos.s3_frozen():
            time.sleep(outage_s / 2)
        chaos.crash_s3(outage_s / 2)

    return inject


def callback_faults(phase_s: float) -> Injector:
    def inject(chaos: ChaosStack, jobs: list[Job]) -> None:
        chaos.sim(drop_callbacks=True)  # lost: the safety-net poll finds the result
        time.sleep(phase_s)
        chaos.sim(drop_callbacks=False, callback_duplicates=1.0)  # every callback twice
        time.sleep(phase_s)
        chaos.sim(callback_duplicates=0.0, delay_s=3.5)  # callbacks beat createTask's answer (and time it out)
        time.sleep(phase_s)
        chaos.sim(delay_s=0)
        _replay_out_of_order(chaos)

    return inject


def _replay_out_of_order(chaos: ChaosStack) -> None:
    """Reordered: for every finished task, a stale 'generating' callback and a late duplicate of its end
    (the task's real record, as the upstream would send it again)."""
    for task in chaos.dep.sim("tasks")["tasks"]:
        url = task.get("callBackUrl")
        if not url or task["state"] not in ("success", "fail"):
            continue
        with contextlib.suppress(requests.RequestException, KeyError, ValueError):
            record = requests.get(
                f"{chaos.simulator.url}/api/v1/jobs/recordInfo",
                params={"taskId": task["taskId"]},
                headers={"Authorization": "Bearer sim-key"},
                timeout=5,
            ).json()["data"]
            if not isinstance(record, dict):
                continue  # refused (the upstream's rate limit): no record to replay
            for data in ({**record, "state": "generating", "resultJson": ""}, record):
                ts = str(int(time.time()))
                headers = {
                    "X-Webhook-Timestamp": ts,
                    "X-Webhook-Signature": sign(HMAC_KEY.encode(), task["taskId"], ts),
                }
                code = 200 if data["state"] != "fail" else 501
                requests.post(url, json={"code": code, "msg": "replay", "data": data}, headers=headers, timeout=5)


def redis_failover(chaos: ChaosStack, jobs: list[Job]) -> None:
    """SIGKILL the Redis primary while jobs are in every state; the Sentinels promote a replica and every
    process finds it by itself. Measured: the seconds to the promotion, and to the first job stored after
    the kill (the pipeline moving again)."""
    chaos.sim(file_rate_bytes_per_s=VIDEO_BYTES)
    for state in (JobState.SUBMITTING, JobState.GENERATING, JobState.DOWNLOADING):
        _wait_for_state(chaos, jobs, state, timeout_s=20)
    stored_before = _stored(chaos)
    killed_at = time.monotonic()
    chaos.figures["promote_s"] = chaos.kill_primary()
    deadline = killed_at + 180
    while time.monotonic() < deadline and _stored(chaos) <= stored_before:
        time.sleep(0.1)
    chaos.figures["recover_s"] = time.monotonic() - killed_at
    chaos.sim(file_rate_bytes_per_s=0)


def _stored(chaos: ChaosStack) -> int:
    with contextlib.suppress(redis.RedisError, OSError):
        return int(chaos.jobs.count_by_state()[JobState.STORED])
    return -1


#: Scenarios that need the Sentinel stack (ChaosStack(ha=True)); the others run on the single Redis.
HA_SCENARIOS = frozenset({"redis_failover"})


def scenarios(*, kills: int, redis_down_s: float, phase_s: float, s3_outage_s: float) -> dict[str, Injector]:
    return {
        "calm": calm,
        "kill_workers": kill_workers(kills),
        "redis_restart": redis_restart(redis_down_s),
        "upstream_faults": upstream_faults(phase_s),
        "s3_outage": s3_outage(s3_outage_s),
        "callbacks": callback_faults(phase_s),
        "redis_failover": redis_failover,
    }


@contextlib.contextmanager
def chaos_stack(log_dir: Path, *, ha: bool = False) -> Iterator[ChaosStack]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with services.terminate_on_signals(), LocalStack(log_dir) as stack:
        chaos = ChaosStack(stack, ha=ha)
        try:
            yield chaos
        finally:
            chaos.close()
