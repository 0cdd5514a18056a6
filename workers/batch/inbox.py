"""The nightly inbox: every batch file under the inbox prefix submitted, then moved aside."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from config.settings import Settings
from workers.batch.locations import BATCH_SUFFIX, Location
from workers.batch.reader import BatchSubmitter
from workers.errors import ImagineQError

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
