"""A job: its states, the transitions allowed between them, the request that makes one, and its record.

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
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

from config.celery import PRIORITY_STEPS
from core.errors import ValidationError


class JobState(StrEnum):
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


PROMPT_MAX_CHARS: Final = 5000
ASPECT_RATIOS: Final = ("2:3", "3:2", "1:1")
MODES: Final = ("fun", "normal", "spicy")
METADATA_MAX_BYTES: Final = 16 * 1024
#: Nesting of objects and lists in metadata: deeper documents cannot be shown by every reader (the
#: JSON encoders of the API, the events and the dashboard stop far below Python's own limit).
METADATA_MAX_DEPTH: Final = 16
KEY_MAX_CHARS: Final = 200


def new_job_id() -> str:
    return uuid.uuid4().hex


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string (got {_type_name(value)})")
    if value not in allowed:
        raise ValidationError(name, f"must be one of {', '.join(allowed)} (got {value!r})")


def _optional_key(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string or null (got {_type_name(value)})")
    if not 1 <= len(value) <= KEY_MAX_CHARS:
        raise ValidationError(name, f"must be 1 to {KEY_MAX_CHARS} characters (got {len(value)})")
    _encodable(name, value)


def _encodable(name: str, value: str) -> None:
    """A lone surrogate (JSON ``"\\ud800"``, a CLI argument that was not UTF-8) has no UTF-8
    form: Redis, the upstream and S3 would all refuse it later, so refuse it here, by name."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValidationError(
            name, f"must be valid UTF-8 text (unpaired surrogate at character {error.start})"
        ) from None


def nesting_depth(value: object) -> int:
    """How deeply objects and lists nest in ``value`` (a scalar is 0, ``{}`` 1, ``{"a": []}`` 2), up to
    ``METADATA_MAX_DEPTH + 1`` (anything deeper reads as that); walked without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth <= METADATA_MAX_DEPTH:  # past the limit the answer is known to be "too deep"
            stack.extend((child, depth) for child in children)
    return deepest


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True)


@dataclass(frozen=True)
class JobRequest:
    """What a producer asks for; :meth:`validate` enforces the upstream's limits before anything is sent."""

    prompt: str
    aspect_ratio: str = "2:3"
    mode: str = "normal"
    #: Free-form, JSON-serialisable, kept on the record and in the S3 sidecar (≤ 16 KB as JSON).
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.INTERACTIVE
    #: The same key returns the same job (and never spends credits twice).
    idempotency_key: str | None = None
    batch_id: str | None = None
    #: The ingress principal that enqueued the job (set by the web, never by the caller); its
    #: idempotency keys are its own.
    owner: str | None = None
    #: Where to POST this job's end (signed webhooks: ``workers.notify``), besides its principal's endpoints.
    notify_url: str | None = None
    #: The broker priority of its messages when not its class's own (a batch submitted at ``normal``
    #: priority); set by the batch reader, never by a caller. ``core.messages.broker_priority`` reads it.
    priority_level: int | None = None
    #: True once :meth:`validate` passed: a request is checked once, however many hands it goes through.
    _valid: bool = field(default=False, init=False, repr=False, compare=False)

    def validate(self) -> None:
        """Raise :class:`~core.errors.ValidationError` naming the first bad field (once per request)."""
        if self._valid:
            return
        self._check()
        object.__setattr__(self, "_valid", True)

    def _check(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValidationError("prompt", f"must be a string (got {_type_name(self.prompt)})")
        if not self.prompt.strip():
            raise ValidationError("prompt", "must not be empty")
        if len(self.prompt) > PROMPT_MAX_CHARS:
            raise ValidationError("prompt", f"must be at most {PROMPT_MAX_CHARS} characters (got {len(self.prompt)})")
        _encodable("prompt", self.prompt)
        _one_of("aspect_ratio", self.aspect_ratio, ASPECT_RATIOS)
        _one_of("mode", self.mode, MODES)
        if not isinstance(self.metadata, dict):
            raise ValidationError("metadata", f"must be an object (got {_type_name(self.metadata)})")
        if not all(isinstance(key, str) for key in self.metadata):
            raise ValidationError("metadata", "keys must be strings")
        if nesting_depth(self.metadata) > METADATA_MAX_DEPTH:
            raise ValidationError("metadata", f"must be nested at most {METADATA_MAX_DEPTH} levels deep")
        try:
            size = len(encode_metadata(self.metadata).encode())
        except (TypeError, ValueError) as error:
            raise ValidationError("metadata", f"must be JSON-serialisable ({error})") from error
        if size > METADATA_MAX_BYTES:
            raise ValidationError("metadata", f"must be at most {METADATA_MAX_BYTES} bytes as JSON (got {size})")
        if not isinstance(self.priority, Priority):
            raise ValidationError(
                "priority", f"must be one of {', '.join(p.value for p in Priority)} (got {self.priority!r})"
            )
        _optional_key("idempotency_key", self.idempotency_key)
        _optional_key("batch_id", self.batch_id)
        _optional_key("owner", self.owner)
        if self.notify_url is not None:
            check_notify_url("notify_url", self.notify_url)
        if self.priority_level is not None and self.priority_level not in PRIORITY_STEPS:
            raise ValidationError("priority_level", f"must be one of {PRIORITY_STEPS} (got {self.priority_level!r})")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **server_set: Any) -> JobRequest:
        """A validated request from decoded JSON (HTTP body, JSONL line), with the fields only the
        server sets (``owner``, ``priority_level``) given apart.

        Unknown fields are refused by name; ``null`` for an optional field means its default.
        """
        if not set(server_set) <= SERVER_SET_FIELDS:
            raise TypeError(f"only {sorted(SERVER_SET_FIELDS)} are set by the server, not {sorted(server_set)}")
        if not isinstance(data, Mapping):
            raise ValidationError("request", f"must be an object (got {_type_name(data)})")
        known = {f.name for f in fields(cls) if f.init} - SERVER_SET_FIELDS
        unknown = sorted(str(name) for name in data if name not in known)
        if unknown:
            raise ValidationError(
                ", ".join(unknown),
                f"unknown field{'s' if len(unknown) > 1 else ''}; allowed: {', '.join(sorted(known))}",
            )
        if "prompt" not in data:
            raise ValidationError("prompt", "is required")
        values = {name: value for name, value in data.items() if value is not None or name == "prompt"}
        priority = values.get("priority")
        if priority is not None and not isinstance(priority, Priority):
            try:
                values["priority"] = Priority(priority)
            except ValueError:
                raise ValidationError(
                    "priority", f"must be one of {', '.join(p.value for p in Priority)} (got {priority!r})"
                ) from None
        request = cls(**values, **server_set)
        request.validate()
        return request


