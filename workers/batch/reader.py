"""Reading a batch file (local path or ``s3://``) as a stream into jobs, in chunks.

A batch read whole before is not read again (``batch submit`` of the same file just reports it); a read
that was interrupted starts again and, thanks to the idempotency keys of its lines
(:mod:`workers.batch.lines`), only adds what is missing.

Memory is bounded by the chunk (``CHUNK`` good lines), the set of ids seen, and the first
``BAD_LINES_KEPT`` bad lines kept for the report (every bad line is in the batch record and manifest).
Each chunk is one pipelined Lua round trip that writes the job records together with their ``submit``
messages (``JobStore.create_many``), plus one round trip for the batch's own bookkeeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final

import redis

from config.celery import PRIORITY_BATCH, PRIORITY_STEPS
from config.settings import Settings, get_settings
from core import tracing
from core.catalog import DEFAULT_MODEL, Catalog, model_named
from core.clients import Clients
from core.errors import OverBudget, ValidationError
from core.jobs import Job
from core.messages import BrokerMessage, submit_message
from workers.batch.lines import BadLine, LineParser, ParsedLine, batch_header, batch_id_for, iter_lines
from workers.batch.locations import Files, Location
from workers.batch.status import OVER_BUDGET, BatchStatus
from workers.batch.store import BatchStore, LineEntry
from workers.intake import Intake
from workers.storage import build_s3_client

log = logging.getLogger("imagineq.batch")

#: Good lines written per chunk (one Redis round trip for their records and messages).
CHUNK: Final = 500
#: Bad lines kept in memory for the report (all of them go to the batch record and the manifest).
BAD_LINES_KEPT: Final = 1000
#: ``--priority`` → broker priority of the batch's submit messages (interactive work uses 0: always first).
PRIORITY_LEVELS: Final = {"low": PRIORITY_BATCH, "normal": PRIORITY_STEPS[-2]}


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
        tracing.setup("batch")  # each line's job starts its own trace, linked to nothing: a no-op when off
        clients = Clients.build(self.settings, client)
        self.redis, self.keys, self.jobs = clients.redis, clients.keys, clients.jobs
        self.batches = BatchStore(
            self.redis, self.keys, terminal_ttl_s=self.settings.job_ttl_s, events_max_len=self.settings.events_max_len
        )
        s3, http = self.settings.s3, self.settings.http
        self.files = files or Files(lambda: build_s3_client(s3, http))
        self.intake = Intake(self.settings, self.jobs.get, lambda: build_s3_client(s3, http))
        self.catalog = Catalog(self.settings)

    def close(self) -> None:
        self.redis.close()

    def _line_intake(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """A line's images and parent looked after; a model switched off here is refused by name."""
        model = item.get("model") or DEFAULT_MODEL
        if isinstance(model, str) and model_named(model, field="model"):
            self.catalog.spec(model)
        return self.intake.item(item, owner=None, files={})

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
        budget: float | None = None,
    ) -> SubmitResult:
        """Read ``source`` and enqueue its good lines. ``results``: where the manifest goes (default
        ``<name>.results.jsonl`` next to the input). ``on_chunk(lines_read)`` after every chunk. ``budget``:
        the most credits the batch's jobs may cost (else its header line's, ``{"batch": {"budget": N}}``); a
        line past it, or past its principal's or the daily budget, is reported ``over_budget`` and costs
        nothing."""
        if budget is not None and not budget > 0:
            raise ValidationError("budget", f"must be a number of credits above 0 (got {budget!r})")
        if priority not in PRIORITY_LEVELS:
            allowed = ", ".join(PRIORITY_LEVELS)
            raise ValidationError("priority", f"must be one of {allowed} (got {priority!r})")
        started = time.monotonic()
        location = Location.parse(source)
        batch_id = self.identify(location, name)
        results_location = Location.parse(results) if results else location.results()
        status, token = self.batches.begin(
            batch_id,
            name=name or location.name,
            source=location.uri,
            results=results_location.uri,
            level=PRIORITY_LEVELS[priority],
        )
        if token is None:
            log.info("batch %s (%s) was read before: nothing to do", batch_id, location.uri)
            return SubmitResult(status, read=False, elapsed_s=time.monotonic() - started)
        bad: list[BadLine] = []
        try:
            with self.files.open(location) as stream:
                self._read(stream, batch_id, token, status.level, bad, on_chunk, budget)
        except BaseException:
            self.batches.abandon_reading(batch_id, token)
            raise
        status = self.batches.finish_reading(batch_id, token)
        # Its jobs' ends finish it from now on; any that ended while it was read (or none to wait for: no good
        # line) are looked at here, once.
        status = self.batches.finalise(batch_id, self.files) or status
        elapsed = time.monotonic() - started
        log.info(
            "batch %s (%s): %d lines, %d good, %d bad, %d new jobs in %.1fs",
            batch_id,
            location.uri,
            status.lines,
            status.good,
            status.bad,
            status.created,
            elapsed,
        )
        return SubmitResult(status, read=True, bad_lines=bad, elapsed_s=elapsed)

    def _read(
        self,
        stream: IO[bytes],
        batch_id: str,
        token: str,
        level: int,
        bad: list[BadLine],
        on_chunk: Callable[[int], None] | None,
        budget: float | None,
    ) -> None:
        parser = LineParser(
            batch_id,
            max_bytes=self.settings.batch_max_line_bytes,
            priority_level=level,
            intake=self._line_intake,
            parent=self.intake.with_parent,
        )
        chunk: list[ParsedLine] = []
        good = lines = 0

        def message(job: Job) -> BrokerMessage:
            return submit_message(job, keys=self.keys)

        def flush() -> None:
            nonlocal good
            requests = [parsed.request for parsed in chunk if parsed.request is not None]
            created = iter(
                self.jobs.create_within_budget(requests, chunk=CHUNK, message=message, batch_budget=budget)
                if requests
                else []
            )
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
                made = next(created)
                if isinstance(made, OverBudget):
                    entries.append(LineEntry(parsed.line, parsed.id, error=f"{OVER_BUDGET}: {made}"))
                    continue
                job, is_new = made
                entries.append(LineEntry(parsed.line, parsed.id, job_id=job.id))
                if parsed.id is not None:
                    parser.jobs_by_id[parsed.id] = job.id
                pending.append(job.id)
                new += is_new
            self.batches.add_lines(batch_id, token, entries, created=new, pending=pending)
            chunk.clear()
            good = 0
            if on_chunk is not None:
                on_chunk(lines)

        for number, raw in iter_lines(stream, self.settings.batch_max_line_bytes):
            if number == 1 and (header := batch_header(raw)) is not None:
                budget = budget if budget is not None else header.get("budget")
                if budget is not None:
                    self.batches.set_budget(batch_id, budget)
                continue
            if number == 1 and budget is not None:
                self.batches.set_budget(batch_id, budget)
            parsed = parser.parse(number, raw)
            if parsed is not None and parsed.needs_flush:
                flush()  # its parent's line is read: written now, so the line can name its job
                parsed = parser.parse(number, raw)
                if parsed is not None and parsed.needs_flush:
                    parsed = ParsedLine(number, parsed.id, error="parent: its line has no job")
            if parsed is None:
                continue
            lines += 1
            chunk.append(parsed)
            good += parsed.request is not None
            if good >= CHUNK or len(chunk) >= 4 * CHUNK:
                flush()
        if chunk:
            flush()
