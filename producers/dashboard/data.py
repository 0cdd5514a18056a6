"""What the dashboard's pages show, read from the state indexes and counters only (never a scan of all jobs).

- The overview is ``imagineq status`` (:class:`~producers.status.StatusReader`: quotas, queues, jobs by
  state, failures) plus two charts counted in one pipelined round trip: each account's creations in
  buckets of its rolling window (``ZCOUNT`` on its creation log) and the jobs stored per minute over the
  last hour (``ZCOUNT`` on the ``stored`` state index, scored by when each job got there). Credits come
  from the upstream in a background thread, at most every ``CREDITS_EVERY_S``: a page never waits on it.
- The jobs list merges the state indexes newest first (``ZREVRANGEBYSCORE`` below a cursor, a chunk from
  each), so a page costs a few index reads and one ``HGETALL`` per row whatever the number of jobs; a
  filter (batch, owner) reads at most ``SCAN_BUDGET_FACTOR`` entries per row shown.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from config.settings import PrincipalSettings
from core.jobs import Job, JobState
from producers.status import CREDITS_TIMEOUT_S, Status, StatusReader
from producers.web.context import Web
from workers.batch.status import BatchStatus
from workers.batch.store import BatchStore

CREDITS_EVERY_S = 30.0
#: Bars in an account's creations chart (its rolling window split evenly).
CREATION_BUCKETS = 12
STORED_MINUTES = 60
SCAN_BUDGET_FACTOR = 10
#: Batches on the batches page; those unfinished with at most SETTLE_MAX pending jobs are settled first.
BATCHES_SHOWN = 20
SETTLE_MAX = 2000


@dataclass(frozen=True)
class Overview:
    status: Status
    #: Account → creations per bucket, oldest first, and the bucket's length in seconds.
    creations: dict[str, tuple[list[int], float]]
    #: Jobs stored in each of the last 60 minutes, oldest first.
    stored_per_minute: list[int]


@dataclass(frozen=True)
class TenantOverview:
    """What a principal that is not an admin sees first: its own counts and newest jobs."""

    principal: PrincipalSettings
    live: int
    kept: int
    newest: list[JobRow]


@dataclass(frozen=True)
class JobRow:
    job: Job
    age_s: float
    took_s: float | None


@dataclass(frozen=True)
class Step:
    state: str
    at: float
    spent_s: float | None
    #: Which attempt (1 = the first; a resubmit starts the next) and, for an earlier attempt's failure,
    #: its reason.
    attempt: int = 1
    note: str | None = None


class Credits:
    """The accounts' credits, refreshed in the background at most every ``CREDITS_EVERY_S``."""

    def __init__(self, reader: StatusReader) -> None:
        self._reader = reader
        self._known: dict[str, tuple[float | None, str | None]] = {}
        self._at = -1e9
        self._lock = threading.Lock()
        self._running = False

    def known(self) -> dict[str, tuple[float | None, str | None]]:
        with self._lock:
            stale = time.monotonic() - self._at > CREDITS_EVERY_S
            if stale and not self._running:
                self._running = True
                threading.Thread(target=self._refresh, name="dashboard-credits", daemon=True).start()
            return dict(self._known)

    def _refresh(self) -> None:
        try:
            answers = {
                account.name: self._reader.credits_of(account, CREDITS_TIMEOUT_S)
                for account in self._reader.settings.accounts
            }
        finally:
            with self._lock:
                self._running = False
                self._at = time.monotonic()
        with self._lock:
            self._known = answers


