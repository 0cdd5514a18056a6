"""The rest of a job's chain once its upstream task exists: ``chain(poll, store)``, or ``store`` alone.

Built on whichever Celery app the caller has (a worker's, or the web's), so that submit, a woken
callback and the reconciler publish the same steps the same way, at the same priority as the job's submit.
Messages carry the job id only; a poll woken by a callback also carries ``woken=True``, which makes it
ask recordInfo at once.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain

from config.celery import TASK_POLL, TASK_STORE
from core.jobs import Job, JobState
from core.messages import broker_priority


def rest_of_job(celery_app: Celery, job: Job, *, woken: bool = False) -> Any:
    """The signature of the job's remaining steps (``apply_async()`` publishes it), at the job's broker
    priority (``core.messages.broker_priority``): ``chain(poll, store)``, or ``store`` alone once the job
    is downloading."""
    options: dict[str, Any] = {"priority": broker_priority(job)}
    steps = []
    if job.state is not JobState.DOWNLOADING:
        kwargs = {"woken": True} if woken else {}
        steps.append(celery_app.signature(TASK_POLL, args=(job.id,), kwargs=kwargs, immutable=True, **options))
    steps.append(celery_app.signature(TASK_STORE, args=(job.id,), immutable=True, **options))
    return chain(*steps)
