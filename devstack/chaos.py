"""The chaos stack: a real stack that keeps its promises while things break, one scenario at a time (the
scenarios and their checks are in :mod:`devstack.chaos_scenarios`; ``bench/chaos.py`` runs them and prints
their figures; ``make chaos`` runs them as tests).


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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from config.celery import TASK_RECONCILE
from devstack import services
from devstack.deployment import Deployment
from devstack.services import LocalStack

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


@contextlib.contextmanager
def chaos_stack(log_dir: Path, *, ha: bool = False) -> Iterator[ChaosStack]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with services.terminate_on_signals(), LocalStack(log_dir) as stack:
        chaos = ChaosStack(stack, ha=ha)
        try:
            yield chaos
        finally:
            chaos.close()
