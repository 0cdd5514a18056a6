"""One batch line at a time: JSONL lines read in bounded pieces and parsed into requests.

Each line is one request: an optional ``model`` (default text-to-video) and that model's fields
(``prompt``, ``aspect_ratio``, ``duration``, ``image``, ...), an optional ``id``, ``metadata`` and
``notify_url`` (where the job's end is POSTed, signed: ``workers.notify``). A derived line's ``parent`` may
name an earlier line's ``id``: it then takes that line's job, and waits for it to be stored. Each
line is validated on its own: a bad line (invalid JSON or UTF-8, a failed validation, a repeated ``id``,
a line over ``batch_max_line_bytes``) is recorded with its line number and error, and never blocks the
good ones. Blank lines are skipped.

Identity, so that re-submitting spends nothing twice:

- the batch id comes from the name given (``--name``), else from the file's content (sha256 of a local
  file, the ETag and size of an S3 object): the same file is the same batch, wherever it is;
- each line's idempotency key is ``batch:<batch id>:id:<id>`` (or ``...:line:<n>`` for a line without
  ``id``): the same line of the same batch returns its existing job and publishes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Final

from core.errors import ValidationError
from core.jobs import KEY_MAX_CHARS, JobRequest, Priority

#: Fields of a request a line may not set: the batch sets them.
BATCH_SET_FIELDS: Final = ("priority", "batch_id", "idempotency_key")
#: Looks after a line's images before it is checked and its parent after (``workers.intake.Intake``).
LineIntake = Callable[[Mapping[str, Any]], dict[str, Any]]
LineParent = Callable[[JobRequest], JobRequest]
_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Ids longer than this are hashed inside idempotency keys (which are at most KEY_MAX_CHARS long).
_ID_IN_KEY_MAX: Final = 100


@dataclass(frozen=True)
class BadLine:
    line: int
    id: str | None
    error: str


@dataclass(frozen=True)
class ParsedLine:
    """A line read: a request to enqueue, or the error that makes it a bad line."""

    line: int
    id: str | None
    request: JobRequest | None = None
    error: str | None = None
    #: Its parent is a line read but not yet written: write the lines read so far, then parse it again.
    needs_flush: bool = False


def batch_id_for(*, name: str | None, identity: str) -> str:
    """The batch id: the name given (hashed if it is not a plain token), else derived from the content."""
    if name is not None:
        return name if _NAME.match(name) else "n" + hashlib.sha256(name.encode()).hexdigest()[:24]
    return "b" + hashlib.sha256(identity.encode()).hexdigest()[:24]


#: Every batch line's idempotency key starts so; producers may not use keys of that form.
BATCH_KEY_PREFIX: Final = "batch:"


def idempotency_key(batch_id: str, line: int, line_id: str | None) -> str:
    if line_id is None:
        return f"batch:{batch_id}:line:{line}"
    if len(line_id) <= _ID_IN_KEY_MAX:
        return f"batch:{batch_id}:id:{line_id}"
    return f"batch:{batch_id}:idh:{hashlib.sha256(line_id.encode()).hexdigest()}"


def iter_lines(stream: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, content)`` for every line (1-based); content is None for a line longer than
    ``max_bytes``, which is skipped in bounded reads, never held whole in memory."""
    number = 0
    while raw := stream.readline(max_bytes + 1):
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while (rest := stream.readline(1024 * 1024)) and not rest.endswith(b"\n"):
                pass
            yield number, None
            continue
        yield number, raw.rstrip(b"\r\n")


def batch_header(raw: bytes | None) -> dict[str, float] | None:
    """The batch's own settings when its first line is ``{"batch": {"budget": N}}`` (N credits: the most the
    batch's jobs may cost), else None (the line is an ordinary one). A header with a bad value is refused
    whole, naming the field."""
    if raw is None or not raw.lstrip().startswith(b'{"batch"'):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != {"batch"}:
        return None
    header = data["batch"]
    if not isinstance(header, dict) or not set(header) <= {"budget"}:
        raise ValidationError("batch", 'the header line takes {"batch": {"budget": N}} only')
    budget = header.get("budget")
    if budget is None:
        return {}
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget < 1e12:
        raise ValidationError("batch.budget", f"must be a number of credits above 0 (got {budget!r})")
    return {"budget": float(budget)}


