"""Upstream callbacks: who may send one (per-job secret, optional HMAC, timestamp window) and what it does.

Each job's ``callBackUrl`` is ``{public_base_url}/v1/callbacks/{job_id}/{token}``; the record keeps only
``sha256(token)``. A callback is accepted when, in this order:

1. the job exists (else 404);
2. ``sha256(token)`` equals the record's ``callback_token_hash`` (constant-time; else 403) — the hash is
   written before createTask, so the token also proves the callback is about the job's current attempt;
3. the body is a JSON object with a ``data`` object naming the task (else 400);
4. with an HMAC key configured: ``X-Webhook-Signature`` is base64(HMAC-SHA256(key, taskId + "." +
   X-Webhook-Timestamp)) (else 401), and the timestamp is at most ``max_age_s`` old and at most
   :data:`MAX_FUTURE_SKEW_S` ahead of this host's clock (else 401).

5. with an HMAC key configured, the signed ``(taskId, timestamp, signature)`` has not been accepted
   before (a once-only record kept for the signature window): a replayed pair is answered like a
   duplicate and changes nothing, whatever body it carries.

A callback is a **wake-up**, never a source of truth: the upstream signs only ``taskId.timestamp``, so a
signed callback proves who sent it, not what its body says. An accepted callback about the job's task
wakes a poll at once (``wake(job)``), which reads the task's record from recordInfo with our key, from
the shared recordInfo budget, and moves the job from that record; the result URL downloaded is always the
record's. Before waking it, the job's in-progress slot is given back: only the holder of the job's
callback secret (the upstream, which got it with createTask) calls back, and only once the task has
ended, so the upstream's own count already dropped. A job still ``submitting`` gets a wake marker
instead, which submit acts on right after recording the taskId. The receiver answers at once and never
calls the upstream itself. Every outcome is counted in the shared counters hash as
``callback:<outcome>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import redis

from core import tracing
from core.errors import ImagineQError, TransportError
from core.jobs import Job, JobState
from core.jobstore import JobStore
from core.keys import Keys
from workers.completion import SALVAGEABLE_REASONS, stash_wake, take_wake
from workers.upstream import TaskRecord

log = logging.getLogger("imagineq.callbacks")

#: Signed timestamps may be this far ahead of our clock (the sender's clock is not ours).
MAX_FUTURE_SKEW_S: Final = 30
#: A woken poll runs within a second; duplicate deliveries inside this window wake no second one.
WAKE_DEDUP_MS: Final = 10_000
#: The task record a callback claims is parsed as the callbacks' "endpoint" (for error messages).
CALLBACK_ENDPOINT: Final = "callback"
TIMESTAMP_HEADER: Final = "X-Webhook-Timestamp"
SIGNATURE_HEADER: Final = "X-Webhook-Signature"


class Outcome(StrEnum):
    """What a callback did; the label of the ``imagineq_callbacks_total`` metric."""

    #: Accepted: a poll was woken to read the task's record from the upstream now.
    WOKEN = "woken"
    #: The job had already moved on (a retry, a duplicate delivery, or a poll got there first), or a
    #: poll is already woken for it.
    DUPLICATE = "duplicate"
    #: A signed (taskId, timestamp, signature) seen before: answered like a duplicate, nothing done.
    REPLAYED = "replayed"
    #: The job is still ``submitting``: a wake marker for submit to act on right after recording the taskId.
    EARLY = "early"
    #: Not about the job's current task, or not a terminal state: accepted, ignored.
    IGNORED = "ignored"
    #: Refused: no such job.
    UNKNOWN_JOB = "unknown_job"
    #: Refused: the per-job secret does not match.
    BAD_TOKEN = "bad_token"
    #: Refused: missing or wrong HMAC signature.
    BAD_SIGNATURE = "bad_signature"
    #: Refused: signed timestamp outside the window.
    STALE = "stale"
    #: Refused: the body is not a callback.
    BAD_BODY = "bad_body"

    @property
    def status(self) -> int:
        """The HTTP status answered for this outcome."""
        return _STATUS.get(self, 200)


_STATUS: Final = {
    Outcome.UNKNOWN_JOB: 404,
    Outcome.BAD_TOKEN: 403,
    Outcome.BAD_SIGNATURE: 401,
    Outcome.STALE: 401,
    Outcome.BAD_BODY: 400,
}


class CallbackRejected(ImagineQError):
    """The callback is refused; ``outcome`` says why (and which HTTP status to answer)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


