"""The network-fault scenarios, run on a :class:`~devstack.chaos_net.NetStack` with the chaos suite's run
and checks (:func:`devstack.chaos_scenarios.run_scenario`: 0 lost, 0 duplicate creations, the in-progress
cap and the window held at the upstream, 0 duplicate S3 writes, no worker crash).

Each injector runs while the jobs are fed, then lifts its fault ("the heal") and records figures:

- ``recover_s``: from the heal until a job is stored again (the whole pipeline moving);
- ``promote_s`` (``redis_split``): from the cut until the majority's Sentinels named a new primary;
- ``slot_use`` (``latency``): busy slots at the upstream over the run, while work was waiting;
- ``heal_to_done_s``: from the heal until every job was terminal (the bound each scenario is held to).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from core.jobs import Job, JobState
from devstack.chaos_net import NetStack
from devstack.chaos_scenarios import all_terminal, records
from devstack.processes import ServiceError, wait_until

NetInjector = Callable[[NetStack, list[Job]], None]
#: How long a scenario waits for what it needs to see before its fault (jobs generating, ...).
SETUP_TIMEOUT_S: Final = 120
RECOVER_TIMEOUT_S: Final = 180
#: How often a scenario looks at the jobs (each look reads every job's record).
POLL_S: Final = 0.2


def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait at the scenarios' pace; ServiceError naming ``what`` after ``timeout_s``."""
    wait_until(predicate, timeout_s, what)


def _generating(net: NetStack, jobs: list[Job], at_least: int) -> bool:
    current = records(net, jobs) or []
    return sum(1 for job in current if job is not None and job.state is JobState.GENERATING) >= at_least


def _stored_since(net: NetStack, jobs: list[Job], since: float) -> bool:
    current = records(net, jobs)
    if current is None:
        return False
    return any(job is not None and job.timestamps.get(JobState.STORED.value, 0.0) > since for job in current) or all(
        job is not None and job.terminal for job in current
    )


def _heal_figures(net: NetStack, jobs: list[Job], healed_at: float, *, total: int) -> None:
    """``recover_s`` and ``heal_to_done_s`` after a heal at wall time ``healed_at`` (nan when it never came:
    the checks then say which jobs never ended)."""
    for figure, done, timeout_s in (
        ("recover_s", lambda: _stored_since(net, jobs, healed_at), RECOVER_TIMEOUT_S),
        ("heal_to_done_s", lambda: len(jobs) == total and all_terminal(net, jobs), 600.0),
    ):
        try:
            _until(done, timeout_s, figure)
            net.figures[figure] = time.time() - healed_at
        except ServiceError:
            net.figures[figure] = float("nan")
            return


def slot_use(net: NetStack, slots: int) -> float:
    """Busy slots over the upstream's tasks, from the first creation to the last (while work waited)."""
    tasks = net.dep.sim("tasks")["tasks"]
    spans = sorted((t["createTime"] / 1000, (t.get("completeTime") or t["createTime"]) / 1000) for t in tasks)
    if len(spans) < 2:
        return float("nan")
    first, last = spans[0][0], spans[-1][0]
    busy = sum(max(0.0, min(end, last) - max(start, first)) for start, end in spans)
    return busy / (slots * (last - first)) if last > first else float("nan")


def latency(total: int, slots: int) -> NetInjector:
    """100 ms ± 30 ms each way and 1 % loss on every link, for the whole run."""

    def inject(net: NetStack, jobs: list[Job]) -> None:
        net.set_latency(100, 30)
        for host in net.hosts.values():
            net.net.loss(host, 1)
        try:
            _until(lambda: len(jobs) == total and all_terminal(net, jobs), 1200, "every job to end")
            net.figures["slot_use"] = slot_use(net, slots)
        finally:
            for host in net.hosts.values():
                net.net.loss(host, 0)
            net.set_latency(0, 0)

    return inject


