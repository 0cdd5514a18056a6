"""The fields a model takes, declared once: each checks a producer's value (one error naming the field and
what it allows), and describes itself for the HTTP API's schema and the CLI's help.

A field's value is what the producer gave, normalised (``duration`` 10 becomes ``"10"``, as the upstream
takes it); what is sent upstream is built from these values by the model (:mod:`core.catalog.spec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from core.errors import ValidationError

#: A field without a default must be given.
REQUIRED: Final = object()
#: "Holds a character that is not whitespace", with Python's ``str.isspace`` set spelled out, so that the
#: schema (ECMA regex) and the check (``str.strip``) agree on every string.
NOT_BLANK: Final = r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def encodable(name: str, value: str) -> None:
    """A lone surrogate (JSON ``"\\ud800"``, a CLI argument that was not UTF-8) has no UTF-8 form: Redis,
    the upstream and S3 would all refuse it later, so refuse it here, by name."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValidationError(
            name, f"must be valid UTF-8 text (unpaired surrogate at character {error.start})"
        ) from None


@dataclass(frozen=True)
class Field:
    """One field of a model's input."""

    name: str
    description: str
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value: Any) -> Any:
        """The value, normalised; ValidationError naming the field otherwise."""
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        """The field's JSON schema (for the OpenAPI document)."""
        raise NotImplementedError

    def _with_default(self, schema: dict[str, Any]) -> dict[str, Any]:
        schema["description"] = self.description
        if not self.required and self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True)
class Text(Field):
    """A string: ``max_length`` characters at most; ``blank``: may it be empty or only spaces."""

    max_length: int = 5000
    blank: bool = False

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(self.name, f"must be a string (got {type_name(value)})")
        if not self.blank and not value.strip():
            raise ValidationError(self.name, "must not be empty")
        if len(value) > self.max_length:
            raise ValidationError(self.name, f"must be at most {self.max_length} characters (got {len(value)})")
        encodable(self.name, value)
        return value

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if not self.blank:
            schema.update(minLength=1, pattern=NOT_BLANK)
        return self._with_default(schema)


@dataclass(frozen=True)
class Choice(Field):
    """One of ``choices`` (strings). ``numbers``: an integer given for a numeric choice is taken as its
    text (``10`` for ``"10"``), as the upstream's own clients send either."""

    choices: tuple[str, ...] = ()
    numbers: bool = False

    def check(self, value: Any) -> str:
        if self.numbers and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValidationError(self.name, f"must be a string (got {type_name(value)})")
        if value not in self.choices:
            raise ValidationError(self.name, f"must be one of {', '.join(self.choices)} (got {value!r})")
        return value

    def schema(self) -> dict[str, Any]:
        return self._with_default({"type": "string", "enum": list(self.choices)})


@dataclass(frozen=True)
class Integer(Field):
    minimum: int = 0
    maximum: int | None = None

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(self.name, f"must be an integer (got {type_name(value)})")
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            upper = f" to {self.maximum}" if self.maximum is not None else " or more"
            raise ValidationError(self.name, f"must be {self.minimum}{upper} (got {value})")
        return value

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.minimum}
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return self._with_default(schema)


@dataclass(frozen=True)
class Flag(Field):
    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError(self.name, f"must be true or false (got {type_name(value)})")
        return value

    def schema(self) -> dict[str, Any]:
        return self._with_default({"type": "boolean"})


@dataclass(frozen=True)
class JobId(Field):
    """An ImagineQ job id (the parent of a derived job): never an upstream task id."""

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(self.name, f"must be a job id (got {type_name(value)})")
        if not (1 <= len(value) <= 64 and all(c in "0123456789abcdef" for c in value)):
            raise ValidationError(self.name, f"must be an ImagineQ job id, 32 hex characters (got {value[:70]!r})")
        return value

    def schema(self) -> dict[str, Any]:
        return self._with_default({"type": "string", "pattern": "^[0-9a-f]{1,64}$"})


