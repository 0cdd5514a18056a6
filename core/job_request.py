"""The request that makes a job, and its validation: every field checked once, each error naming the
field and the limit, before anything is written."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from config.celery import PRIORITY_STEPS
from core.catalog import DEFAULT_MODEL, ModelSpec, model_named
from core.catalog.fields import encodable, type_name
from core.catalog.models import ASPECT_RATIOS as ASPECT_RATIOS
from core.catalog.models import MODES as MODES
from core.catalog.models import PROMPT_MAX_CHARS as PROMPT_MAX_CHARS
from core.errors import ValidationError
from core.job_state import Priority

METADATA_MAX_BYTES: Final = 16 * 1024
#: Nesting of objects and lists in metadata: deeper documents cannot be shown by every reader (the
#: JSON encoders of the API, the events and the dashboard stop far below Python's own limit).
METADATA_MAX_DEPTH: Final = 16
KEY_MAX_CHARS: Final = 200


def _optional_key(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string or null (got {type_name(value)})")
    if not 1 <= len(value) <= KEY_MAX_CHARS:
        raise ValidationError(name, f"must be 1 to {KEY_MAX_CHARS} characters (got {len(value)})")
    encodable(name, value)


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


#: Request fields that are about the job, not about what the model makes (everything else given in a
#: mapping is one of the model's fields, checked by its declaration).
JOB_FIELDS: Final = ("model", "metadata", "priority", "idempotency_key", "batch_id", "notify_url")


@dataclass(frozen=True)
class JobRequest:
    """What a producer asks for; :meth:`validate` enforces the upstream's limits before anything is sent.

    ``prompt``, ``aspect_ratio`` and ``mode`` may be given as themselves (the text-to-video request every
    release took); every other field of the model goes in ``input``. The model's declaration
    (:mod:`core.catalog`) checks them all together; :attr:`values` is the result."""

    prompt: str | None = None
    aspect_ratio: str | None = None
    mode: str | None = None
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
    #: The model (short name ``text-to-video`` or the upstream's ``grok-imagine/text-to-video``).
    model: str = DEFAULT_MODEL
    #: The model's other fields (``duration``, ``resolution``, ``image``, ``parent``, ...).
    input: Mapping[str, Any] = field(default_factory=dict)
    #: The account a derived job must run on (its parent's), and what its parent made (``video``/``image``):
    #: set by the producer once it found the parent, never by a caller.
    pin: str | None = None
    parent_output: str | None = None
    #: The parent is not stored yet: the job waits for it (``waiting``) and is released when it is.
    waits: bool = False
    #: The workflow the job is a node of, and its node's name there (set by the workflow's producer).
    workflow_id: str | None = None
    node: str | None = None
    #: True once :meth:`validate` passed: a request is checked once, however many hands it goes through.
    _valid: bool = field(default=False, init=False, repr=False, compare=False)
    _values: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def validate(self) -> None:
        """Raise :class:`~core.errors.ValidationError` naming the first bad field (once per request)."""
        if self._valid:
            return
        object.__setattr__(self, "_values", self._check())
        object.__setattr__(self, "_valid", True)

    @property
    def spec(self) -> ModelSpec:
        return model_named(self.model)

    @property
    def needs_parent(self) -> bool:
        """A derived job whose parent no producer has looked up yet (``pin``, ``parent_output`` unset)."""
        return self.spec.parent is not None and "parent" in self.values and self.parent_output is None

    @property
    def values(self) -> dict[str, Any]:
        """The model's fields, checked and completed with their defaults (validates first)."""
        self.validate()
        return dict(self._values)

    def _given(self, spec: ModelSpec) -> dict[str, Any]:
        if not isinstance(self.input, Mapping):
            raise ValidationError("input", f"must be an object of {spec.short}'s fields (got {type_name(self.input)})")
        given = {str(name): value for name, value in self.input.items()}
        takes_prompt = any(f.name == "prompt" for f in spec.fields)
        for name, value in (("prompt", self.prompt), ("aspect_ratio", self.aspect_ratio), ("mode", self.mode)):
            if value is None or (name == "prompt" and value == "" and not takes_prompt):
                continue
            if name in given:
                raise ValidationError(name, "is given twice (as itself and in input)")
            given[name] = value
        return given

    def _check(self) -> dict[str, Any]:
        spec = self.spec
        values = spec.validate(self._given(spec))
        if not isinstance(self.metadata, dict):
            raise ValidationError("metadata", f"must be an object (got {type_name(self.metadata)})")
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
        return values

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **server_set: Any) -> JobRequest:
        """A validated request from decoded JSON (HTTP body, JSONL line), with the fields only the
        server sets (``owner``, ``priority_level``) given apart.

        The job's own fields (:data:`JOB_FIELDS`) are read here; every other field is one of the model's,
        and one the model does not take is refused by name. ``null`` for an optional field means its
        default.
        """
        if not set(server_set) <= SERVER_SET_FIELDS:
            raise TypeError(f"only {sorted(SERVER_SET_FIELDS)} are set by the server, not {sorted(server_set)}")
        if not isinstance(data, Mapping):
            raise ValidationError("request", f"must be an object (got {type_name(data)})")
        spec = model_named(data.get("model", DEFAULT_MODEL) or DEFAULT_MODEL)
        job_values = {name: data[name] for name in JOB_FIELDS if data.get(name) is not None}
        model_values = {name: value for name, value in data.items() if name not in JOB_FIELDS}
        forbidden = sorted(str(name) for name in model_values if name in SERVER_SET_FIELDS)
        unknown = [str(name) for name in model_values if name not in {f.name for f in spec.fields}] + forbidden
        if unknown:
            allowed = [*JOB_FIELDS, *(f.name for f in spec.fields)]
            raise ValidationError(
                ", ".join(sorted(set(unknown))),
                f"unknown field{'s' if len(set(unknown)) > 1 else ''} for {spec.short}; allowed: {', '.join(allowed)}",
            )
        priority = job_values.get("priority")
        if priority is not None and not isinstance(priority, Priority):
            try:
                job_values["priority"] = Priority(priority)
            except (ValueError, TypeError):
                raise ValidationError(
                    "priority", f"must be one of {', '.join(p.value for p in Priority)} (got {priority!r})"
                ) from None
        # The three fields every release took stay fields of the request; the model checks them all.
        common = {name: model_values.pop(name) for name in ("prompt", "aspect_ratio", "mode") if name in model_values}
        request = cls(**common, **job_values, input=model_values, **server_set)
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
        raise ValidationError(name, f"must be a string (got {type_name(url)})")
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


#: Request fields no caller may give: the web sets the owner from who is calling, the batch reader the level.
SERVER_SET_FIELDS: Final = frozenset(
    {"owner", "priority_level", "pin", "parent_output", "waits", "workflow_id", "node"}
)
