"""Tenants of the HTTP ingress: who a bearer token belongs to, what it may see, how much it may send.

Each token names a principal (``ingress_principals``; a plain ``ingress_tokens`` entry is the admin
principal ``default``). Every job enqueued over HTTP records its owner, and its idempotency keys are
the owner's own, so two tenants can never reach each other's jobs through a shared key.

- **Seeing**: get, list and cancel show a principal its own jobs only; an admin sees all. A job of
  someone else answers 404, exactly like a job that does not exist.
- **Sending**, per principal and across every web replica (the state lives in Redis): the metadata of one
  request (413, ``max_metadata_bytes``); jobs per second, a token bucket (429 with Retry-After,
  ``enqueue_per_s`` / ``enqueue_burst``); jobs not yet finished (429, ``max_live_jobs``); job records kept,
  finished ones included (429, ``max_kept_jobs``). The three counted limits are checked and the request's
  jobs counted in one Lua step (``principal_admit.lua``), with the job ids chosen before anything is
  written, so two requests racing for the last place cannot both get it; a request that then fails gives
  its places back. Each refusal names the limit and its value, and nothing is written.
- **Streams**: ``GET /v1/events`` streams open at once (429, ``max_event_streams``), each a lease in Redis
  renewed while it is open, so a web that died gives its streams' places back within a lease.

The live and kept counts are sorted sets of the principal's job ids; jobs leave them lazily (finished ones
from the live set, expired records from the kept set), a few of the oldest at every enqueue and all of
them when a limit is reached, so they stay near the truth without a scan of every job.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Generic, TypeVar, cast

import redis
import redis.asyncio as aioredis
from fastapi import HTTPException
from pydantic import SecretStr

from config.settings import PrincipalSettings, token_fingerprint
from core.jobs import Job, JobRequest, JobState, encode_metadata
from core.keys import Keys
from core.lua_scripts import load_async_script, load_script

#: Oldest entries of a principal's live set looked at on every enqueue (finished ones leave).
PRUNE_EACH_TIME: Final = 50
#: A place taken for a job whose record is not written yet is kept this long (a request writes its jobs
#: within moments of taking their places; one that died gives them back after this).
RESERVED_S: Final = 120
_PRUNE_CHUNK: Final = 1000
T = TypeVar("T")


class TokenTable(Generic[T]):
    """Finds what a bearer token stands for by its sha256: constant time per entry, every entry compared
    (the table may be given the tokens themselves or only their digests)."""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._digests = [(bytes.fromhex(digest), value) for digest, value in entries]

    @classmethod
    def of_tokens(cls, entries: Iterable[tuple[SecretStr, T]]) -> TokenTable[T]:
        return cls((token_fingerprint(token), value) for token, value in entries)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def find(self, given: str) -> T | None:
        found: T | None = None
        digest = hashlib.sha256(given.encode()).digest()
        for known, value in self._digests:
            if hmac.compare_digest(digest, known) and found is None:
                found = value
        return found


def principal_table(principals: Iterable[PrincipalSettings]) -> TokenTable[PrincipalSettings]:
    return TokenTable((principal.fingerprint, principal) for principal in principals)


def may_see(principal: PrincipalSettings, job: Job) -> bool:
    return principal.admin or job.owner == principal.name


class Admission:
    """The places a request took (:meth:`EnqueueLimits.admitted`): ``use`` says which ids it really wrote."""

    def __init__(self, job_ids: Sequence[str]) -> None:
        self.job_ids = list(job_ids)
        self.used: set[str] | None = None

    def use(self, job_ids: Iterable[str]) -> None:
        self.used = set(job_ids)


class EnqueueLimits:
    """Checks one principal's requests against its limits, and keeps its live and kept counts."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._admit = load_script(client, "principal_admit")

    def check_request(self, principal: PrincipalSettings, requests: Sequence[JobRequest]) -> None:
        """The limits of one request alone (metadata, jobs at once): HTTPException 413/429, nothing taken."""
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

    @contextmanager
    def admitted(
        self, principal: PrincipalSettings, job_ids: Sequence[str], *, new_records: bool = True
    ) -> Iterator[Admission]:
        """Take places for ``job_ids`` (new records, or finished jobs made live again), or raise
        HTTPException 429 naming the limit; inside, write the jobs. Places of ids the block did not use
        (``Admission.use``), or of every id when it raised, are given back."""
        self._take(principal, job_ids, new_records)
        admission = Admission(job_ids)
        try:
            yield admission
        except BaseException:
            self._give_back(principal, job_ids, new_records)
            raise
        if admission.used is not None:
            unused = [job_id for job_id in job_ids if job_id not in admission.used]
            self._give_back(principal, unused, new_records)
        self._prune(principal.name, everything=False)

    def _take(self, principal: PrincipalSettings, job_ids: Sequence[str], new_records: bool) -> None:
        for attempt in range(2):
            reply = self._admit(
                keys=[
                    self._keys.owner_jobs(principal.name),
                    self._keys.owner_kept(principal.name),
                    self._keys.enqueue_bucket(principal.name),
                ],
                args=[
                    "",
                    principal.max_live_jobs,
                    principal.max_kept_jobs,
                    principal.enqueue_per_s,
                    principal.enqueue_burst,
                    len(job_ids) if new_records else 0,
                    *job_ids,
                ],
            )
            if int(reply[0]) == 1:
                return
            limit, count, wait_s = _text(reply[1]), int(reply[2]), float(_text(reply[3]))
            if attempt == 0 and limit in ("max_live_jobs", "max_kept_jobs"):
                self._prune(principal.name, everything=True)  # finished or expired ones may leave
                continue
            raise _refusal(principal, limit, count, wait_s)

    def _give_back(self, principal: PrincipalSettings, job_ids: Sequence[str], new_records: bool) -> None:
        if not job_ids:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._keys.owner_jobs(principal.name), *job_ids)
            if new_records:
                pipe.zrem(self._keys.owner_kept(principal.name), *job_ids)
            pipe.execute()

    def live(self, owner: str) -> int:
        return int(cast(int, self._redis.zcard(self._keys.owner_jobs(owner))))

    def kept(self, owner: str) -> int:
        return int(cast(int, self._redis.zcard(self._keys.owner_kept(owner))))

    def _prune(self, owner: str, *, everything: bool) -> None:
        """Let finished jobs leave the live set and expired records the kept set: the oldest few, or all.
        A job without a record is gone only once its place is older than ``RESERVED_S``: until then it
        may be a place taken for a job about to be written."""
        seconds, micros = cast("tuple[int, int]", self._redis.time())
        reserved_after = seconds * 1000 + micros // 1000 - RESERVED_S * 1000

        def finished(state: str | bytes | None, score: float) -> bool:
            return (state is None and score < reserved_after) or (state is not None and _finished(state))

        def expired(state: str | bytes | None, score: float) -> bool:
            return state is None and score < reserved_after

        self._prune_set(self._keys.owner_jobs(owner), everything, finished)
        self._prune_set(self._keys.owner_kept(owner), everything, expired)

    def _prune_set(self, key: str, everything: bool, gone: Callable[[str | bytes | None, float], bool]) -> None:
        start = 0
        while True:
            count = _PRUNE_CHUNK if everything else PRUNE_EACH_TIME
            rows = cast("list[tuple[str, float]]", self._redis.zrange(key, start, start + count - 1, withscores=True))
            if not rows:
                break
            ids = [job_id for job_id, _ in rows]
            with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self._keys.job(job_id), "state")
                states = pipe.execute()
            done = [job_id for (job_id, score), state in zip(rows, states, strict=True) if gone(state, score)]
            if done:
                self._redis.zrem(key, *done)
            start += len(ids) - len(done)
            if not everything or len(ids) < count:
                break