class LineParser:
    """Turns lines into requests for one batch; remembers ids so a repeated one is a bad line."""

    def __init__(
        self,
        batch_id: str,
        *,
        max_bytes: int,
        priority_level: int | None = None,
        intake: LineIntake | None = None,
        parent: LineParent | None = None,
    ) -> None:
        """``priority_level``: the broker priority of the batch's messages (its jobs carry it)."""
        self.batch_id = batch_id
        self.max_bytes = max_bytes
        self.priority_level = priority_level
        self.intake = intake
        self.parent = parent
        self._seen: dict[str, int] = {}
        #: The job of each line id written so far (a later line's ``parent`` may name the line).
        self.jobs_by_id: dict[str, str] = {}

    def parse(self, line: int, raw: bytes | None) -> ParsedLine | None:
        """The parsed line; None for a blank one. Whatever a line holds, it never raises: a line that
        breaks the parser in a way not foreseen below is a bad line too, so one line never stops a batch."""
        try:
            return self._parse(line, raw)
        except RecursionError:
            return ParsedLine(line, None, error="nested too deeply")
        except Exception as error:  # a boundary: the rest of the batch must go on
            return ParsedLine(line, None, error=f"unreadable line ({type(error).__name__})")

    def _parse(self, line: int, raw: bytes | None) -> ParsedLine | None:
        if raw is None:
            return ParsedLine(line, None, error=f"line is longer than {self.max_bytes} bytes")
        if not raw.strip():
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return ParsedLine(line, None, error="not valid UTF-8")
        except ValueError as error:
            return ParsedLine(line, None, error=f"invalid JSON: {error}")
        if not isinstance(data, dict):
            return ParsedLine(line, None, error=f"must be a JSON object (got {type(data).__name__})")
        line_id, id_error = _line_id(data.get("id"))
        if id_error is not None:
            return ParsedLine(line, None, error=id_error)
        unknown = sorted(str(name) for name in data if name in BATCH_SET_FIELDS)
        if unknown:
            names = ", ".join(unknown)
            return ParsedLine(line, line_id, error=f"unknown field(s) {names}; the batch sets them")
        if line_id is not None and line_id in self._seen:
            first = self._seen[line_id]
            return ParsedLine(line, line_id, error=f"duplicate id {line_id!r} (first on line {first})")
        fields: dict[str, Any] = {name: value for name, value in data.items() if name != "id"}
        parent = fields.get("parent")
        if isinstance(parent, str) and parent in self._seen:
            if parent not in self.jobs_by_id:
                return ParsedLine(line, line_id, needs_flush=True)
            fields["parent"] = self.jobs_by_id[parent]
        fields.update(
            priority=Priority.BATCH,
            batch_id=self.batch_id,
            idempotency_key=idempotency_key(self.batch_id, line, line_id),
        )
        try:
            fields = self.intake(fields) if self.intake is not None else fields
            request = JobRequest.from_mapping(fields, priority_level=self.priority_level)
            request = self.parent(request) if self.parent is not None else request
        except ValidationError as error:
            return ParsedLine(line, line_id, error=str(error))
        if line_id is not None:
            self._seen[line_id] = line
        return ParsedLine(line, line_id, request=request)


def _line_id(value: object) -> tuple[str | None, str | None]:
    """The line's ``id`` as a string (integers allowed), or an error."""
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, f"id: must be a string or an integer (got {type(value).__name__})"
    text = str(value)
    if not 1 <= len(text) <= KEY_MAX_CHARS:
        return None, f"id: must be 1 to {KEY_MAX_CHARS} characters (got {len(text)})"
    return text, None
