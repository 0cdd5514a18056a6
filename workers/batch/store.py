"""Batch records in Redis: what a batch is, how far it got, and its results manifest.

Layout (keys from :class:`~core.keys.Keys`):

- ``batch(id)`` hash: ``name``, ``source`` (input URI), ``results`` (manifest URI), ``level`` (broker
  priority of its submit messages), ``status`` (``reading`` → ``submitted`` → ``done``), ``created_at``,
  ``read_at``, ``finished_at``, ``manifest``; counters ``lines``, ``good``, ``bad``, ``created`` (jobs this
  batch created, repeats excluded) and ``n:<state>`` (jobs counted terminal, per state);
- ``batch_jobs(id)`` list: one JSON entry per input line, in line order: ``[line, id, job_id, error]``
  (``job_id`` for a good line, ``error`` for a bad one);
- ``batch_pending(id)`` set: job ids not yet counted terminal. :meth:`BatchStore.settle` reads their
  states and moves terminal ones into the ``n:<state>`` counters (``batch_settle.lua``: each job once,
  however many settlers run), so progress costs one read per *unfinished* job;
- ``batches()`` (all, by age) and ``batches_active()`` (read, manifest not yet written) index them.

A batch is finished when it is ``submitted`` and nothing is pending; :meth:`BatchStore.finalise` then
writes the manifest next to the input and sets ``done``, whoever gets there first: the release thread that
counts its last job's end (:meth:`BatchStore.count_ended`, moments after that end), the reader when
nothing was left pending once the file was read (a file with no good line, or whose jobs all ended
already), ``batch submit --wait``, or the reconciler. Batch keys expire with the job records
(``terminal_ttl_s``) once done.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import redis

from core.clients import as_text, release_token_lock
from core.errors import ImagineQError
from core.jobs import JobState
from core.keys import Keys
from core.lua_scripts import load_script
from workers.batch.locations import Files, Location
from workers.batch.status import INVALID, MISSING, OVER_BUDGET, BatchStatus, BatchStatusValue

#: A reader that stops renewing its claim for this long is taken for dead; its batch may be read again.
READ_CLAIM_TTL_S: Final = 120.0
#: A finaliser's claim (writing a manifest of 100,000 lines takes seconds, not minutes).
FINALISE_CLAIM_TTL_S: Final = 600.0
_SCAN: Final = 1000


class BatchBusy(ImagineQError):
    """Another process is reading this batch right now."""


@dataclass(frozen=True)
class LineEntry:
    """One input line as the batch remembers it: a job, or the reason it is not one."""

    line: int
    id: str | None
    job_id: str | None = None
    error: str | None = None

    @property
    def over_budget(self) -> bool:
        """A good line a budget had no room for (its ``error`` names the budget)."""
        return self.job_id is None and (self.error or "").startswith(OVER_BUDGET + ":")

    def encode(self) -> str:
        return json.dumps([self.line, self.id, self.job_id, self.error], separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> LineEntry:
        line, line_id, job_id, error = json.loads(raw)
        return cls(int(line), line_id, job_id, error)


class BatchStore:
    """Create, advance, count and finish batches; see the module docstring for the layout."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, terminal_ttl_s: int = 30 * 86400, events_max_len: int = 100_000
    ) -> None:
        self._client = client
        self._keys = keys
        self.terminal_ttl_s = terminal_ttl_s
        self.events_max_len = events_max_len
        self._settle = load_script(client, "batch_settle")

    # -- reading ------------------------------------------------------------------------------------
    def begin(
        self, batch_id: str, *, name: str, source: str, results: str, level: int
    ) -> tuple[BatchStatus, str | None]:
        """Claim the batch for reading. Returns its status and a claim token, or no token when it was
        read whole before (nothing to do). A read that was interrupted starts again from scratch.
        BatchBusy if another reader holds the claim."""
        token = uuid.uuid4().hex
        lock = self._keys.batch_lock(batch_id, "read")
        if not self._client.set(lock, token, nx=True, px=int(READ_CLAIM_TTL_S * 1000)):
            raise BatchBusy(f"batch {batch_id} is being read by another process")
        existing = self.get(batch_id)
        if existing is not None and existing.status != BatchStatusValue.READING:
            self._release(lock, token)
            return existing, None
        now = self._now()
        created_at = existing.created_at if existing is not None else now
        key = self._keys.batch(batch_id)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(key, self._keys.batch_jobs(batch_id), self._keys.batch_pending(batch_id))
            pipe.hset(
                key,
                mapping={
                    "name": name,
                    "source": source,
                    "results": results,
                    "level": level,
                    "status": BatchStatusValue.READING,
                    "created_at": repr(created_at),
                },
            )
            pipe.zadd(self._keys.batches(), {batch_id: created_at * 1000}, nx=True)
            pipe.execute()
        status = self.get(batch_id)
        assert status is not None
        return status, token

    def add_lines(
        self, batch_id: str, token: str, entries: Sequence[LineEntry], *, created: int, pending: Sequence[str]
    ) -> None:
        """Append one chunk of lines (in line order) and renew the read claim, in one round trip."""
        key = self._keys.batch(batch_id)
        good = sum(1 for entry in entries if entry.job_id is not None)
        over = sum(1 for entry in entries if entry.over_budget)
        with self._client.pipeline(transaction=False) as pipe:
            if entries:
                pipe.rpush(self._keys.batch_jobs(batch_id), *(entry.encode() for entry in entries))
            if pending:
                pipe.sadd(self._keys.batch_pending(batch_id), *pending)
            pipe.hincrby(key, "lines", len(entries))
            pipe.hincrby(key, "good", good)
            pipe.hincrby(key, "bad", len(entries) - good - over)
            if over:
                pipe.hincrby(key, "over_budget", over)
            pipe.hincrby(key, "created", created)
            pipe.pexpire(self._keys.batch_lock(batch_id, "read"), int(READ_CLAIM_TTL_S * 1000))
            pipe.execute()

    def set_budget(self, batch_id: str, budget: float) -> None:
        """The batch's budget (credits), shown with its status; the ledger enforces it."""
        self._client.hset(self._keys.batch(batch_id), "budget", repr(float(budget)))

    def finish_reading(self, batch_id: str, token: str) -> BatchStatus:
        """Every line is in: the batch now waits for its jobs (and the reconciler watches it)."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._keys.batch(batch_id),
                mapping={
                    "status": BatchStatusValue.SUBMITTED,
                    "read_at": repr(self._now()),
                },
            )
            pipe.sadd(self._keys.batches_active(), batch_id)
            pipe.execute()
        self._release(self._keys.batch_lock(batch_id, "read"), token)
        status = self.get(batch_id)
        assert status is not None
        return status

    def abandon_reading(self, batch_id: str, token: str) -> None:
        """Reading failed half-way: free the claim; the next submit of the same file reads it again."""
        self._release(self._keys.batch_lock(batch_id, "read"), token)

    # -- progress -----------------------------------------------------------------------------------
    def get(self, batch_id: str) -> BatchStatus | None:
        """The record and counters as stored (no job is read; live states are left out)."""
        with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.batch(batch_id))
            pipe.scard(self._keys.batch_pending(batch_id))
            raw, pending = pipe.execute()
        if not raw:
            return None
        return BatchStatus.from_hash(batch_id, {as_text(k): as_text(v) for k, v in raw.items()}, int(pending))

    def settle(self, batch_id: str) -> BatchStatus | None:
        """Read the states of the batch's pending jobs, count the terminal ones, report the live ones."""
        pending_key = self._keys.batch_pending(batch_id)
        batch_key = self._keys.batch(batch_id)
        live: Counter[str] = Counter()
        chunk: list[str] = []
        for member in self._client.sscan_iter(pending_key, count=_SCAN):
            chunk.append(as_text(member))
            if len(chunk) >= _SCAN:
                self._settle_chunk(pending_key, batch_key, chunk, live)
                chunk = []
        if chunk:
            self._settle_chunk(pending_key, batch_key, chunk, live)
        status = self.get(batch_id)
        if status is not None:
            status.states.update(live)
        return status

    def _settle_chunk(self, pending_key: str, batch_key: str, job_ids: list[str], live: Counter[str]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self._keys.job(job_id), "state")
            states = pipe.execute()
        finished: list[str] = []
        for job_id, raw in zip(job_ids, states, strict=True):
            state = as_text(raw) if raw is not None else MISSING
            if state == MISSING or JobState(state).terminal:
                finished += [job_id, state]
            else:
                live[state] += 1
        if finished:
            self._settle(keys=[pending_key, batch_key], args=finished)

    def count_ended(self, batch_id: str, ended: Sequence[tuple[str, str]]) -> bool:
        """Count jobs of the batch that ended (job id, terminal state), each once (``batch_settle.lua``);
        True when none is pending any more (the batch may be finished)."""
        args = [value for pair in ended for value in pair]
        pending_key = self._keys.batch_pending(batch_id)
        with self._client.pipeline(transaction=False) as pipe:
            if args:
                self._settle(keys=[pending_key, self._keys.batch(batch_id)], args=args, client=pipe)
            pipe.scard(pending_key)
            replies = pipe.execute()
        return int(replies[-1]) == 0

    def find(self, text: str) -> str | None:
        """The batch id ``text`` names: itself, or the one batch id it is a prefix of (None: none, or
        several)."""
        if self._client.exists(self._keys.batch(text)):
            return text
        found: list[str] = []
        for member, _ in self._client.zscan_iter(self._keys.batches(), match=f"{_glob_escape(text)}*", count=_SCAN):
            found.append(as_text(member))
            if len(found) > 1:
                return None
        return found[0] if found else None

    def active(self) -> list[str]:
        """Batches read whole whose manifest is not written yet."""
        members = cast("set[Any]", self._client.smembers(self._keys.batches_active()))
        return sorted(as_text(member) for member in members)

    def recent(self, limit: int = 20) -> list[BatchStatus]:
        """The newest batches first."""
        ids = cast("list[Any]", self._client.zrevrange(self._keys.batches(), 0, limit - 1))
        found = [self.get(as_text(batch_id)) for batch_id in ids]
        return [status for status in found if status is not None]

    # -- the manifest -------------------------------------------------------------------------------
    def finalise(self, batch_id: str, files: Files) -> BatchStatus | None:
        """Settle the batch; if every line is terminal (and nobody else is at it), write the manifest and
        mark the batch done. Returns the status (``done`` once finalised); None if there is no such batch.
        """
        status = self.settle(batch_id)
        if status is None or status.status != BatchStatusValue.SUBMITTED or status.pending:
            return status
        token = uuid.uuid4().hex
        lock = self._keys.batch_lock(batch_id, "finalise")
        if not self._client.set(lock, token, nx=True, px=int(FINALISE_CLAIM_TTL_S * 1000)):
            return status
        try:
            files.write_lines(Location.parse(status.results), self.manifest_lines(batch_id))
            ttl = self.terminal_ttl_s
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(
                    self._keys.batch(batch_id),
                    mapping={
                        "status": BatchStatusValue.DONE,
                        "finished_at": repr(self._now()),
                        "manifest": status.results,
                    },
                )
                pipe.srem(self._keys.batches_active(), batch_id)
                for key in (self._keys.batch(batch_id), self._keys.batch_jobs(batch_id)):
                    pipe.expire(key, ttl)
                pipe.xadd(
                    self._keys.events(),
                    {"type": "batch.completed", "job": "", "batch": batch_id, "owner": "", "at": repr(self._now())},
                    maxlen=self.events_max_len,
                    approximate=True,
                )
                pipe.execute()
        finally:
            self._release(lock, token)
        done = self.get(batch_id)
        if done is not None:
            done.states = status.states
        return done

    def manifest_lines(self, batch_id: str) -> Iterator[bytes]:
        """The manifest, one JSON line per input line, read ``_SCAN`` lines per round trip."""
        key = self._keys.batch_jobs(batch_id)
        start = 0
        while True:
            raw = cast("list[Any]", self._client.lrange(key, start, start + _SCAN - 1))
            if not raw:
                return
            start += len(raw)
            entries = [LineEntry.decode(item) for item in raw]
            with self._client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    if entry.job_id is not None:
                        pipe.hmget(self._keys.job(entry.job_id), ["state", "s3_uri", "error", "reason"])
                records = iter(pipe.execute())
            for entry in entries:
                row: dict[str, Any] = {"line": entry.line, "id": entry.id, "job_id": entry.job_id}
                if entry.job_id is None:
                    row.update(state=OVER_BUDGET if entry.over_budget else INVALID, s3_uri=None, error=entry.error)
                else:
                    state, s3_uri, error, reason = (
                        as_text(value) if value is not None else None for value in next(records)
                    )
                    if error is not None and reason is not None:
                        error = f"{reason}: {error}"
                    row.update(state=state or MISSING, s3_uri=s3_uri, error=error)
                yield (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    # -- helpers ------------------------------------------------------------------------------------
    def _now(self) -> float:
        seconds, micros = cast("tuple[int, int]", self._client.time())
        return seconds + micros / 1e6

    def _release(self, lock: str, token: str) -> None:
        release_token_lock(self._client, lock, token)


def wait_until_finished(
    store: BatchStore, batch_id: str, files: Files, *, interval_s: float = 1.0, timeout_s: float | None = None
) -> Iterator[BatchStatus]:
    """Settle the batch every ``interval_s`` (longer for big batches) and yield its status, until done.

    The last status yielded is the done one (this call finalises the batch when it gets there first).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        started = time.monotonic()
        status = store.finalise(batch_id, files)
        if status is None:
            raise LookupError(f"batch {batch_id} not found")
        yield status
        if status.done:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"batch {batch_id} not finished after {timeout_s:.0f}s")
        took = time.monotonic() - started
        # A settle reads every unfinished job: for big batches look less often (≤ ~20% of the time).
        time.sleep(max(interval_s, 4 * took))


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