def _refusal(principal: PrincipalSettings, limit: str, count: int, wait_s: float) -> HTTPException:
    name = principal.name
    if limit == "max_live_jobs":
        return HTTPException(
            429,
            f"principal {name} has {count} jobs not yet finished; at most {principal.max_live_jobs} (max_live_jobs)",
            {"Retry-After": "30"},
        )
    if limit == "max_kept_jobs":
        return HTTPException(
            429,
            f"principal {name} has {count} job records kept, finished ones included; at most "
            f"{principal.max_kept_jobs} (max_kept_jobs): records leave once they expire",
            {"Retry-After": "3600"},
        )
    return HTTPException(
        429,
        f"principal {name} may enqueue {principal.enqueue_per_s:g} jobs per second (enqueue_per_s); "
        f"try again in {wait_s:.1f} s",
        {"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


class StreamLeases:
    """How many event streams each principal holds open, across every web replica: a lease per stream
    in Redis, renewed while it is open and dropped when it closes (or lapsing after ``ttl_s``)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, ttl_s: float) -> None:
        self._redis = client
        self._keys = keys
        self.ttl_s = ttl_s

    async def open(self, principal: PrincipalSettings, stream_id: str) -> None:
        """Take a place for a new stream, or raise HTTPException 429 naming ``max_event_streams``."""
        key = self._keys.event_streams(principal.name)
        taken = await self._lease(keys=[key], args=[stream_id, int(self.ttl_s * 1000), principal.max_event_streams])
        if int(taken) == 0:
            raise HTTPException(
                429,
                f"principal {principal.name} has {principal.max_event_streams} event streams open; at most "
                f"{principal.max_event_streams} at once (max_event_streams)",
                {"Retry-After": "10"},
            )

    async def renew(self, principal: PrincipalSettings, stream_id: str) -> None:
        await self._lease(keys=[self._keys.event_streams(principal.name)], args=[stream_id, int(self.ttl_s * 1000), 0])

    async def close(self, principal: PrincipalSettings, stream_id: str) -> None:
        await self._redis.zrem(self._keys.event_streams(principal.name), stream_id)

    @property
    def _lease(self) -> Any:
        return load_async_script(self._redis, "stream_lease")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _finished(state: str | bytes) -> bool:
    return JobState(_text(state)).terminal
