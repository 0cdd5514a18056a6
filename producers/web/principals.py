"""Tenants of the HTTP ingress: who a bearer token belongs to, what it may see, how much it may send.

Each token names a principal (``ingress_principals``; a plain ``ingress_tokens`` entry is the admin
principal ``default``). Every job enqueued over HTTP records its owner, and its idempotency keys are
the owner's own, so two tenants can never reach each other's jobs through a shared key.

- **Seeing**: get, list and cancel show a principal its own jobs only; an admin sees all. A job of
  someone else answers 404, exactly like a job that does not exist.
- **Sending**, per principal and across every web replica (the state lives in Redis):
  the metadata of one request (413, ``max_metadata_bytes``); jobs per second, a token bucket
  (429 with Retry-After, ``enqueue_per_s`` / ``enqueue_burst``); jobs not yet finished at any time
  (429, ``max_live_jobs``). Each refusal names the limit and its value, and nothing is written.

The live-job count is a sorted set of the principal's job ids; finished jobs leave it lazily, a few of
the oldest at every enqueue, and all of them when the count reaches the cap, so it stays near the
number of live jobs without a scan of every job.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterable, Sequence
from typing import Final, Generic, TypeVar, cast

import redis
from fastapi import HTTPException
from pydantic import SecretStr

from config.settings import PrincipalSettings
from workers.jobs import Job, JobRequest, JobState, encode_metadata
from workers.jobstore import JobStore
from workers.keys import Keys
from workers.lua_scripts import load_script

#: Oldest entries of a principal's live set looked at on every enqueue (finished ones leave).
PRUNE_EACH_TIME: Final = 50
_PRUNE_CHUNK: Final = 1000
T = TypeVar("T")


class TokenTable(Generic[T]):
    """Finds what a bearer token stands for: constant time per token, every token compared."""

    def __init__(self, entries: Iterable[tuple[SecretStr, T]]) -> None:
        self._tokens = [(token.get_secret_value().encode(), value) for token, value in entries]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def find(self, given: str) -> T | None:
        found: T | None = None
        encoded = given.encode()
        for token, value in self._tokens:
            if hmac.compare_digest(encoded, token) and found is None:
                found = value
        return found


def principal_table(principals: Iterable[PrincipalSettings]) -> TokenTable[PrincipalSettings]:
    return TokenTable((principal.token, principal) for principal in principals)


def may_see(principal: PrincipalSettings, job: Job) -> bool:
    return principal.admin or job.owner == principal.name


class EnqueueLimits:
    """Checks one principal's request against its limits, and keeps its live-job count."""

    def __init__(self, client: redis.Redis, keys: Keys, jobs: JobStore) -> None:
        self._redis = client
        self._keys = keys
        self._jobs = jobs

    def check(self, principal: PrincipalSettings, requests: Sequence[JobRequest]) -> None:
        """Raise HTTPException 413/429 naming the limit; nothing is taken from a refused request."""
        metadata = sum(len(encode_metadata(r.metadata).encode()) for r in requests if r.metadata)
        if metadata > principal.max_metadata_bytes:
            raise HTTPException(
                413,
                f"the metadata of this request is {metadata} bytes; principal {principal.name} may send at "
                f"most {principal.max_metadata_bytes} (max_metadata_bytes)",
            )
        if len(requests) > principal.enqueue_burst:
            raise HTTPException(
                429,
                f"{len(requests)} jobs in one request; principal {principal.name} may enqueue at most "
                f"{principal.enqueue_burst} at once (enqueue_burst)",
            )
        live = self._live(principal.name)
        if live + len(requests) > principal.max_live_jobs:
            live = self._prune(principal.name, everything=True)
        if live + len(requests) > principal.max_live_jobs:
            raise HTTPException(
                429,
                f"principal {principal.name} has {live} jobs not yet finished; at most "
                f"{principal.max_live_jobs} (max_live_jobs)",
                {"Retry-After": "30"},
            )
        wait_s = float(
            load_script(self._redis, "quota_tokens")(
                keys=[self._keys.enqueue_bucket(principal.name)],
                args=["", principal.enqueue_per_s, principal.enqueue_burst, len(requests)],
            )
        )
        if wait_s > 0:
            raise HTTPException(
                429,
                f"principal {principal.name} may enqueue {principal.enqueue_per_s:g} jobs per second "
                f"(enqueue_per_s); try again in {wait_s:.1f} s",
                {"Retry-After": str(max(1, math.ceil(wait_s)))},
            )

    def record(self, principal: PrincipalSettings, created: Sequence[Job]) -> None:
        """Count the jobs a request created, and let a few finished ones go."""
        if created:
            self._redis.zadd(self._keys.owner_jobs(principal.name), {job.id: job.created_at * 1000 for job in created})
        self._prune(principal.name, everything=False)

    def _live(self, owner: str) -> int:
        return int(cast(int, self._redis.zcard(self._keys.owner_jobs(owner))))

    def _prune(self, owner: str, *, everything: bool) -> int:
        """Drop finished (or vanished) jobs from the live set: the oldest few, or all; the new count."""
        key = self._keys.owner_jobs(owner)
        start = 0
        while True:
            count = _PRUNE_CHUNK if everything else PRUNE_EACH_TIME
            ids = cast("list[str]", self._redis.zrange(key, start, start + count - 1))
            if not ids:
                break
            with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self._keys.job(job_id), "state")
                states = pipe.execute()
            done = [job_id for job_id, state in zip(ids, states, strict=True) if _finished(state)]
            if done:
                self._redis.zrem(key, *done)
            start += len(ids) - len(done)
            if not everything or len(ids) < count:
                break
        return self._live(owner)


def _finished(state: str | bytes | None) -> bool:
    if state is None:
        return True
    value = state.decode() if isinstance(state, bytes) else state
    return JobState(value).terminal
