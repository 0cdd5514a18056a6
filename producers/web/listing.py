"""``GET /v1/jobs``: pages through the state indexes with a cursor that is a position.

``batch`` and ``owner`` (a principal that is not an admin sees its own jobs only) filter the entries read,
so a filtered page may hold fewer than ``limit`` jobs while ``next_cursor`` is still set: at most
``SCAN_BUDGET_FACTOR`` × ``limit`` entries are looked at per page, two short fields each; only the jobs
that match are read whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from core.jobs import (
    JobState,
)
from producers.web.context import Web
from producers.web.models import JobPage, JobView

#: A page reads at most this many index entries per ``limit`` (matters only with ``batch``).
SCAN_BUDGET_FACTOR = 10


def encode_cursor(state: JobState, score: float, job_id: str) -> str:
    text = repr(score)
    if "e" in text or "n" in text:  # never for scores in ms since the epoch; keep the pattern true anyway
        text = f"{score:.6f}"
    return f"{state.value}~{text}~{job_id}"


def decode_cursor(cursor: str) -> tuple[JobState, float, str]:
    """A cursor is a position (state, score, id): every string matching CURSOR_PATTERN is one."""
    state, score, job_id = cursor.split("~")
    return JobState(state), float(score), job_id


def list_jobs(
    web: Web, state: JobState | None, batch: str | None, cursor: str | None, limit: int, *, owner: str | None = None
) -> JobPage:
    """See the module docstring: state indexes in order, entries after the cursor, ``batch`` filtered."""
    order = list(JobState)
    states = [state] if state is not None else order
    after: tuple[float, str] | None = None
    if cursor is not None:
        # Positions are ordered by (state in JobState order, score, id); a cursor past the selected
        # states gives an empty page, one before them the first page.
        at_state, score, last_id = decode_cursor(cursor)
        states = [s for s in states if order.index(s) >= order.index(at_state)]
        if states and states[0] is at_state:
            after = (score, last_id)
    filtered = batch is not None or owner is not None
    budget = limit * SCAN_BUDGET_FACTOR if filtered else limit
    found: list[JobView] = []
    last: tuple[JobState, float, str] | None = None
    chunk = min(max(limit + 1, 50), 1000)
    for current in states:
        for rows in index_after(web, current, after, chunk):
            jobs = web.jobs.get_many_matching([m for m, _ in rows], batch=batch, owner=owner)
            for (member, score), job in zip(rows, jobs, strict=True):
                if len(found) == limit or budget == 0:
                    # There is at least this one more entry: the page ends here.
                    assert last is not None
                    return JobPage(jobs=found, next_cursor=encode_cursor(*last))
                budget -= 1
                last = (current, score, member)
                if (
                    job is not None
                    and (batch is None or job.batch_id == batch)
                    and (owner is None or job.owner == owner)
                ):
                    found.append(JobView.of(job))
        after = None
    return JobPage(jobs=found, next_cursor=None)


def index_after(
    web: Web, state: JobState, after: tuple[float, str] | None, chunk: int
) -> Iterator[list[tuple[str, float]]]:
    """The state index's entries (id, score) in order, those after ``after`` only, ``chunk`` at a time."""
    index = web.keys.state_index(state.value)
    low = "-inf" if after is None else repr(after[0])
    offset = 0
    while True:
        rows = cast(
            "list[tuple[str, float]]",
            web.redis.zrangebyscore(index, low, "+inf", start=offset, num=chunk, withscores=True),
        )
        if not rows:
            return
        offset += len(rows)
        if after is not None:
            rows = [(member, score) for member, score in rows if (score, member) > after]
        if rows:
            yield rows