#: An image as a job keeps it: ``{"url": "https://..."}`` (fetched under the download guard when the job is
#: submitted) or ``{"s3": "s3://bucket/key"}`` (an object of ours). Producers also take a file (a part of a
#: multipart request: ``{"upload": "<part name>"}``; ``{"base64": "..."}``; bytes or a path in the Python
#: API and the CLI) and an image output of an earlier job (``{"job": "<id>", "output": n}``): the producer
#: stores the first in S3 and looks the second up, so they reach the job as ``{"s3": ...}``.
IMAGE_KINDS: Final = ("url", "s3")
PRODUCER_IMAGE_KINDS: Final = ("upload", "base64", "job")
IMAGE_URL_MAX_CHARS: Final = 2048


def check_image(name: str, value: Any) -> dict[str, Any]:
    """One image reference as a job keeps it (see above)."""
    if isinstance(value, str):  # a bare URL or s3:// URI is the common case
        value = {"s3": value} if value.startswith("s3://") else {"url": value}
    kinds = (*IMAGE_KINDS, *PRODUCER_IMAGE_KINDS)
    if not isinstance(value, dict) or len(value.keys() & set(kinds)) != 1:
        raise ValidationError(
            name, f"must be an image: an object with one of {', '.join(kinds)} (got {type_name(value)})"
        )
    kind = next(iter(value.keys() & set(kinds)))
    if kind in PRODUCER_IMAGE_KINDS:
        raise ValidationError(name, f"a {kind} image must be given to a producer (it stores it and passes it on)")
    extra = sorted(set(value) - {kind})
    if extra:
        raise ValidationError(name, f"unknown field(s) {', '.join(extra)} for a {kind} image")
    ref = value[kind]
    if not isinstance(ref, str) or not ref or len(ref) > IMAGE_URL_MAX_CHARS:
        raise ValidationError(name, f"{kind} must be a string of 1 to {IMAGE_URL_MAX_CHARS} characters")
    encodable(name, ref)
    if kind == "url" and not ref.startswith(("http://", "https://")):
        raise ValidationError(name, f"url must be an http(s) URL (got {ref[:60]!r})")
    if kind == "s3" and (not ref.startswith("s3://") or "/" not in ref.removeprefix("s3://")):
        raise ValidationError(name, f"s3 must be an s3://bucket/key URI (got {ref[:60]!r})")
    return {kind: ref}


IMAGE_SCHEMA: Final = {
    "description": "An image (JPEG, PNG or WEBP, at most 10 MB): {url}, {s3} (an object of this deployment's "
    "bucket), {upload} (a file part of a multipart request, by name), {base64} or {job, output} (an image "
    "an earlier job made)",
    "oneOf": [
        {"type": "string", "description": "an http(s) URL or an s3:// URI"},
        *(
            {
                "type": "object",
                "properties": {kind: {"type": "string", "minLength": 1}},
                "required": [kind],
                "additionalProperties": False,
            }
            for kind in ("url", "s3", "upload", "base64")
        ),
        {
            "type": "object",
            "properties": {"job": {"type": "string"}, "output": {"type": "integer", "minimum": 0}},
            "required": ["job"],
            "additionalProperties": False,
        },
    ],
}


@dataclass(frozen=True)
class Image(Field):
    """One image (see :func:`check_image`)."""

    def check(self, value: Any) -> dict[str, Any]:
        return check_image(self.name, value)

    def schema(self) -> dict[str, Any]:
        return self._with_default(dict(IMAGE_SCHEMA))


@dataclass(frozen=True)
class Images(Field):
    """One to ``max_items`` images."""

    max_items: int = 1

    def check(self, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            value = [value]
        if not 1 <= len(value) <= self.max_items:
            raise ValidationError(self.name, f"must be 1 to {self.max_items} images (got {len(value)})")
        return [check_image(f"{self.name}[{index}]", item) for index, item in enumerate(value)]

    def schema(self) -> dict[str, Any]:
        return self._with_default(
            {"type": "array", "items": dict(IMAGE_SCHEMA), "minItems": 1, "maxItems": self.max_items}
        )


def field_names(fields: Sequence[Field]) -> list[str]:
    return [f.name for f in fields]
