"""The dispatcher: events stream → delivery records → ``imagineq.deliver`` tasks (see the package doc).

It runs as a thread of each worker that consumes the ``notify`` queue (:class:`DispatchStep`, a Celery
worker bootstep), as one consumer of the stream's ``notify`` group: several notify workers share the
events, each handed out once; the entries a dead worker had read but not acknowledged are claimed by
another after ``CLAIM_IDLE_MS``. A delivery's id is derived from its event and endpoint, so an event
dispatched twice (claimed again after its dispatcher died between publishing and acknowledging) finds its
deliveries written already and publishes no second task for them.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from celery import Celery

from config.celery import NOTIFY_QUEUE, TASK_DELIVER
from config.settings import Settings
from core.clients import Clients
from core.events import Event
from workers.notify.store import DeliveryStore
from workers.notify.targets import targets_for
from workers.stream_group import GroupReader, GroupReaderStep

log = logging.getLogger("imagineq.notify")

GROUP: Final = "notify"
#: How long one read of the stream waits for new events (the due retries are looked at in between).
BLOCK_MS: Final = 250
#: Entries read but not acknowledged for this long are taken over from their (dead) reader.
CLAIM_IDLE_MS: Final = 30_000


class Dispatcher(GroupReader):
    group = GROUP
    block_ms = BLOCK_MS
    claim_idle_ms = CLAIM_IDLE_MS

    def __init__(self, settings: Settings, app: Celery, consumer: str) -> None:
        clients = Clients.build(settings)
        self.settings = settings
        self.jobs = clients.jobs
        self.store = DeliveryStore(clients.redis, clients.keys, settings.notify, job_ttl_s=settings.job_ttl_s)
        self.app = app
        super().__init__(clients.redis, clients.keys, consumer)

    def handle(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        self.dispatch(entries)

    def idle(self) -> None:
        for delivery_id in self.store.pop_due():
            self._publish(delivery_id)

    def dispatch(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Deliveries for each event, their tasks published, then the events acknowledged."""
        if not entries:
            return
        events = [Event.of(entry_id, fields) for entry_id, fields in entries]
        jobs = self.jobs.get_many([event.job_id for event in events if event.job_id])
        by_id = {job.id: job for job in jobs if job is not None}
        for event in events:
            job = by_id.get(event.job_id) if event.job_id else None
            for target in targets_for(event, job, self.settings):
                delivery_id = self.store.create(event, target)
                if delivery_id is not None:
                    self._publish(delivery_id)
        self.acknowledge([event.id for event in events])

    def _publish(self, delivery_id: str) -> None:
        self.app.send_task(TASK_DELIVER, (delivery_id,), queue=NOTIFY_QUEUE)


class DispatchStep(GroupReaderStep):
    """Runs a :class:`Dispatcher` in each worker that consumes the ``notify`` queue."""

    queue = NOTIFY_QUEUE

    def build(self, worker: Any) -> GroupReader:
        from config.settings import get_settings

        return Dispatcher(get_settings(), worker.app, consumer=worker.hostname)
