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
import threading
import time
from typing import Any, ClassVar, Final, cast

import redis
from celery import Celery, bootsteps

from config.celery import NOTIFY_QUEUE, TASK_DELIVER
from config.settings import Settings
from core.clients import Clients
from core.events import Event
from workers.notify.store import DeliveryStore
from workers.notify.targets import targets_for

log = logging.getLogger("imagineq.notify")

GROUP: Final = "notify"
#: How long one read of the stream waits for new events (the due retries are looked at in between).
BLOCK_MS: Final = 250
#: Entries read but not acknowledged for this long are taken over from their (dead) reader.
CLAIM_IDLE_MS: Final = 30_000


class Dispatcher:
    def __init__(self, settings: Settings, app: Celery, consumer: str) -> None:
        clients = Clients.build(settings)
        self.settings = settings
        self.redis, self.keys, self.jobs = clients.redis, clients.keys, clients.jobs
        self.store = DeliveryStore(self.redis, self.keys, settings.notify, job_ttl_s=settings.job_ttl_s)
        self.app = app
        self.consumer = consumer
        self._stop = threading.Event()
        self._ensure_group()

    def _ensure_group(self) -> None:
        try:
            # From now on: a new deployment's first notify worker does not replay older history.
            self.redis.xgroup_create(self.keys.events(), GROUP, id="$", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def run(self) -> None:
        claimed_at = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now - claimed_at > CLAIM_IDLE_MS / 1000:
                    self.dispatch(self._claim_stale())
                    claimed_at = now
                self.dispatch(self._read_new())
                for delivery_id in self.store.pop_due():
                    self._publish(delivery_id)
            except redis.RedisError as error:
                log.warning("notify dispatcher: Redis: %s; trying again", error)
                self._stop.wait(1.0)
            except Exception:
                log.exception("notify dispatcher: unexpected error; trying again")
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()

    # -- the stream --------------------------------------------------------------------------------
    def _read_new(self) -> list[tuple[str, dict[str, str]]]:
        reply = self.redis.xreadgroup(GROUP, self.consumer, {self.keys.events(): ">"}, count=200, block=BLOCK_MS)
        return [entry for _, entries in cast("list[Any]", reply or []) for entry in entries]

    def _claim_stale(self) -> list[tuple[str, dict[str, str]]]:
        reply = cast(
            "list[Any]",
            self.redis.xautoclaim(self.keys.events(), GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=200),
        )
        return [entry for entry in reply[1] if entry and entry[1]]

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
        self.redis.xack(self.keys.events(), GROUP, *(event.id for event in events))

    def _publish(self, delivery_id: str) -> None:
        self.app.send_task(TASK_DELIVER, (delivery_id,), queue=NOTIFY_QUEUE)


class DispatchStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs a :class:`Dispatcher` in each worker that consumes the ``notify`` queue."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.dispatcher: Dispatcher | None = None
        self.thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        queues = set(getattr(worker.app.amqp.queues, "consume_from", None) or {})
        if NOTIFY_QUEUE not in queues:
            return
        from config.settings import get_settings

        self.dispatcher = Dispatcher(get_settings(), worker.app, consumer=worker.hostname)
        self.thread = threading.Thread(target=self.dispatcher.run, name="notify-dispatch", daemon=True)
        self.thread.start()
        log.info("notify dispatcher started as %s", worker.hostname)

    def stop(self, worker: Any) -> None:
        if self.dispatcher is not None and self.thread is not None:
            self.dispatcher.stop()
            self.thread.join(timeout=5)
