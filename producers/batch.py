"""Batches: a JSONL file of prompts (local path or ``s3://``) read as a stream and enqueued in chunks.

Each line is one request: ``prompt``, optional ``aspect_ratio``, ``mode``, ``id`` and ``metadata``. Each
line is validated on its own: a bad line (invalid JSON or UTF-8, a failed validation, a repeated ``id``,
a line over ``batch_max_line_bytes``) is recorded with its line number and error, and never blocks the
good ones. Blank lines are skipped.

Identity, so that re-submitting spends nothing twice:

- the batch id comes from the name given (``--name``), else from the file's content (sha256 of a local
  file, the ETag and size of an S3 object): the same file is the same batch, wherever it is;
- each line's idempotency key is ``batch:<batch id>:id:<id>`` (or ``...:line:<n>`` for a line without
  ``id``): the same line of the same batch returns its existing job and publishes nothing.

A batch read whole before is not read again (``batch submit`` of the same file just reports it); a read
that was interrupted starts again and, thanks to the keys above, only adds what is missing.

Memory is bounded by the chunk (``CHUNK`` good lines), the set of ids seen, and the first
``BAD_LINES_KEPT`` bad lines kept for the report (every bad line is in the batch record and manifest).
Each chunk is one pipelined Lua round trip that writes the job records together with their ``submit``
messages (``JobStore.create_many``), plus one round trip for the batch's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Final

import redis

from config.celery import PRIORITY_BATCH, PRIORITY_STEPS, broker_prefix
from config.settings import Settings, get_settings
from workers.batches import BatchStatus, BatchStore, LineEntry
from workers.errors import ImagineQError, ValidationError
from workers.jobs import KEY_MAX_CHARS, Job, JobRequest, Priority
from workers.jobstore import JobStore
from workers.keys import Keys
from workers.locations import BATCH_SUFFIX, Files, Location
from workers.messages import BrokerMessage, submit_message
from workers.storage import build_s3_client

log = logging.getLogger("imagineq.batch")

#: Good lines written per chunk (one Redis round trip for their records and messages).
CHUNK: Final = 500
#: Bad lines kept in memory for the report (all of them go to the batch record and the manifest).
BAD_LINES_KEPT: Final = 1000
#: Fields a line may have.
LINE_FIELDS: Final = ("prompt", "aspect_ratio", "mode", "id", "metadata")
#: ``--priority`` → broker priority of the batch's submit messages (interactive work uses 0: always first).
PRIORITY_LEVELS: Final = {"low": PRIORITY_BATCH, "normal": PRIORITY_STEPS[-2]}
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


def batch_id_for(*, name: str | None, identity: str) -> str:
    """The batch id: the name given (hashed if it is not a plain token), else derived from the content."""
    if name is not None:
        return name if _NAME.match(name) else "n" + hashlib.sha256(name.encode()).hexdigest()[:24]
    return "b" + hashlib.sha256(identity.encode()).hexdigest()[:24]


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


class LineParser:
    """Turns lines into requests for one batch; remembers ids so a repeated one is a bad line."""

    def __init__(self, batch_id: str, *, max_bytes: int) -> None:
        self.batch_id = batch_id
        self.max_bytes = max_bytes
        self._seen: dict[str, int] = {}

    def parse(self, line: int, raw: bytes | None) -> ParsedLine | None:
        """The parsed line; None for a blank one."""
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
        unknown = sorted(str(name) for name in data if name not in LINE_FIELDS)
        if unknown:
            names, allowed = ", ".join(unknown), ", ".join(LINE_FIELDS)
            return ParsedLine(line, line_id, error=f"unknown field(s) {names}; allowed: {allowed}")
        if line_id is not None and line_id in self._seen:
            first = self._seen[line_id]
            return ParsedLine(line, line_id, error=f"duplicate id {line_id!r} (first on line {first})")
        fields: dict[str, Any] = {name: data[name] for name in ("prompt", "aspect_ratio", "mode", "metadata")
                                  if name in data}  # fmt: skip
        fields.update(
            priority=Priority.BATCH,
            batch_id=self.batch_id,
            idempotency_key=idempotency_key(self.batch_id, line, line_id),
        )
        try:
            request = JobRequest.from_mapping(fields)
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


@dataclass
class SubmitResult:
    """What one ``submit`` did."""

    status: BatchStatus
    #: False when the batch had been read whole before: nothing was read or enqueued this time.
    read: bool
    #: The first ``BAD_LINES_KEPT`` bad lines (``status.bad`` counts them all).
    bad_lines: list[BadLine] = field(default_factory=list)
    elapsed_s: float = 0.0


class BatchSubmitter:
    """Reads batch files into jobs on one deployment."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: redis.Redis | None = None,
        files: Files | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.redis = client or redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        self.keys = Keys(self.settings.redis_prefix)
        self.jobs = JobStore(self.redis, self.keys, terminal_ttl_s=self.settings.job_ttl_s)
        self.batches = BatchStore(self.redis, self.keys, terminal_ttl_s=self.settings.job_ttl_s)
        s3, http = self.settings.s3, self.settings.http
        self.files = files or Files(lambda: build_s3_client(s3, http))
        self._broker_prefix = broker_prefix(self.settings)

    def close(self) -> None:
        self.redis.close()

    def identify(self, source: Location, name: str | None = None) -> str:
        return batch_id_for(name=name, identity="" if name is not None else self.files.identity(source))

    def submit(
        self,
        source: str,
        *,
        name: str | None = None,
        priority: str = "low",
        results: str | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> SubmitResult:
        """Read ``source`` and enqueue its good lines. ``results``: where the manifest goes (default
        ``<name>.results.jsonl`` next to the input). ``on_chunk(lines_read)`` after every chunk."""
        if priority not in PRIORITY_LEVELS:
            allowed = ", ".join(PRIORITY_LEVELS)
            raise ValidationError("priority", f"must be one of {allowed} (got {priority!r})")
        started = time.monotonic()
        location = Location.parse(source)
        batch_id = self.identify(location, name)
        results_location = Location.parse(results) if results else location.results()
        status, token = self.batches.begin(
            batch_id, name=name or location.name, source=location.uri, results=results_location.uri,
            level=PRIORITY_LEVELS[priority],
        )  # fmt: skip
        if token is None:
            log.info("batch %s (%s) was read before: nothing to do", batch_id, location.uri)
            return SubmitResult(status, read=False, elapsed_s=time.monotonic() - started)
        bad: list[BadLine] = []
        try:
            with self.files.open(location) as stream:
                self._read(stream, batch_id, token, status.level, bad, on_chunk)
        except BaseException:
            self.batches.abandon_reading(batch_id, token)
            raise
        status = self.batches.finish_reading(batch_id, token)
        elapsed = time.monotonic() - started
        log.info(
            "batch %s (%s): %d lines, %d good, %d bad, %d new jobs in %.1fs",
            batch_id, location.uri, status.lines, status.good, status.bad, status.created, elapsed,
        )  # fmt: skip
        return SubmitResult(status, read=True, bad_lines=bad, elapsed_s=elapsed)

    def _read(
        self,
        stream: IO[bytes],
        batch_id: str,
        token: str,
        level: int,
        bad: list[BadLine],
        on_chunk: Callable[[int], None] | None,
    ) -> None:
        parser = LineParser(batch_id, max_bytes=self.settings.batch_max_line_bytes)
        chunk: list[ParsedLine] = []
        good = lines = 0

        def message(job: Job) -> BrokerMessage:
            return submit_message(job.id, priority=level, broker_prefix=self._broker_prefix)

        def flush() -> None:
            nonlocal good
            requests = [parsed.request for parsed in chunk if parsed.request is not None]
            created = iter(self.jobs.create_many(requests, chunk=CHUNK, message=message) if requests else [])
            entries: list[LineEntry] = []
            pending: list[str] = []
            new = 0
            for parsed in chunk:
                if parsed.request is None:
                    assert parsed.error is not None
                    entries.append(LineEntry(parsed.line, parsed.id, error=parsed.error))
                    if len(bad) < BAD_LINES_KEPT:
                        bad.append(BadLine(parsed.line, parsed.id, parsed.error))
                    continue
                job, is_new = next(created)
                entries.append(LineEntry(parsed.line, parsed.id, job_id=job.id))
                pending.append(job.id)
                new += is_new
            self.batches.add_lines(batch_id, token, entries, created=new, pending=pending)
            chunk.clear()
            good = 0
            if on_chunk is not None:
                on_chunk(lines)

        for number, raw in iter_lines(stream, self.settings.batch_max_line_bytes):
            parsed = parser.parse(number, raw)
            if parsed is None:
                continue
            lines += 1
            chunk.append(parsed)
            good += parsed.request is not None
            if good >= CHUNK or len(chunk) >= 4 * CHUNK:
                flush()
        if chunk:
            flush()


# -- the nightly inbox ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxFile:
    source: str
    moved_to: str
    batch_id: str
    lines: int
    bad: int
    created: int
    read: bool


def processed_location(settings: Settings) -> Location | None:
    if not settings.inbox:
        return None
    inbox = Location.parse(settings.inbox)
    return Location.parse(settings.processed) if settings.processed else inbox.child("processed")


def run_inbox(settings: Settings, submitter: BatchSubmitter | None = None) -> list[InboxFile]:
    """Submit every batch file in the inbox and move it to the processed location.

    Submitting first and moving second keeps this safe to repeat: a file whose move failed is found again
    next time, and its second submit is a no-op (same content, same batch). Its manifest goes next to
    where the file is moved.
    """
    processed = processed_location(settings)
    if processed is None or not settings.inbox:
        return []
    inbox = Location.parse(settings.inbox)
    own = submitter is None
    submitter = submitter or BatchSubmitter(settings)
    done: list[InboxFile] = []
    try:
        for source in submitter.files.list_batches(inbox):
            target = processed.child(source.name)
            if submitter.files.exists(target):
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                target = processed.child(f"{source.name.removesuffix(BATCH_SUFFIX)}-{stamp}{BATCH_SUFFIX}")
            try:
                result = submitter.submit(source.uri, results=target.results().uri)
                submitter.files.move(source, target)
            except ImagineQError as error:
                log.error("inbox: %s not submitted: %s", source.uri, error)
                continue
            status = result.status
            done.append(InboxFile(source.uri, target.uri, status.id, status.lines, status.bad,
                                  status.created, result.read))  # fmt: skip
            log.info("inbox: %s → batch %s (%d lines, %d bad, %d new jobs), moved to %s",
                     source.uri, status.id, status.lines, status.bad, status.created, target.uri)  # fmt: skip
    finally:
        if own:
            submitter.close()
    return done
