"""The rest of a job's chain once its upstream task exists: ``chain(poll, store)``, or ``store`` alone.

Built on whichever Celery app the caller has (a worker's, or the web's), so that submit, a woken
callback and the reconciler publish the same steps the same way. Messages carry the job id only; a
poll woken by a callback also carries ``woken=True``, which makes it ask recordInfo at once.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain

from config.celery import TASK_POLL, TASK_STORE
from core.jobs import Job, JobState


def rest_of_job(celery_app: Celery, job: Job, *, woken: bool = False, priority: int | None = None) -> Any:
    """The signature of the job's remaining steps (``apply_async()`` publishes it)."""
    options: dict[str, Any] = {} if priority is None else {"priority": priority}
    steps = []
    if job.state is not JobState.DOWNLOADING:
        kwargs = {"woken": True} if woken else {}
        steps.append(celery_app.signature(TASK_POLL, args=(job.id,), kwargs=kwargs, immutable=True, **options))
    steps.append(celery_app.signature(TASK_STORE, args=(job.id,), immutable=True, **options))
    return chain(*steps)
