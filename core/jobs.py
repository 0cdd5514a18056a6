"""A job's record (:class:`Job`), and the job model's public names: its states and moves
(:mod:`core.job_state`) and the request that makes one (:mod:`core.job_request`) are read from here.

The record lives in one Redis hash per job (see :class:`core.jobstore.JobStore`); this module is pure.
Hash field names are the :class:`Job` attribute names, plus ``at_<state>`` (time the state was last
entered). Empty values are never stored: a missing field reads as ``None``/``0``/``{}``. To keep a queued
job small, creation writes only ``created_at``: ``updated_at`` and ``at_queued`` read as ``created_at``
until a later write sets them. Times are float seconds since the epoch from the Redis server clock.

Job ids are ``uuid4().hex``: unguessable and collision-free without coordination; ordering by age comes
from the state indexes (scored by time), not from the id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Final

from core.catalog import DEFAULT_MODEL, ModelSpec, model_named
from core.job_request import (
    ASPECT_RATIOS,
    KEY_MAX_CHARS,
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    MODES,
    NOTIFY_URL_MAX_CHARS,
    NOTIFY_URL_PATTERN,
    PROMPT_MAX_CHARS,
    SERVER_SET_FIELDS,
    JobRequest,
    check_notify_url,
    encode_metadata,
    nesting_depth,
)
from core.job_state import (
    TERMINAL_STATES,
    TRANSITIONS,
    JobState,
    Priority,
    allowed_from,
)

#: The job model's public names (the states and the request are re-exported from here).
__all__ = [
    "ASPECT_RATIOS",
    "COUNTER_FIELDS",
    "DETERMINISTIC_REASONS",
    "KEY_MAX_CHARS",
    "MANAGED_FIELDS",
    "METADATA_MAX_BYTES",
    "METADATA_MAX_DEPTH",
    "MODES",
    "NOTIFY_URL_MAX_CHARS",
    "NOTIFY_URL_PATTERN",
    "PARENT_REASONS",
    "PROMPT_MAX_CHARS",
    "SERVER_SET_FIELDS",
    "TERMINAL_STATES",
    "TIMESTAMP_PREFIX",
    "TRANSITIONS",
    "Job",
    "JobRequest",
    "JobState",
    "Priority",
    "allowed_from",
    "check_notify_url",
    "encode_json",
    "encode_metadata",
    "nesting_depth",
    "new_job_id",
]


def new_job_id() -> str:
    return uuid.uuid4().hex


#: Every reason a derived job fails with, before it reached the upstream, because of its parent.
PARENT_REASONS: Final = frozenset({"parent_failed", "parent_canceled", "parent_too_old", "parent_output_missing"})
#: Failure reasons a resubmit would meet again: the request refused as it is, or its parent gone wrong.
DETERMINISTIC_REASONS: Final = frozenset({"rejected", "invalid_input", "invalid_request", *PARENT_REASONS})
#: The upstream's failCodes of a generation that fails the same way every time.
DETERMINISTIC_FAIL_CODES: Final = frozenset({"content_moderation"})
#: Counters kept on the record (``JobStore.incr``); absent means 0.
COUNTER_FIELDS: Final = ("attempts", "submit_attempts", "poll_errors", "store_attempts")
_INT_FIELDS: Final = frozenset({*COUNTER_FIELDS, "size", "priority_level"})
#: Credits (``core.credits``): the estimate at enqueue, and what was charged once the task existed.
_FLOAT_FIELDS: Final = frozenset({"estimate", "charged"})
_STR_FIELDS: Final = frozenset(
    {
        "prompt",
        "model",
        "idempotency_key",
        "batch_id",
        "owner",
        "notify_url",
        "account",
        "pin",
        "parent_output",
        "workflow_id",
        "node",
        "task_id",
        "reason",
        "error",
        "fail_code",
        "fail_msg",
        "result_url",
        "s3_uri",
        "sha256",
        "callback_token_hash",
        "credits",
        "lday",
    }
)
#: Fields only the store writes (through its Lua scripts), never through ``fields=``.
MANAGED_FIELDS: Final = frozenset({"id", "state", "created_at", "updated_at"})
TIMESTAMP_PREFIX: Final = "at_"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Job:
    """One job's record, as read from its hash."""

    id: str
    state: JobState
    #: The model's prompt ("" for a model that takes none); the rest of its fields are in ``input``.
    prompt: str
    #: The model's short name (its quota pool); records from before the catalog read as text-to-video.
    model: str = DEFAULT_MODEL
    #: The model's fields other than the prompt, as checked (``aspect_ratio``, ``duration``, ``image``...).
    input: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.INTERACTIVE
    idempotency_key: str | None = None
    batch_id: str | None = None
    #: The ingress principal that enqueued the job (None: the Python API, the CLI, a batch file).
    owner: str | None = None
    #: Where this job's end is POSTed (besides its principal's webhook endpoints).
    notify_url: str | None = None
    #: Broker priority of its messages when not its class's own (see ``JobRequest.priority_level``).
    priority_level: int | None = None
    #: Name of the upstream account the job was submitted on (never the key).
    account: str | None = None
    #: The account the job must run on (a derived job: its parent's task lives there).
    pin: str | None = None
    #: What a derived job's parent made (``video`` or ``image``; an upscale makes the same).
    parent_output: str | None = None
    #: The workflow the job is a node of, and its node's name there.
    workflow_id: str | None = None
    node: str | None = None
    #: The upstream taskId.
    task_id: str | None = None
    #: Times the job was claimed by a submit worker (entered ``submitting``).
    attempts: int = 0
    #: createTask calls that failed transiently (the retry budget).
    submit_attempts: int = 0
    #: recordInfo calls that failed transiently.
    poll_errors: int = 0
    #: Download/upload attempts that failed transiently.
    store_attempts: int = 0
    #: Stable snake_case failure code (``timed_out``, ``generation_failed``, ``outcome_unknown``, ...).
    reason: str | None = None
    #: The failure in words.
    error: str | None = None
    #: The upstream's failCode/failMsg for a failed generation.
    fail_code: str | None = None
    fail_msg: str | None = None
    #: The task's first result URL (``result_urls`` holds them all).
    result_url: str | None = None
    result_urls: list[str] = field(default_factory=list)
    #: The first output's object (``outputs`` holds them all: uri, key, content_type, size, sha256).
    s3_uri: str | None = None
    size: int | None = None
    sha256: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    #: Earlier attempts, oldest first (each kept when the job was resubmitted): their reason, error, upstream
    #: task and account, and the times they entered each state.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Credits the job is estimated to cost (its model's price rule), reserved in the ledger at enqueue.
    estimate: float | None = None
    #: Credits charged once its upstream task existed (the upstream's own figure when it gave one).
    charged: float | None = None
    #: Where its credits are in the ledger: None (reserved), ``charged``, ``settled`` (on the upstream's
    #: figure) or ``released`` (it ended without a task).
    credits: str | None = None
    #: The UTC day (``YYYY-MM-DD``) its credits count on: the day it was enqueued (or resubmitted).
    lday: str | None = None
    #: SHA-256 of the per-job callback token (the token itself is never stored).
    callback_token_hash: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    #: State value → when the job last entered it.
    timestamps: dict[str, float] = field(default_factory=dict)
    #: Fields this version does not know (written by newer code or through ``fields=``), as stored.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        return model_named(self.model)

    @property
    def pool(self) -> str:
        """The quota pool the job counts against (its model's)."""
        return self.spec.pool

    @property
    def resubmittable(self) -> bool:
        """A failed job a new attempt may fix: not a refusal that would come again (the request itself
        refused, a moderation refusal, a parent that failed)."""
        if self.state is not JobState.FAILED:
            return False
        if self.reason in DETERMINISTIC_REASONS:
            return False
        return not (self.reason == "generation_failed" and self.fail_code in DETERMINISTIC_FAIL_CODES)

    @property
    def aspect_ratio(self) -> str | None:
        value = self.input.get("aspect_ratio")
        return None if value is None else str(value)

    @property
    def mode(self) -> str | None:
        value = self.input.get("mode")
        return None if value is None else str(value)

    @property
    def values(self) -> dict[str, Any]:
        """Every field of the model the job was made with, the prompt included."""
        return {**({"prompt": self.prompt} if self.prompt else {}), **self.input}

    @property
    def request(self) -> JobRequest:
        return JobRequest(
            prompt=self.prompt or None,
            model=self.model,
            input=dict(self.input),
            metadata=self.metadata,
            priority=self.priority,
            idempotency_key=self.idempotency_key,
            batch_id=self.batch_id,
            owner=self.owner,
            notify_url=self.notify_url,
            priority_level=self.priority_level,
            pin=self.pin,
            parent_output=self.parent_output,
            workflow_id=self.workflow_id,
            node=self.node,
        )

    @classmethod
    def new(cls, request: JobRequest, *, job_id: str | None = None, created_at: float = 0.0) -> Job:
        """A queued job for ``request`` (not yet stored); ``waiting`` when it waits for its parent."""
        values = request.values
        prompt = values.pop("prompt", "")
        state = JobState.WAITING if request.waits else JobState.QUEUED
        return cls(
            id=job_id or new_job_id(),
            state=state,
            prompt=prompt,
            model=request.spec.short,
            input=values,
            metadata=dict(request.metadata),
            priority=request.priority,
            idempotency_key=request.idempotency_key,
            batch_id=request.batch_id,
            owner=request.owner,
            notify_url=request.notify_url,
            priority_level=request.priority_level,
            pin=request.pin,
            parent_output=request.parent_output,
            workflow_id=request.workflow_id,
            node=request.node,
            created_at=created_at,
            updated_at=created_at,
            timestamps={state.value: created_at},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view for the API, the CLI and the S3 sidecar (without ``callback_token_hash``)."""
        data: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "callback_token_hash":
                continue
            value = getattr(self, f.name)
            data[f.name] = value.value if isinstance(value, Enum) else value
        data["timestamps"] = dict(self.timestamps)
        data["extra"] = dict(self.extra)
        data["metadata"] = dict(self.metadata)
        data["input"] = dict(self.input)
        data["outputs"] = [dict(output) for output in self.outputs]
        data["result_urls"] = list(self.result_urls)
        return data

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the internal bookkeeping (``extra``): what the API, the event stream
        and webhooks show of a job."""
        data = self.to_dict()
        data.pop("extra", None)
        return data

    def to_hash(self) -> dict[str, str]:
        """The hash fields for this record; empty values are left out (see the module docstring)."""
        out: dict[str, str] = {
            "id": self.id,
            "state": self.state.value,
            "priority": self.priority.value,
            "created_at": repr(self.created_at),
        }
        if self.metadata:
            out["metadata"] = encode_metadata(self.metadata)
        for name in _JSON_FIELDS:
            value = getattr(self, name)
            if value:
                out[name] = encode_json(value)
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if value is not None and value != "":
                out[name] = value
        for name in _INT_FIELDS:
            number = getattr(self, name)
            if number is not None and (number != 0 or name == "size"):
                out[name] = str(number)
        for name in _FLOAT_FIELDS:
            amount = getattr(self, name)
            if amount is not None:
                out[name] = f"{amount:.2f}".rstrip("0").rstrip(".")
        if self.updated_at != self.created_at:
            out["updated_at"] = repr(self.updated_at)
        for state, at in self.timestamps.items():
            if not (state == JobState.QUEUED.value and at == self.created_at):
                out[TIMESTAMP_PREFIX + state] = repr(at)
        out.update(self.extra)
        return out

    @classmethod
    def from_hash(cls, data: Mapping[str, str] | Mapping[bytes, bytes]) -> Job:
        """The record from ``HGETALL`` (str or bytes, as the client decodes)."""
        raw = {_text(k): _text(v) for k, v in data.items()}
        created_at = float(raw.pop("created_at", "0"))
        job = cls(
            id=raw.pop("id"),
            state=JobState(raw.pop("state")),
            prompt=raw.pop("prompt", ""),
            priority=Priority(raw.pop("priority", Priority.INTERACTIVE.value)),
            metadata=json.loads(raw.pop("metadata", "{}")),
            created_at=created_at,
            updated_at=float(raw.pop("updated_at", created_at)),
        )
        for name in _JSON_FIELDS:
            if name in raw:
                setattr(job, name, json.loads(raw.pop(name)))
        # A record from before the catalog: a text-to-video job with its two fields at the top level,
        # and its one output in s3_uri/size/sha256.
        for legacy in ("aspect_ratio", "mode"):
            if legacy in raw:
                job.input.setdefault(legacy, raw.pop(legacy))
        job.timestamps[JobState.QUEUED.value] = created_at
        for name, value in raw.items():
            if name in _STR_FIELDS:
                setattr(job, name, value)
            elif name in _INT_FIELDS:
                setattr(job, name, int(value))
            elif name in _FLOAT_FIELDS:
                setattr(job, name, float(value))
            elif name.startswith(TIMESTAMP_PREFIX) and name[len(TIMESTAMP_PREFIX) :] in _STATE_VALUES:
                job.timestamps[name[len(TIMESTAMP_PREFIX) :]] = float(value)
            else:
                job.extra[name] = value
        if job.estimate is not None and job.lday is None:
            # Kept only when it is not the day of created_at (job_create.lua).
            job.lday = time.strftime("%Y-%m-%d", time.gmtime(created_at))
        if job.result_url and not job.result_urls:
            job.result_urls = [job.result_url]
        if job.s3_uri and not job.outputs:
            job.outputs = [{"index": 0, "uri": job.s3_uri, "size": job.size, "sha256": job.sha256}]
        return job

    @property
    def terminal(self) -> bool:
        return self.state.terminal


_STATE_VALUES: Final = frozenset(state.value for state in JobState)
#: Fields stored as JSON.
_JSON_FIELDS: Final = ("input", "outputs", "result_urls", "history")


def encode_json(value: Any) -> str:
    """How a JSON field (``input``, ``outputs``, ``result_urls``) is stored in the record."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
