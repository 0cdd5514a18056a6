"""A store's claim on a job: short-lived, renewed by a heartbeat while the transfer runs, and held by a
replica before the transfer starts."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator

from core.clients import release_token_lock
from workers.runtime import Runtime

#: A store claim lives this long unless its heartbeat renews it (a killed worker frees it quickly).
STORE_CLAIM_TTL_S = 15.0


@contextlib.contextmanager
def store_claim(rt: Runtime, job_id: str) -> Iterator[bool]:
    """A short-lived claim renewed by a heartbeat while the transfer runs. False when another store holds
    it, or when no replica acknowledged this one in time (``replica_acks``): a primary cut off from its
    replicas may be replaced by one that never saw the claim nor the store's result, and the job would be
    stored a second time there. The unacknowledged claim is kept until it lapses, so the store is tried
    again then (through whichever primary the Sentinels name by that time)."""
    key = rt.keys.store_claim(job_id)
    token = uuid.uuid4().hex
    ttl_ms = int(STORE_CLAIM_TTL_S * 1000)
    # The same replicas and wait as a createTask marker's (JobStore.update_acknowledged).
    wanted = rt.jobs.replica_acks.wanted()
    with rt.redis.pipeline(transaction=False) as pipe:
        pipe.set(key, token, nx=True, px=ttl_ms)
        if wanted:
            pipe.execute_command("WAIT", wanted, rt.jobs.replica_ack_timeout_ms)  # type: ignore[no-untyped-call]
        replies = pipe.execute()
    if not replies[0] or (wanted and int(replies[1]) < wanted):
        yield False
        return
    done = threading.Event()

    def _heartbeat() -> None:
        while not done.wait(STORE_CLAIM_TTL_S / 3):
            with contextlib.suppress(Exception):
                if rt.redis.get(key) == token:
                    rt.redis.pexpire(key, ttl_ms)

    beat = threading.Thread(target=_heartbeat, name=f"store-claim-{job_id}", daemon=True)
    beat.start()
    try:
        yield True
    finally:
        done.set()
        beat.join(timeout=5)
        with contextlib.suppress(Exception):
            release_token_lock(rt.redis, key, token)
