"""A thread that reads the events stream as one consumer of a consumer group: each entry handed to one
member of the group, the entries a dead member had read but not acknowledged claimed by another after
``claim_idle_ms``. The notify dispatcher and the release thread are two such groups."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar, cast

import redis
from celery import bootsteps

from core.keys import Keys

log = logging.getLogger("imagineq.streams")

Entries = list[tuple[str, dict[str, str]]]


class GroupReader:
    """Subclasses name their ``group`` and handle what they read (``handle``, which acknowledges)."""

    group: str = ""
    #: How long one read waits for new entries (the subclass's own work runs in between: ``idle``).
    block_ms: int = 500
    #: Entries read but not acknowledged for this long are taken over from their (dead) reader.
    claim_idle_ms: int = 30_000

    def __init__(self, client: redis.Redis, keys: Keys, consumer: str) -> None:
        self.redis, self.keys, self.consumer = client, keys, consumer
        self._stop = threading.Event()
        try:
            # From now on: a new deployment's first reader does not replay older history.
            self.redis.xgroup_create(self.keys.events(), self.group, id="$", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def handle(self, entries: Entries) -> None:
        raise NotImplementedError

    def idle(self) -> None:
        """Work to do between two reads (none by default)."""

    def run(self) -> None:
        claimed_at = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now - claimed_at > self.claim_idle_ms / 1000:
                    self.handle(self._claim_stale())
                    claimed_at = now
                self.handle(self._read_new())
                self.idle()
            except redis.RedisError as error:
                log.warning("%s: Redis: %s; trying again", self.group, error)
                self._stop.wait(1.0)
            except Exception:
                log.exception("%s: unexpected error; trying again", self.group)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()

    def acknowledge(self, entry_ids: list[str]) -> None:
        if entry_ids:
            self.redis.xack(self.keys.events(), self.group, *entry_ids)

    def _read_new(self) -> Entries:
        reply = self.redis.xreadgroup(
            self.group, self.consumer, {self.keys.events(): ">"}, count=200, block=self.block_ms
        )
        return [entry for _, entries in cast("list[Any]", reply or []) for entry in entries]

    def _claim_stale(self) -> Entries:
        reply = cast(
            "list[Any]",
            self.redis.xautoclaim(self.keys.events(), self.group, self.consumer, self.claim_idle_ms, "0-0", count=200),
        )
        return [entry for entry in reply[1] if entry and entry[1]]


class GroupReaderStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A Celery worker bootstep running a :class:`GroupReader` thread in each worker that consumes
    ``queue`` (the subclass names it and builds the reader)."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}
    queue: str = ""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.reader: GroupReader | None = None
        self.thread: threading.Thread | None = None

    def build(self, worker: Any) -> GroupReader:
        raise NotImplementedError

    def start(self, worker: Any) -> None:
        queues = set(getattr(worker.app.amqp.queues, "consume_from", None) or {})
        if self.queue not in queues:
            return
        self.reader = self.build(worker)
        self.thread = threading.Thread(target=self.reader.run, name=self.reader.group, daemon=True)
        self.thread.start()
        log.info("%s thread started as %s", self.reader.group, worker.hostname)

    def stop(self, worker: Any) -> None:
        if self.reader is not None and self.thread is not None:
            self.reader.stop()
            self.thread.join(timeout=5)
