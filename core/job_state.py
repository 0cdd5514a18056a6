"""A job's states, the moves allowed between them, and its priority class.

Every move goes through one compare-and-set (``core/lua/job_transition.lua``) against the table here,
so a poll, a callback and a redelivered message can race safely: whoever loses the compare-and-set does
nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class JobState(StrEnum):
    #: A derived job waiting for its parent job to be stored (then ``queued``; ``failed`` when the parent
    #: failed, was canceled or is too old).
    WAITING = "waiting"
    #: Waiting for a submit worker (and for quota).
    QUEUED = "queued"
    #: Claimed by a submit worker; createTask may be in flight.
    SUBMITTING = "submitting"
    #: The upstream task exists (``task_id`` set); being followed by polls and/or callbacks.
    GENERATING = "generating"
    #: The upstream succeeded (``result_url`` set); being streamed into S3.
    DOWNLOADING = "downloading"
    #: Terminal: the video is in S3 (``s3_uri``, ``size``, ``sha256``).
    STORED = "stored"
    #: Terminal (but resubmittable/salvageable): gave up; ``reason`` says why, ``error`` in words.
    FAILED = "failed"
    #: Terminal: the result was no longer downloadable.
    EXPIRED = "expired"
    #: Terminal: withdrawn before it reached the upstream.
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """No worker acts on the job any more; its record expires after the store's terminal TTL."""
        return self in TERMINAL_STATES


TERMINAL_STATES: Final = frozenset({JobState.STORED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELED})

_S = JobState
#: Allowed moves, from → to. No self loops: a second writer of the same move sees its CAS fail.
TRANSITIONS: Final[dict[JobState, frozenset[JobState]]] = {
    _S.WAITING: frozenset({_S.QUEUED, _S.FAILED, _S.CANCELED}),
    _S.QUEUED: frozenset({_S.SUBMITTING, _S.CANCELED}),
    # Back to queued: quota wait, transient error before createTask, lost claim. Not canceled: the
    # task may already exist upstream.
    _S.SUBMITTING: frozenset({_S.QUEUED, _S.GENERATING, _S.FAILED}),
    _S.GENERATING: frozenset({_S.DOWNLOADING, _S.FAILED, _S.EXPIRED}),
    _S.DOWNLOADING: frozenset({_S.STORED, _S.FAILED, _S.EXPIRED}),
    # Operator resubmit (e.g. reason outcome_unknown); salvage a late completion of a timed-out job.
    _S.FAILED: frozenset({_S.QUEUED, _S.DOWNLOADING}),
    _S.STORED: frozenset(),
    _S.EXPIRED: frozenset(),
    _S.CANCELED: frozenset(),
}


def allowed_from(to: JobState) -> frozenset[JobState]:
    """The states a job may be in to move to ``to``."""
    return _ALLOWED_FROM[to]


_ALLOWED_FROM: Final = {to: frozenset(src for src, dests in TRANSITIONS.items() if to in dests) for to in JobState}


class Priority(StrEnum):
    #: Someone is waiting: goes ahead of batch work.
    INTERACTIVE = "interactive"
    #: Batch lines and schedules.
    BATCH = "batch"
