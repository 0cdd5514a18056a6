"""A store's claim on a job: short-lived, renewed by a heartbeat while the transfer runs."""

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
    """A short-lived claim renewed by a heartbeat while the transfer runs."""
    key = rt.keys.store_claim(job_id)
    token = uuid.uuid4().hex
    ttl_ms = int(STORE_CLAIM_TTL_S * 1000)
    if not rt.redis.set(key, token, nx=True, px=ttl_ms):
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