class DashboardData:
    def __init__(self, web: Web) -> None:
        self.web = web
        self.reader = StatusReader(web.settings, client=web.redis)
        self.credits = Credits(self.reader)
        self.batches = BatchStore(
            web.redis, web.keys, terminal_ttl_s=web.settings.job_ttl_s, events_max_len=web.settings.events_max_len
        )

    # -- overview -------------------------------------------------------------------------------------
    def overview(self, *, failures: int = 10) -> Overview:
        known = self.credits.known()
        status = self.reader.gather(credits=bool(known), known_credits=known, failures=failures)
        now_ms = status.at * 1000
        accounts = [(a.account, a.window_s) for a in status.accounts]
        with self.web.redis.pipeline(transaction=False) as pipe:
            for name, window_s in accounts:
                step_ms = window_s * 1000 / CREATION_BUCKETS
                for index in range(CREATION_BUCKETS):
                    low = now_ms - (CREATION_BUCKETS - index) * step_ms
                    pipe.zcount(self.web.keys.creations(name), f"({low}", low + step_ms)
            stored = self.web.keys.state_index(JobState.STORED.value)
            for minute in range(STORED_MINUTES):
                low = now_ms - (STORED_MINUTES - minute) * 60_000
                pipe.zcount(stored, f"({low}", low + 60_000)
            counts = [int(n) for n in pipe.execute()]
        creations = {}
        for position, (name, window_s) in enumerate(accounts):
            buckets = counts[position * CREATION_BUCKETS : (position + 1) * CREATION_BUCKETS]
            creations[name] = (buckets, window_s / CREATION_BUCKETS)
        return Overview(status, creations, counts[len(accounts) * CREATION_BUCKETS :])

    def tenant_overview(self, principal: PrincipalSettings, *, newest: int = 10) -> TenantOverview:
        rows, _ = self.newest_jobs(state=None, batch=None, owner=principal.name, before=None, limit=newest)
        limits = self.web.limits
        return TenantOverview(principal, limits.live(principal.name), limits.kept(principal.name), rows)

    # -- jobs -----------------------------------------------------------------------------------------
    def newest_jobs(
        self,
        *,
        state: JobState | None,
        batch: str | None,
        owner: str | None,
        before: tuple[float, str] | None,
        limit: int,
    ) -> tuple[list[JobRow], tuple[float, str] | None]:
        """Up to ``limit`` jobs, newest (last state change) first, below the ``before`` position; and the
        position to continue from (None at the end)."""
        filtered = batch is not None or owner is not None
        budget = limit * SCAN_BUDGET_FACTOR if filtered else limit
        states = [state] if state is not None else list(JobState)
        entries = heapq.merge(*(self._below(s, before, budget + 1) for s in states), reverse=True)
        now = self._now()
        rows: list[JobRow] = []
        last: tuple[float, str] | None = None
        for chunk in _chunks(entries, 50):
            jobs = self.web.jobs.get_many_matching([job_id for _, job_id in chunk], batch=batch, owner=owner)
            for position, job in zip(chunk, jobs, strict=True):
                if len(rows) == limit or budget == 0:
                    return rows, last  # there is at least this one more entry
                budget -= 1
                last = position
                if (
                    job is not None
                    and (batch is None or job.batch_id == batch)
                    and (owner is None or job.owner == owner)
                ):
                    rows.append(row_of(job, now))
        return rows, None

    def _below(self, state: JobState, before: tuple[float, str] | None, count: int) -> Iterator[tuple[float, str]]:
        """Entries (score, id) of a state index, newest first, strictly below ``before``."""
        top = "+inf" if before is None else repr(before[0])
        rows = cast(
            "list[tuple[str, float]]",
            self.web.redis.zrevrangebyscore(
                self.web.keys.state_index(state.value), top, "-inf", start=0, num=count + 8, withscores=True
            ),
        )
        taken = 0
        for member, score in rows:
            if before is not None and (score, member) >= before:
                continue
            yield score, member
            taken += 1
            if taken >= count:
                return

    def search(self, prefix: str, *, owner: str | None, limit: int = 20) -> list[JobRow]:
        """Jobs whose id starts with ``prefix`` (a full id is one read; a prefix scans the indexes)."""
        prefix = prefix.strip().lower()
        ids = [prefix] if len(prefix) == 32 else self.web.jobs.ids_with_prefix(prefix, limit=limit)
        now = self._now()
        return [
            row_of(job, now)
            for job in self.web.jobs.get_many(ids)
            if job is not None and (owner is None or job.owner == owner)
        ]

    def _now(self) -> float:
        seconds, micros = cast("tuple[int, int]", self.web.redis.time())
        return seconds + micros / 1e6

    # -- batches --------------------------------------------------------------------------------------
    def recent_batches(self) -> list[BatchStatus]:
        shown = []
        for status in self.batches.recent(BATCHES_SHOWN):
            if not status.done and 0 < status.pending <= SETTLE_MAX:
                status = self.batches.settle(status.id) or status
            shown.append(status)
        return shown


