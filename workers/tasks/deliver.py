"""``imagineq.deliver``: one attempt of one webhook delivery (``workers.notify``)."""

from __future__ import annotations

import threading

from config.celery import TASK_DELIVER, TIME_LIMITS
from workers.celery import app
from workers.notify.deliver import Notifier
from workers.notify.store import DeliveryStore
from workers.tasks.process import runtime

_notifier: Notifier | None = None
_lock = threading.Lock()


def notifier() -> Notifier:
    """This process's notifier (its HTTP session), built on first use after the pool forks."""
    global _notifier
    with _lock:
        rt = runtime()
        if _notifier is None or _notifier.jobs is not rt.jobs:
            store = DeliveryStore(rt.redis, rt.keys, rt.settings.notify, job_ttl_s=rt.settings.job_ttl_s)
            _notifier = Notifier(rt.settings, store, rt.jobs, rt.workflows)
        return _notifier


@app.task(name=TASK_DELIVER, **TIME_LIMITS[TASK_DELIVER].options())
def deliver(delivery_id: str) -> None:
    notifier().deliver(delivery_id)
