"""Derived jobs that wait for their parent: what its end does to them.

A derived job whose parent is not stored yet is created ``waiting`` (no submit message, in no ready set) and
joins its parent's children set (``Keys.children``). When the parent ends, each waiting child moves on in one
compare-and-set:

- parent **stored**: ``waiting → queued``, on the parent's account when it takes the parent's upstream task
  (``pin``), with what the parent made (``parent_output``); it enters its pool's ready set and gets its
  submit message at once. A parent stored longer ago than ``parent_max_age_s`` (the upstream keeps a task's
  files about two weeks) fails it ``parent_too_old``; an image index the parent did not make fails it
  ``parent_output_missing``.
- parent **failed** or **expired**: ``waiting → failed (parent_failed)``; **canceled**: ``parent_canceled``;
  a parent record that is gone: ``parent_failed``. No createTask is ever sent for such a child, and its own
  end (an event like any job's) releases its children in turn.

Who calls it: the submit workers' release thread on every job's end (:mod:`workers.release`), the producer
that created children of a parent which ended meanwhile (``JobCreation``), and the reconciler for a release
lost to a crash. Every move is a compare-and-set from ``waiting``, so doing it twice changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

import redis

from core.jobs import Job, JobState
from core.jobstore_args import text
from core.keys import Keys
from core.messages import submit_message


class JobStore(Protocol):
    """What a release needs of the job store (``core.jobstore.JobStore`` has it)."""

    parent_max_age_s: float

    def get(self, job_id: str) -> Job | None: ...

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]: ...

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: JobState | Iterable[JobState] | None = None,
        fields: Mapping[str, str | int | float | None] | None = None,
        read: Job | None = None,
    ) -> bool: ...


#: A parent's end → the reason its waiting children fail with.
PARENT_FAILURES: Final = {
    JobState.FAILED: "parent_failed",
    JobState.EXPIRED: "parent_failed",
    JobState.CANCELED: "parent_canceled",
}


@dataclass
class Released:
    """What a release did: the children queued and those failed (by id)."""

    queued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def release_children(jobs: JobStore, client: redis.Redis, keys: Keys, parent_id: str) -> Released:
    """Move every child waiting for ``parent_id`` on, if the parent ended (see the module docstring)."""
    out = Released()
    children_key = keys.children(parent_id)
    child_ids = sorted(text(member) for member in cast("set[str | bytes]", client.smembers(children_key)))
    if not child_ids:
        return out
    parent = jobs.get(parent_id)
    if parent is not None and not parent.state.terminal:
        return out  # not yet: its end releases them
    seconds, micros = cast("tuple[int, int]", client.time())
    now = seconds + micros / 1e6
    for child in jobs.get_many(child_ids):
        if child is None or child.state is not JobState.WAITING:
            continue
        verdict = _verdict(parent, parent_id, child, now, jobs.parent_max_age_s)
        if isinstance(verdict, Job):
            fields = {"pin": verdict.pin, "parent_output": verdict.parent_output}
            if jobs.transition(child.id, JobState.QUEUED, expect=JobState.WAITING, fields=fields, read=verdict):
                message = submit_message(dataclasses.replace(verdict, state=JobState.QUEUED), keys=keys)
                client.lpush(message.queue_key, message.payload)
                out.queued.append(child.id)
        else:
            reason, error = verdict
            fields = {"reason": reason, "error": error}
            if jobs.transition(child.id, JobState.FAILED, expect=JobState.WAITING, fields=fields, read=child):
                out.failed.append(child.id)
    # Every child looked at has moved on (or was not waiting any more); one added since is its creator's.
    client.srem(children_key, *child_ids)
    return out


def _verdict(parent: Job | None, parent_id: str, child: Job, now: float, max_age_s: float) -> Job | tuple[str, str]:
    """The child as it goes on (pin and parent_output set), or why it fails (reason, error)."""
    if parent is None:
        return "parent_failed", f"parent job {parent_id} no longer exists"
    if parent.state is not JobState.STORED:
        reason = PARENT_FAILURES.get(parent.state, "parent_failed")
        why = f" ({parent.reason})" if parent.reason and parent.state is JobState.FAILED else ""
        return reason, f"parent job {parent.id} {parent.state.value}{why}"
    stored_at = parent.timestamps.get(JobState.STORED.value, parent.updated_at)
    if now - stored_at > max_age_s:
        return "parent_too_old", f"parent job {parent.id} was stored {int((now - stored_at) // 86400)} days ago"
    spec = child.spec
    rule = spec.parent
    made = parent.spec.output_of(parent.parent_output)
    if rule is None or made not in rule.outputs:
        return "parent_output_missing", f"parent job {parent.id} made a {made}; {spec.short} cannot take it"
    index = child.input.get("index")
    if isinstance(index, int) and index >= len(parent.result_urls):
        return (
            "parent_output_missing",
            f"parent job {parent.id} made {len(parent.result_urls)} image(s); there is no image {index}",
        )
    pin = parent.account if rule.uses_task else child.pin
    if rule.uses_task and (not parent.account or not parent.task_id):
        return "parent_failed", f"parent job {parent.id} has no upstream task"
    return dataclasses.replace(child, pin=pin, parent_output=made)
