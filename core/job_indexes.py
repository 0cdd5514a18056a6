"""The state indexes of the job records: newest, oldest, counts, id prefixes, and their housekeeping
(a sorted set per state: member = job id, score = ms the job entered it; ``core.jobstore`` keeps them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, cast

import redis

from core.jobs import JobState
from core.jobstore_args import text
from core.keys import Keys

_SCAN_COUNT: Final = 1000


class StateIndexes:
    """Reads of the state indexes, mixed into :class:`core.jobstore.JobStore`."""

    _client: redis.Redis
    _keys: Keys

    def newest_in_state(self, state: JobState, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` (id, entered ms) of ``state``, the newest first."""
        index = self._keys.state_index(state.value)
        rows = cast("list[tuple[str | bytes, float]]", self._client.zrevrange(index, 0, limit - 1, withscores=True))
        return [(text(job_id), float(score)) for job_id, score in rows]

    def ids_with_prefix(self, prefix: str, *, limit: int = 2, index: str | None = None) -> list[str]:
        """Up to ``limit`` job ids that start with ``prefix`` (a hex string), read from the state indexes, or
        from the sorted set ``index`` (a server-side scan: for people typing a short id, not hot paths)."""
        if not prefix or any(char not in "0123456789abcdef" for char in prefix):
            return []
        found: list[str] = []
        indexes = [index] if index is not None else [self._keys.state_index(state.value) for state in JobState]
        for scanned in indexes:
            for member, _ in self._client.zscan_iter(scanned, match=f"{prefix}*", count=1000):
                job_id = text(member)
                if job_id not in found:
                    found.append(job_id)
                if len(found) >= limit:
                    return found
        return found

    def count_by_state(self) -> dict[JobState, int]:
        with self._client.pipeline(transaction=False) as pipe:
            for state in JobState:
                pipe.zcard(self._keys.state_index(state.value))
            counts = pipe.execute()
        return {state: int(count) for state, count in zip(JobState, counts, strict=True)}

    def oldest_entered_ms(self, states: Sequence[JobState]) -> dict[JobState, float | None]:
        """When the job longest in each state entered it (ms; None: none there), in one round trip."""
        with self._client.pipeline(transaction=False) as pipe:
            for state in states:
                pipe.zrange(self._keys.state_index(state.value), 0, 0, withscores=True)
            rows = cast("list[list[tuple[Any, float]]]", pipe.execute())
        return {state: (float(row[0][1]) if row else None) for state, row in zip(states, rows, strict=True)}

    def ids_in_state(self, state: JobState, *, older_than_s: float | None = None, limit: int = 1000) -> list[str]:
        """Up to ``limit`` ids in ``state``, longest there first; only those that entered it at least
        ``older_than_s`` ago (Redis clock) when given."""
        top: float | str = "+inf"
        if older_than_s is not None:
            seconds, micros = cast("tuple[int, int]", self._client.time())
            top = seconds * 1000 + micros // 1000 - older_than_s * 1000
        index = self._keys.state_index(state.value)
        ids = cast("list[str | bytes]", self._client.zrangebyscore(index, "-inf", top, start=0, num=limit))
        return [text(job_id) for job_id in ids]

    # -- housekeeping -------------------------------------------------------------------------------
    def cleanup_indexes(self) -> int:
        """Remove state index entries whose job hash is gone (expired); returns how many.

        Costs one pipelined round trip per 1,000 index entries (every entry is checked).
        """
        removed = 0
        for state in JobState:
            index = self._keys.state_index(state.value)
            batch: list[str] = []
            for member, _score in self._client.zscan_iter(index, count=_SCAN_COUNT):
                batch.append(text(member))
                if len(batch) >= _SCAN_COUNT:
                    removed += self._drop_missing(index, batch)
                    batch = []
            if batch:
                removed += self._drop_missing(index, batch)
        return removed

    def _drop_missing(self, index: str, job_ids: list[str]) -> int:
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self._keys.job(job_id))
            exists = pipe.execute()
        # A job hash never comes back once gone (ids are never reused), so this cannot drop a live entry.
        gone = [job_id for job_id, found in zip(job_ids, exists, strict=True) if not found]
        return cast(int, self._client.zrem(index, *gone)) if gone else 0