def _chunks(entries: Iterator[tuple[float, str]], size: int) -> Iterator[list[tuple[float, str]]]:
    chunk: list[tuple[float, str]] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def row_of(job: Job, now: float) -> JobRow:
    ended = job.timestamps.get(job.state.value) if job.state.terminal else None
    return JobRow(
        job=job, age_s=max(0.0, now - job.created_at), took_s=None if ended is None else ended - job.created_at
    )


def timeline(job: Job) -> list[Step]:
    """Every state the job entered, in order, with the time spent there: each earlier attempt's (kept when
    the job was resubmitted, ending in its failure and reason), then the current one's."""
    steps: list[Step] = []
    attempts = [(dict(a.get("timestamps") or {}), a.get("reason")) for a in job.history]
    current = dict(job.timestamps)
    if attempts:  # the record keeps each state's last entry: the current attempt began at its last queued
        began = current.get(JobState.QUEUED.value, 0.0)
        current = {state: at for state, at in current.items() if at >= began}
    for index, (stamps, reason) in enumerate([*attempts, (current, job.reason)]):
        moments = sorted(((at, state) for state, at in stamps.items()), key=lambda item: item[0])
        for position, (at, state) in enumerate(moments):
            following = moments[position + 1][0] if position + 1 < len(moments) else None
            spent = following - at if following is not None else None
            note = reason if state == JobState.FAILED.value and index < len(attempts) else None
            steps.append(Step(state=state, at=at, spent_s=spent, attempt=index + 1, note=note))
    return steps


def batch_progress(status: BatchStatus) -> dict[str, Any]:
    """Stored / failed / canceled / waiting counts and percentages of a batch's jobs (expired and missing
    records count as failed: no result came of them)."""
    total = max(status.created, 0)
    stored = status.states.get(JobState.STORED.value, 0)
    canceled = status.states.get(JobState.CANCELED.value, 0)
    failed = status.finished - stored - canceled
    waiting = max(0, total - stored - failed - canceled)

    def percent(n: int) -> float:
        return 0.0 if total == 0 else round(100 * n / total, 1)

    return {
        "total": total,
        "stored": stored,
        "failed": failed,
        "canceled": canceled,
        "waiting": waiting,
        "stored_pct": percent(stored),
        "failed_pct": percent(failed),
        "canceled_pct": percent(canceled),
        "done_pct": percent(stored + failed + canceled),
    }


#: A workflow graph's node box and the gaps between columns (parents left, children right) and rows.
NODE_W, NODE_H, GAP_X, GAP_Y, THUMB = 210, 72, 70, 24, 56


def workflow_graph(summary: dict[str, Any], thumbs: dict[str, str]) -> dict[str, Any]:
    """Where each node of a workflow is drawn: a column per depth (a parent left of its children), a row
    per node of that depth; an edge from each parent's right side to its child's left. ``thumbs``: a
    picture's link per job id (its first image output), drawn in the box."""
    nodes = summary["nodes"]
    depth: dict[str, int] = {}
    for node in nodes:  # parents come first
        depth[node["name"]] = depth[node["parent"]] + 1 if node.get("parent") in depth else 0
    rows: dict[int, int] = {}
    placed: dict[str, dict[str, Any]] = {}
    for node in nodes:
        column = depth[node["name"]]
        row = rows.get(column, 0)
        rows[column] = row + 1
        placed[node["name"]] = {
            **node,
            "x": 10 + column * (NODE_W + GAP_X),
            "y": 10 + row * (NODE_H + GAP_Y),
            "thumb": thumbs.get(node["job_id"]),
        }
    edges = [
        {
            "x1": placed[node["parent"]]["x"] + NODE_W,
            "y1": placed[node["parent"]]["y"] + NODE_H // 2,
            "x2": placed[node["name"]]["x"],
            "y2": placed[node["name"]]["y"] + NODE_H // 2,
        }
        for node in nodes
        if node.get("parent") in placed
    ]
    columns = max(depth.values(), default=0) + 1
    return {
        "nodes": list(placed.values()),
        "edges": edges,
        "width": 20 + columns * NODE_W + (columns - 1) * GAP_X,
        "height": 20 + max(rows.values(), default=1) * (NODE_H + GAP_Y) - GAP_Y,
        "node_w": NODE_W,
        "node_h": NODE_H,
        "thumb": THUMB,
    }
