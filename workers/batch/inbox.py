"""The nightly inbox: every batch file under the inbox prefix submitted, then moved aside."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from config.settings import Settings
from core.errors import ImagineQError
from workers.batch.locations import BATCH_SUFFIX, Location
from workers.batch.reader import BatchSubmitter

log = logging.getLogger("imagineq.batch")


@dataclass(frozen=True)
class InboxFile:
    source: str
    moved_to: str
    batch_id: str
    lines: int
    bad: int
    created: int
    read: bool
    #: Why the file could not be read as a batch (it was moved to ``failed/``); None when it was.
    error: str | None = None


def _set_aside(settings: Settings, submitter: BatchSubmitter, source: Location, error: Exception) -> InboxFile:
    reason = f"{type(error).__name__}: {error}"[:500]
    log.error("inbox: %s cannot be read as a batch (%s); moving it to failed/", source.uri, reason)
    failed = failed_location(settings)
    assert failed is not None
    target = failed.child(source.name)
    try:
        if submitter.files.exists(target):
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            target = failed.child(f"{source.name.removesuffix(BATCH_SUFFIX)}-{stamp}{BATCH_SUFFIX}")
        submitter.files.move(source, target)
    except ImagineQError as move_error:
        log.error("inbox: %s could not be moved aside: %s", source.uri, move_error)
        return InboxFile(source.uri, source.uri, "", 0, 0, 0, False, error=reason)
    return InboxFile(source.uri, target.uri, "", 0, 0, 0, False, error=reason)


def processed_location(settings: Settings) -> Location | None:
    if not settings.inbox:
        return None
    inbox = Location.parse(settings.inbox)
    return Location.parse(settings.processed) if settings.processed else inbox.child("processed")


def failed_location(settings: Settings) -> Location | None:
    """Where inbox files that cannot be read as batches are moved: ``failed/`` inside the inbox."""
    return Location.parse(settings.inbox).child("failed") if settings.inbox else None


def run_inbox(settings: Settings, submitter: BatchSubmitter | None = None) -> list[InboxFile]:
    """Submit every batch file in the inbox and move it to the processed location.

    Submitting first and moving second keeps this safe to repeat: a file whose move failed is found again
    next time, and its second submit is a no-op (same content, same batch). Its manifest goes next to
    where the file is moved.

    One file never stops the others. An operational error (storage unreachable, the batch being read
    elsewhere: an ``ImagineQError``) leaves the file where it is for the next run; any other failure
    means the file itself cannot be read as a batch: it is reported (``error``) and moved to
    ``failed/`` inside the inbox, so it does not fail again every night.
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
                result = submitter.submit(
                    source.uri, results=target.results().uri, budget=settings.credits.inbox_batch_budget
                )
                submitter.files.move(source, target)
            except ImagineQError as error:
                log.error("inbox: %s not submitted: %s", source.uri, error)
                continue
            except Exception as error:  # a boundary: the next file must still be read
                done.append(_set_aside(settings, submitter, source, error))
                continue
            status = result.status
            done.append(
                InboxFile(source.uri, target.uri, status.id, status.lines, status.bad, status.created, result.read)
            )
            log.info(
                "inbox: %s → batch %s (%d lines, %d bad, %d new jobs), moved to %s",
                source.uri,
                status.id,
                status.lines,
                status.bad,
                status.created,
                target.uri,
            )
    finally:
        if own:
            submitter.close()
    return done
