"""The release thread: a job's end releases the derived jobs waiting for it, ends its workflow, and
finishes its batch.

It runs in each worker that consumes the ``submit`` queue (:class:`ReleaseStep`, a Celery worker bootstep), as
one consumer of the events stream's ``release`` group: every job's end (``job.stored``, ``job.failed``, ...)
is handed to one of them, which moves the job's waiting children on (:mod:`core.release`) — so a child's
submit message goes out moments after its parent was stored, with no polling interval — and, for a
workflow's node, records the workflow's end once all its nodes ended (``workflow.completed``); for a
batch's job, counts it, and writes the batch's manifest and ``batch.completed`` once its last job ended
(the reconciler only repairs what a crash left). Entries a
dead worker had read but not acknowledged are claimed by another after ``CLAIM_IDLE_MS``; whatever is still
lost (a release between the stream and a crash) is repaired by the reconciler (``waiting_released``).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Final, cast

from config.celery import SUBMIT_QUEUE
from config.settings import Settings
from core.clients import Clients
from core.events import Event
from core.jobs import JobState
from workers.batch.locations import Files
from workers.batch.store import BatchStore
from workers.runtime import Runtime
from workers.storage import build_s3_client
from workers.stream_group import GroupReader, GroupReaderStep

log = logging.getLogger("imagineq.release")

GROUP: Final = "release"
#: How long one read of the stream waits for new events.
BLOCK_MS: Final = 500
#: Entries read but not acknowledged for this long are taken over from their (dead) reader.
CLAIM_IDLE_MS: Final = 15_000
#: A release is taken as lost once a parent ended this long ago and its children still wait.
RELEASE_GRACE_S: Final = 30.0


class Releaser(GroupReader):
    group = GROUP
    block_ms = BLOCK_MS
    claim_idle_ms = CLAIM_IDLE_MS

    def __init__(self, settings: Settings, consumer: str) -> None:
        clients = Clients.build(settings)
        self.jobs, self.workflows = clients.jobs, clients.workflows
        super().__init__(clients.redis, clients.keys, consumer)
        self.batches = BatchStore(
            self.redis, self.keys, terminal_ttl_s=settings.job_ttl_s, events_max_len=settings.events_max_len
        )
        self.files = Files(lambda: build_s3_client(settings.s3, settings.http))

    def _count_batch_ends(self, events: list[Event]) -> None:
        """Each batch job's end counted; a batch whose last job ended gets its manifest and event now."""
        by_batch: dict[str, list[tuple[str, str]]] = {}
        for event in events:
            if event.batch_id and event.job_id and event.type.startswith("job."):
                by_batch.setdefault(event.batch_id, []).append((event.job_id, event.type.removeprefix("job.")))
        for batch_id, ended in by_batch.items():
            if self.batches.count_ended(batch_id, ended):
                status = self.batches.finalise(batch_id, self.files)
                if status is not None and status.done:
                    log.info("release: batch %s finished; manifest written to %s", batch_id, status.manifest)

    def _read_new(self) -> list[tuple[str, dict[str, str]]]:
        reply = self.redis.xreadgroup(GROUP, self.consumer, {self.keys.events(): ">"}, count=200, block=BLOCK_MS)
        return [entry for _, entries in cast("list[Any]", reply or []) for entry in entries]

    def _claim_stale(self) -> list[tuple[str, dict[str, str]]]:
        reply = cast(
            "list[Any]",
            self.redis.xautoclaim(self.keys.events(), GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=200),
        )
        return [entry for entry in reply[1] if entry and entry[1]]

    def handle(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Each ended job's children released and its workflow looked at, then the entries acknowledged."""
        if not entries:
            return
        events = [Event.of(entry_id, fields) for entry_id, fields in entries]
        ended = [event.job_id for event in events if event.job_id and event.type.startswith("job.")]
        self._count_batch_ends(events)
        if ended:
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ended:
                    pipe.exists(self.keys.children(job_id))
                    pipe.hget(self.keys.job(job_id), "workflow_id")
                replies = pipe.execute()
            workflows: set[str] = set()
            for index, job_id in enumerate(ended):
                has_children, workflow_id = replies[2 * index], replies[2 * index + 1]
                if has_children:
                    released = self.jobs.release_children(job_id)
                    if released.queued or released.failed:
                        log.info(
                            "release: job %s ended: %d child(ren) queued, %d failed",
                            job_id,
                            len(released.queued),
                            len(released.failed),
                        )
                if workflow_id:
                    workflows.add(workflow_id.decode() if isinstance(workflow_id, bytes) else workflow_id)
            for workflow_id in sorted(workflows):
                state = self.workflows.finish_if_done(workflow_id)
                if state is not None:
                    log.info("release: workflow %s ended %s", workflow_id, state)
        self.acknowledge([event.id for event in events])


def repair_releases(rt: Runtime, *, grace_s: float, now: float, counts: Counter[str]) -> None:
    """The reconciler's repair: children still waiting for a parent that ended more than ``grace_s`` ago
    (``waiting_released``), and workflows whose every node ended without their event (``workflow_finished``)."""
    waiting = rt.jobs.ids_in_state(JobState.WAITING, older_than_s=grace_s, limit=rt.settings.reconcile_limit)
    children: dict[str, list[str]] = {}
    for job in rt.jobs.get_many(waiting):
        if job is not None and job.state is JobState.WAITING:
            children.setdefault(str(job.input.get("parent")), []).append(job.id)
    for (parent_id, kids), parent in zip(children.items(), rt.jobs.get_many(list(children)), strict=True):
        ended_at = None if parent is None else parent.timestamps.get(parent.state.value, parent.updated_at)
        if parent is not None and (not parent.state.terminal or now - (ended_at or now) < grace_s):
            continue
        # The children set may be what was lost: each child is put back in it first.
        rt.redis.sadd(rt.keys.children(parent_id), *kids)
        released = rt.jobs.release_children(parent_id)
        moved = len(released.queued) + len(released.failed)
        if moved:
            counts["waiting_released"] += moved
            log.warning("reconcile: %d job(s) still waited for job %s, which ended; released", moved, parent_id)
    for workflow_id in rt.workflows.recent(rt.settings.reconcile_limit):
        workflow = rt.workflows.get(workflow_id)
        if workflow is None or workflow.completed_at is not None or now - workflow.created_at < grace_s:
            continue
        if rt.workflows.finish_if_done(workflow_id) is not None:
            counts["workflow_finished"] += 1
            log.warning("reconcile: workflow %s had ended without its event; recorded", workflow_id)


class ReleaseStep(GroupReaderStep):
    """Runs a :class:`Releaser` in each worker that consumes the ``submit`` queue."""

    queue = SUBMIT_QUEUE

    def build(self, worker: Any) -> GroupReader:
        from config.settings import get_settings

        return Releaser(get_settings(), consumer=worker.hostname)
