"""The request that makes a job, and its validation: every field checked once, each error naming the
field and the limit, before anything is written."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final
from urllib.parse import urlsplit

from config.celery import PRIORITY_STEPS
from core.errors import ValidationError
from core.job_state import Priority

PROMPT_MAX_CHARS: Final = 5000
ASPECT_RATIOS: Final = ("2:3", "3:2", "1:1")
MODES: Final = ("fun", "normal", "spicy")
METADATA_MAX_BYTES: Final = 16 * 1024
#: Nesting of objects and lists in metadata: deeper documents cannot be shown by every reader (the
#: JSON encoders of the API, the events and the dashboard stop far below Python's own limit).
METADATA_MAX_DEPTH: Final = 16
KEY_MAX_CHARS: Final = 200


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


#: Request fields no caller may give: the web sets the owner from who is calling, the batch reader the level.
SERVER_SET_FIELDS: Final = frozenset({"owner", "priority_level"})