def worker_partition(total: int, cut_s: float) -> NetInjector:
    """worker1 cut off from every Redis host (not from the upstream) while it holds leases, polls and a
    createTask in flight (answers delayed so one is), then healed."""

    def inject(net: NetStack, jobs: list[Job]) -> None:
        net.sim(delay_s=0.5)
        _until(lambda: _generating(net, jobs, 20), SETUP_TIMEOUT_S, "20 jobs generating")
        worker = net.host("worker1")
        for name in ("redis1", "redis2", "redis3"):
            net.net.partition(worker, net.host(name))
        time.sleep(cut_s)  # the fault's length
        net.net.heal()
        healed_at = time.time()
        net.sim(delay_s=0)
        _heal_figures(net, jobs, healed_at, total=total)

    return inject


def upstream_partition(total: int, cut_s: float) -> NetInjector:
    """The upstream unreachable from both worker hosts (callbacks to the web still arrive)."""

    def inject(net: NetStack, jobs: list[Job]) -> None:
        _until(lambda: _generating(net, jobs, 20), SETUP_TIMEOUT_S, "20 jobs generating")
        for name in ("worker1", "worker2"):
            net.net.partition(net.host(name), net.host("upstream"))
        time.sleep(cut_s)
        net.net.heal()
        _heal_figures(net, jobs, time.time(), total=total)

    return inject


def redis_split(total: int, cut_s: float) -> NetInjector:
    """The primary's host and worker1 cut off from the replicas, the other two Sentinels and worker2: the
    majority promotes a replica; the old primary takes the minority's writes until healed."""

    def inject(net: NetStack, jobs: list[Job]) -> None:
        _until(lambda: _generating(net, jobs, 20), SETUP_TIMEOUT_S, "20 jobs generating")
        before = net.primary()
        minority = [net.host(name) for name in (before, "worker1")]
        majority = [net.host(name) for name in ("redis1", "redis2", "redis3", "worker2") if name != before]
        cut_at = time.monotonic()
        for a in minority:
            for b in majority:
                net.net.partition(a, b)
        _until(
            lambda: net.primary() not in ("", before),
            cut_s + 60,
            "the majority to promote a replica",
        )
        net.figures["promote_s"] = time.monotonic() - cut_at
        remaining = cut_s - (time.monotonic() - cut_at)
        if remaining > 0:
            time.sleep(remaining)
        net.net.heal()
        _heal_figures(net, jobs, time.time(), total=total)

    return inject


def s3_slow(total: int, slow_s: float) -> NetInjector:
    """S3's link limited to 64 kbit/s each way."""

    def inject(net: NetStack, jobs: list[Job]) -> None:
        _until(lambda: _generating(net, jobs, 20), SETUP_TIMEOUT_S, "20 jobs generating")
        net.net.rate(net.host("s3"), 64)
        time.sleep(slow_s)
        net.net.rate(net.host("s3"), None)
        _heal_figures(net, jobs, time.time(), total=total)

    return inject


def clock_skew(total: int) -> NetInjector:
    """worker1's processes 30 s ahead, worker2's 30 s behind (faketime), for the whole run."""

    def inject(net: NetStack, jobs: list[Job]) -> None:
        for host, offset in (("worker1", "+30s"), ("worker2", "-30s")):
            net.stop_workers(host)  # warm: what they run finishes first, as in a redeploy
            net.start_workers(host, offset)
        try:
            _until(lambda: len(jobs) == total and all_terminal(net, jobs), 1200, "every job to end")
        finally:
            for host in ("worker1", "worker2"):
                net.stop_workers(host)
                net.start_workers(host)

    return inject


def scenarios(*, jobs: int, slots: int, cut_s: float, upstream_cut_s: float) -> dict[str, NetInjector]:
    return {
        "latency": latency(jobs, slots),
        "worker_partition": worker_partition(jobs, cut_s),
        "upstream_partition": upstream_partition(jobs, upstream_cut_s),
        "redis_split": redis_split(jobs, cut_s),
        "s3_slow": s3_slow(jobs, cut_s),
        "clock_skew": clock_skew(jobs),
    }
