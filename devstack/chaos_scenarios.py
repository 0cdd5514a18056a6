"""The chaos scenarios and their checks, run on a :class:`~devstack.chaos.ChaosStack` (the module
docstring of :mod:`devstack.chaos` says what each figure means)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import redis
import requests

from core.errors import NotReplicated
from core.jobs import Job, JobState
from devstack.chaos import BUCKET, HMAC_KEY, IN_PROGRESS_LIMIT, SIM_DEFAULTS, VIDEO_BYTES, ChaosStack
from devstack.deployment import Deployment
from producers.web.callbacks import sign

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
    #: The most creations the upstream saw in one rolling window, and its 429 refusals of createTask and of
    #: recordInfo (the quotas ImagineQ keeps: a creation past the caps, a poll past 10 per second).
    max_creations_in_window: int = 0
    upstream_refusals: int = 0
    record_info_refusals: int = 0
    #: What the scenario measured itself (seconds to promote, to recover, ...).
    figures: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def show(self, violations: int = 10) -> None:
        """Print the SCENARIO line and the first ``violations`` violations (a bench's running output)."""
        print(self.line(), flush=True)
        for violation in self.violations[:violations]:
            print(f"  violation: {violation}", flush=True)

    def line(self) -> str:
        reasons = ",".join(f"{reason}:{n}" for reason, n in sorted(self.failed.items())) or "-"
        return (
            f"SCENARIO {self.name} accepted={self.accepted} stored={self.stored} "
            f"failed={sum(self.failed.values())} ({reasons}) lost={self.lost} "
            f"duplicate_creations={self.duplicate_creations} unknown_outcome={self.unknown_outcome} "
            f"duplicate_s3_writes={self.duplicate_s3_writes} peak_in_progress={self.peak_in_progress} "
            f"worker_crashes={self.worker_crashes} max_creations_in_window={self.max_creations_in_window} "
            f"upstream_refusals={self.upstream_refusals} record_info_refusals={self.record_info_refusals} "
            f"violations={len(self.violations)} "
            + "".join(f"{key}={value:.2f} " for key, value in self.figures.items())
            + f"elapsed_s={self.elapsed_s:.0f}"
        )


class ScenarioStack(Protocol):
    """What a scenario's run and checks need of a stack (:class:`~devstack.chaos.ChaosStack`, or the
    network-fault stack of :mod:`devstack.chaos_net`)."""

    dep: Deployment
    figures: dict[str, float]
    crashes: Counter[str]
    creations_per_hour: int

    @property
    def ha(self) -> bool: ...

    @property
    def jobs(self) -> Any: ...

    def sim(self, **changes: Any) -> None: ...

    def reset_simulator(self) -> None: ...


S = TypeVar("S", bound=ScenarioStack)
Injector = Callable[[ChaosStack, list[Job]], None]


def run_scenario(
    chaos: S,
    name: str,
    inject: Callable[[S, list[Job]], None],
    *,
    jobs: int,
    drain_s: float,
    spread_s: float = 10.0,
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
        """A careful producer: when Redis is down, or its replicas did not acknowledge a chunk, it retries
        with the same idempotency keys, so a chunk that was written before the connection broke is
        returned, not written twice."""
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
                    except (redis.RedisError, NotReplicated):
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
    while time.monotonic() < deadline and not all_terminal(chaos, accepted):
        time.sleep(1.0)
    report = _check(chaos, name, accepted)
    report.worker_crashes = sum(chaos.crashes.values()) - crashes_before
    report.figures = dict(chaos.figures)
    report.elapsed_s = time.monotonic() - started
    return report


def records(chaos: ScenarioStack, jobs: list[Job]) -> list[Job | None] | None:
    """The jobs' records now (a copy of the list: a feeder may still be adding to it); None while Redis
    cannot answer (a fault under way)."""
    with contextlib.suppress(redis.RedisError):
        current: list[Job | None] = chaos.jobs.get_many([j.id for j in list(jobs)])
        return current
    return None


def all_terminal(chaos: ScenarioStack, jobs: list[Job]) -> bool:
    current = records(chaos, jobs)
    return current is not None and all(job is not None and job.terminal for job in current)


def _check(chaos: ScenarioStack, name: str, accepted: list[Job]) -> Report:
    report = Report(name, accepted=len(accepted))
    jobs = dict(zip((j.id for j in accepted), chaos.jobs.get_many([j.id for j in accepted]), strict=True))
    for job_id, job in jobs.items():
        if job is None:
            report.violations.append(f"job {job_id} vanished")
        elif not job.terminal:
            report.lost += 1
            report.violations.append(f"job {job_id} lost in {job.state.value} ({_whereabouts(chaos, job)})")
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
    report.record_info_refusals = sum(int(key["record_info_rate_limited"]) for key in stats["per_key"].values())
    report.upstream_refusals = int(stats["rate_limited"]) - report.record_info_refusals
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


def _whereabouts(chaos: ScenarioStack, job: Job) -> str:
    """Where a job that never ended stands: its counters and timestamps, whether a submitter can see it,
    and how full its pool's quota is on every account (so a failure explains itself)."""
    r, keys = chaos.dep.producer.redis, chaos.dep.producer.keys
    parts = [f"attempts={job.attempts}", f"submit_attempts={job.submit_attempts}", f"account={job.account}"]
    parts.append(
        "times=" + ",".join(f"{state}:{at:.1f}" for state, at in sorted(job.timestamps.items(), key=lambda x: x[1]))
    )
    with contextlib.suppress(redis.RedisError):
        parts.append(f"ready={r.zscore(keys.ready(job.pool), job.id) is not None}")
        parts.append(f"dispatched={r.zscore(keys.dispatched(), job.id) is not None}")
        for account in chaos.dep.settings.accounts:
            creations = cast("list[bytes | str]", r.zrange(keys.creations(account.name, job.pool), 0, -1))
            mine = sum(1 for c in creations if (c.decode() if isinstance(c, bytes) else c).startswith(job.id))
            parts.append(
                f"{account.name}: creations={len(creations)} (its own {mine}) "
                f"leases={r.zcard(keys.leases(account.name, job.pool))}"
            )
    return " ".join(parts)


def _s3_check(chaos: ScenarioStack, jobs: list[Job]) -> tuple[int, list[str]]:
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
        current = records(chaos, jobs)
        if current is not None and any(job is not None and job.state is state for job in current):
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
