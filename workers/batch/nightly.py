"""The beat task that picks up the nightly inbox."""

from __future__ import annotations

import logging
import time

from config.celery import TASK_INBOX, TIME_LIMITS
from workers.batch.inbox import run_inbox
from workers.celery import app
from workers.tasks import runtime

log = logging.getLogger("imagineq.batch")


@app.task(name=TASK_INBOX, **TIME_LIMITS[TASK_INBOX].options())
def batch_inbox() -> int:
    """Beat, at ``nightly_cron``: submit the inbox's batch files and move them to the processed location."""
    started = time.monotonic()
    done = run_inbox(runtime().settings)
    set_aside = sum(1 for item in done if item.error is not None)
    log.info(
        "inbox: %d file(s) picked up, %d set aside as unreadable, in %.1fs",
        len(done) - set_aside,
        set_aside,
        time.monotonic() - started,
    )
    return len(done) - set_aside