NOTIFY_URL_MAX_CHARS: Final = 2048
#: An http(s) URL with a host name or IPv4 address, an optional port (1-65535), no user info, no spaces.
NOTIFY_URL_PATTERN: Final = (
    r"^https?://[A-Za-z0-9.-]+"
    r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
    r"([/?#][!-~]*)?$"
)
_NOTIFY_URL = re.compile(NOTIFY_URL_PATTERN)


def check_notify_url(name: str, url: object) -> None:
    """A webhook URL: http(s), a host, no user info (credentials belong in the signature, not the URL)."""
    if not isinstance(url, str):
        raise ValidationError(name, f"must be a string (got {_type_name(url)})")
    if len(url) > NOTIFY_URL_MAX_CHARS:
        raise ValidationError(name, f"must be at most {NOTIFY_URL_MAX_CHARS} characters (got {len(url)})")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(name, f"must be an http:// or https:// URL with a host (got {url[:80]!r})")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(name, "must not carry a user name or password")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValidationError(name, "has an invalid port") from None
    if not _NOTIFY_URL.match(url):
        raise ValidationError(name, "must be http(s)://host[:port][/path], a host name or IPv4 address, no spaces")


#: Counters kept on the record (``JobStore.incr``); absent means 0.
COUNTER_FIELDS: Final = ("attempts", "submit_attempts", "poll_errors", "store_attempts")
_INT_FIELDS: Final = frozenset({*COUNTER_FIELDS, "size", "priority_level"})
_STR_FIELDS: Final = frozenset(
    {
        "prompt",
        "aspect_ratio",
        "mode",
        "idempotency_key",
        "batch_id",
        "owner",
        "notify_url",
        "account",
        "task_id",
        "reason",
        "error",
        "fail_code",
        "fail_msg",
        "result_url",
        "s3_uri",
        "sha256",
        "callback_token_hash",
    }
)
#: Request fields no caller may give: the web sets the owner from who is calling, the batch reader the level.
SERVER_SET_FIELDS: Final = frozenset({"owner", "priority_level"})
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
    prompt: str
    aspect_ratio: str = "2:3"
    mode: str = "normal"
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
    result_url: str | None = None
    s3_uri: str | None = None
    size: int | None = None
    sha256: str | None = None
    #: SHA-256 of the per-job callback token (the token itself is never stored).
    callback_token_hash: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    #: State value → when the job last entered it.
    timestamps: dict[str, float] = field(default_factory=dict)
    #: Fields this version does not know (written by newer code or through ``fields=``), as stored.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def request(self) -> JobRequest:
        return JobRequest(
            prompt=self.prompt,
            aspect_ratio=self.aspect_ratio,
            mode=self.mode,
            metadata=self.metadata,
            priority=self.priority,
            idempotency_key=self.idempotency_key,
            batch_id=self.batch_id,
            owner=self.owner,
            notify_url=self.notify_url,
            priority_level=self.priority_level,
        )

    @classmethod
    def new(cls, request: JobRequest, *, job_id: str | None = None, created_at: float = 0.0) -> Job:
        """A queued job for ``request`` (not yet stored)."""
        return cls(
            id=job_id or new_job_id(),
            state=JobState.QUEUED,
            prompt=request.prompt,
            aspect_ratio=request.aspect_ratio,
            mode=request.mode,
            metadata=dict(request.metadata),
            priority=request.priority,
            idempotency_key=request.idempotency_key,
            batch_id=request.batch_id,
            owner=request.owner,
            notify_url=request.notify_url,
            priority_level=request.priority_level,
            created_at=created_at,
            updated_at=created_at,
            timestamps={JobState.QUEUED.value: created_at},
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
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if value is not None and value != "":
                out[name] = value
        for name in _INT_FIELDS:
            number = getattr(self, name)
            if number is not None and (number != 0 or name == "size"):
                out[name] = str(number)
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
        job.timestamps[JobState.QUEUED.value] = created_at
        for name, value in raw.items():
            if name in _STR_FIELDS:
                setattr(job, name, value)
            elif name in _INT_FIELDS:
                setattr(job, name, int(value))
            elif name.startswith(TIMESTAMP_PREFIX) and name[len(TIMESTAMP_PREFIX) :] in _STATE_VALUES:
                job.timestamps[name[len(TIMESTAMP_PREFIX) :]] = float(value)
            else:
                job.extra[name] = value
        return job

    @property
    def terminal(self) -> bool:
        return self.state.terminal


_STATE_VALUES: Final = frozenset(state.value for state in JobState)