# -- pure checks ----------------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token(token: str, expected_hash: str | None) -> None:
    """The URL's secret must hash to the record's ``callback_token_hash`` (compared in constant time)."""
    if not expected_hash or not hmac.compare_digest(token_hash(token), expected_hash):
        raise CallbackRejected(Outcome.BAD_TOKEN, "wrong callback secret")


def sign(key: bytes, task_id: str, timestamp: str) -> str:
    """base64(HMAC-SHA256(key, taskId + "." + timestamp)), as the upstream signs."""
    digest = hmac.new(key, f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def check_signature(
    key: bytes,
    task_id: str,
    timestamp: str | None,
    signature: str | None,
    *,
    now_s: float,
    max_age_s: float,
    max_skew_s: float = MAX_FUTURE_SKEW_S,
) -> None:
    """Verify the HMAC headers; raise :class:`CallbackRejected` (bad_signature or stale)."""
    if not timestamp or not signature:
        raise CallbackRejected(Outcome.BAD_SIGNATURE, f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} required")
    try:
        given = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CallbackRejected(Outcome.BAD_SIGNATURE, "signature is not base64") from None
    expected = hmac.new(key, f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise CallbackRejected(Outcome.BAD_SIGNATURE, "signature does not match")
    # Checked after the signature, so an attacker learns nothing about the window from the answer.
    try:
        sent_s = int(timestamp.strip())
    except ValueError:
        raise CallbackRejected(Outcome.STALE, "timestamp is not unix seconds") from None
    if now_s - sent_s > max_age_s:
        raise CallbackRejected(Outcome.STALE, f"timestamp older than {max_age_s:.0f}s")
    if sent_s - now_s > max_skew_s:
        raise CallbackRejected(Outcome.STALE, "timestamp is in the future")


def parse_body(body: bytes) -> tuple[Mapping[str, Any], TaskRecord]:
    """The callback's ``data`` object and the task record it claims (``taskId`` or ``task_id``).

    A body ``code`` of 501 means failure whatever ``data.state`` says. Only the task id and whether the
    state is terminal are used: the record itself is read from the upstream.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise CallbackRejected(Outcome.BAD_BODY, "body is not JSON") from None
    except RecursionError:
        raise CallbackRejected(Outcome.BAD_BODY, "body is nested too deeply") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise CallbackRejected(Outcome.BAD_BODY, "body must be an object with a data object")
    data: dict[str, Any] = dict(payload["data"])
    if payload.get("code") == 501 and str(data.get("state", "")).lower() != "fail":
        data["state"] = "fail"
    try:
        record = TaskRecord.from_payload(data, endpoint=CALLBACK_ENDPOINT)
    except TransportError as error:
        raise CallbackRejected(Outcome.BAD_BODY, error.message.removeprefix("bad response: ")) from None
    return data, record


# -- the receiver ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    outcome: Outcome
    message: str = "success"


class CallbackReceiver:
    """Verifies callbacks and wakes the job's poll; ``wake(job)`` publishes that poll, ``release(job)``
    gives the job's in-progress slot back."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        jobs: JobStore,
        wake: Callable[[Job], None],
        release: Callable[[Job], None],
        *,
        hmac_key: bytes | None,
        max_age_s: float,
        early_ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._jobs = jobs
        self._wake = wake
        self._release = release
        self._hmac_key = hmac_key
        self._max_age_s = max_age_s
        self._early_ttl_s = early_ttl_s
        self._clock = clock

    def receive(self, job_id: str, token: str, body: bytes, headers: Mapping[str, str]) -> Received:
        try:
            received = self._receive(job_id, token, body, headers)
        except CallbackRejected as rejected:
            log.warning("callback for job %s refused: %s", job_id, rejected.message)
            received = Received(rejected.outcome, rejected.message)
        self._redis.hincrby(self._keys.counters(), f"callback:{received.outcome.value}", 1)
        return received

    def _receive(self, job_id: str, token: str, body: bytes, headers: Mapping[str, str]) -> Received:
        job = self._jobs.get(job_id)
        if job is None:
            raise CallbackRejected(Outcome.UNKNOWN_JOB, "unknown job")
        check_token(token, job.callback_token_hash)
        _, record = parse_body(body)
        released = False
        if self._hmac_key is not None:
            timestamp, signature = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
            check_signature(
                self._hmac_key, record.task_id, timestamp, signature, now_s=self._clock(), max_age_s=self._max_age_s
            )
            if record.state.terminal and job.state is JobState.GENERATING and job.task_id == record.task_id:
                # The upstream says the job's own task ended (signed: a replay says the same), so its slot
                # goes back first: the next job's createTask waits for it, not for the checks below.
                self._release(job)
                released = True
            if not self._first_time(record.task_id, str(timestamp), str(signature)):
                log.warning("callback for job %s: a replayed signature, ignored", job_id)
                return Received(Outcome.REPLAYED, "duplicate")
        if not record.state.terminal:
            return Received(Outcome.IGNORED)
        if job.task_id is not None and job.task_id != record.task_id:
            return Received(Outcome.IGNORED)
        with tracing.job_span("imagineq.callback", job, task_state=record.state.value) as span:
            received = self._early(job, record.task_id) if job.state is JobState.SUBMITTING else None
            received = received or self._wake_poll(job, record.task_id, released=released)
            tracing.set_outcome(span, received.outcome.value)
        return received

    def _first_time(self, task_id: str, timestamp: str, signature: str) -> bool:
        """Record the signed pair once for the signature window; False when it was recorded before."""
        digest = hashlib.sha256(f"{task_id}\n{timestamp}\n{signature}".encode()).hexdigest()
        ttl_s = int(self._max_age_s + MAX_FUTURE_SKEW_S) + 1
        return bool(self._redis.set(self._keys.callback_seen(digest), "1", nx=True, ex=ttl_s))

    def _wake_poll(self, job: Job, task_id: str, *, released: bool = False) -> Received:
        """Give the job's slot back (unless ``released`` already) and wake its poll, once."""
        salvage = job.state is JobState.FAILED and job.reason in SALVAGEABLE_REASONS
        if job.state is not JobState.GENERATING and not salvage:
            return Received(Outcome.DUPLICATE)
        if salvage and job.task_id is None:
            # createTask's answer was lost: the signed callback names the task, which the woken poll
            # then reads from the upstream with our key (a task that is not ours is not found there).
            self._jobs.update(job.id, expect=JobState.FAILED, fields={"task_id": task_id})
        if not released:
            self._release(job)
        if not self._redis.set(self._keys.callback_wake(job.id), "1", nx=True, px=WAKE_DEDUP_MS):
            return Received(Outcome.DUPLICATE)
        self._wake(job)  # the poll reads the record itself: the job is passed for its id and priority
        log.info("callback: job %s (task %s) woke its poll", job.id, task_id)
        return Received(Outcome.WOKEN)

    def _early(self, job: Job, task_id: str) -> Received:
        """Submit has not recorded the taskId yet: leave it a wake marker, unless it just did."""
        stash_wake(self._redis, self._keys, job.id, task_id, self._early_ttl_s)
        now = self._jobs.get(job.id)
        if now is None or now.state is JobState.SUBMITTING:
            # Submit's move to generating comes after this read, so its take_wake sees the marker.
            log.info("callback: job %s still submitting; wake marker left for task %s", job.id, task_id)
            return Received(Outcome.EARLY)
        if take_wake(self._redis, self._keys, job.id) is None:
            return Received(Outcome.EARLY)  # submit took it and acts on it
        if now.task_id is not None and now.task_id != task_id:
            return Received(Outcome.IGNORED)
        return self._wake_poll(now, task_id)
