"""Delivery records, the due and sending sets, endpoint breakers and the jobs' delivery logs, in Redis."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Final, cast

import redis

from config.settings import NotifySettings
from core.events import DETAIL_FIELDS, Event
from core.keys import Keys
from core.lua_scripts import load_script
from workers.notify.targets import Target, breaker_scope

#: Attempts shown per job (the newest).
LOG_KEPT: Final = 100
#: Records outlive their last possible attempt by this long (for the logs that point at them).
RECORD_SLACK_S: Final = 86400


@dataclass(frozen=True)
class Delivery:
    id: str
    event: str
    type: str
    job_id: str | None
    batch_id: str | None
    ref: str
    #: A workflow's event: its id and final state.
    workflow_id: str | None
    url: str
    #: The principal whose own ``notify_url`` this is (its trust applies), or None: the operator's receiver.
    tenant: str | None
    at: float  #: when the event happened (s)
    created_ms: int
    attempts: int
    status: str  #: pending | delivered | failed
    #: A budget or balance event's details (``core.events.DETAIL_FIELDS``).
    details: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, delivery_id: str, raw: dict[str, str]) -> Delivery:
        return cls(
            id=delivery_id,
            event=raw["event"],
            type=raw.get("type", ""),
            job_id=raw.get("job") or None,
            batch_id=raw.get("batch") or None,
            ref=raw.get("ref", ""),
            workflow_id=raw.get("workflow") or None,
            url=raw.get("url", ""),
            tenant=raw.get("tenant") or None,
            at=float(raw.get("at", 0)),
            created_ms=int(raw.get("created_ms", 0)),
            attempts=int(raw.get("attempts", 0)),
            status=raw.get("status", "pending"),
            details={name: raw[name] for name in DETAIL_FIELDS if raw.get(name)},
        )


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


class DeliveryStore:
    def __init__(self, client: redis.Redis, keys: Keys, settings: NotifySettings, *, job_ttl_s: int) -> None:
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._ttl_s = int(settings.retry_for_s) + RECORD_SLACK_S
        self._job_ttl_s = job_ttl_s
        self._pop = load_script(client, "deliveries_pop")

    def now_ms(self) -> int:
        seconds, micros = cast("tuple[int, int]", self._redis.time())
        return seconds * 1000 + micros // 1000

    # -- records -----------------------------------------------------------------------------------
    def create(self, event: Event, target: Target) -> str | None:
        """The delivery of ``event`` to ``target``; None when it exists already (it was dispatched)."""
        delivery_id = hashlib.sha256(f"{event.id}|{target.ref}|{target.url}".encode()).hexdigest()[:32]
        key = self._keys.delivery(delivery_id)
        if not self._redis.hsetnx(key, "event", event.id):
            return None
        fields = {
            "type": event.type,
            "job": event.job_id or "",
            "batch": event.batch_id or "",
            "workflow": event.workflow_id or "",
            "workflow_state": event.state or "",
            "ref": target.ref,
            "url": target.url,
            "tenant": target.tenant or "",
            "at": repr(event.at),
            "created_ms": str(self.now_ms()),
            "attempts": "0",
            "status": "pending",
            **event.details,
        }
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._ttl_s)
            pipe.execute()
        return delivery_id

    def get(self, delivery_id: str) -> Delivery | None:
        raw = cast("dict[str, str]", self._redis.hgetall(self._keys.delivery(delivery_id)))
        return Delivery.of(delivery_id, raw) if raw.get("event") else None

    # -- attempts ----------------------------------------------------------------------------------
    def sending(self, delivery: Delivery, lease_s: float) -> int:
        """Mark an attempt as under way (a worker that dies with it leaves it to be sent again after
        ``lease_s``); returns its number."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys.deliveries_sending(), {delivery.id: self.now_ms() + lease_s * 1000})
            pipe.hincrby(self._keys.delivery(delivery.id), "attempts", 1)
            attempt = int(pipe.execute()[1])
        return attempt

    def finish(self, delivery: Delivery, *, status: str, retry_at_ms: int | None = None) -> None:
        """The delivery is ``delivered``, ``failed`` (given up), or ``pending`` again (``retry_at_ms``); each
        outcome counted (``webhook:<delivered|failed|retry>``, exported by ``/metrics``)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._keys.deliveries_sending(), delivery.id)
            pipe.hset(self._keys.delivery(delivery.id), "status", status)
            if retry_at_ms is not None:
                pipe.zadd(self._keys.deliveries_due(), {delivery.id: retry_at_ms})
            pipe.hincrby(self._keys.counters(), f"webhook:{'retry' if retry_at_ms is not None else status}", 1)
            pipe.execute()

    def hold(self, delivery: Delivery, until_ms: int, now_ms: int) -> bool:
        """Wait without an attempt while the endpoint's breaker is open; True the first time for this
        delivery (``now_ms``: the Redis time the breaker was read at). The wake-up is spread over a
        quarter of the wait (at least 200 ms): the deliveries held together do not all wake at the
        instant the breaker closes, and which of them probes the endpoint first is left to chance rather
        than to the order of their ids, so none is always last.
        """
        spread_ms = max(200, (until_ms - now_ms) // 4)
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys.deliveries_due(), {delivery.id: until_ms + random.randint(0, spread_ms)})
            pipe.hsetnx(self._keys.delivery(delivery.id), "held", "1")
            first = bool(pipe.execute()[1])
        return first

    def pop_due(self, limit: int = 200) -> list[str]:
        """Deliveries whose next attempt is due, and those whose sender is presumed dead."""
        now = self.now_ms()
        due = cast("list[str]", self._pop(keys=[self._keys.deliveries_due()], args=[now, limit]))
        lost = cast("list[str]", self._pop(keys=[self._keys.deliveries_sending()], args=[now, limit]))
        return [*due, *lost]

    def next_attempt_ms(self, delivery: Delivery, attempt: int) -> int | None:
        """When to try again after failed attempt number ``attempt`` (exponential backoff, full jitter
        over its upper half); None once past ``retry_for_s`` after the first attempt."""
        settings = self._settings
        delay_s = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
        delay_s *= random.uniform(0.5, 1.0)
        at = self.now_ms() + int(delay_s * 1000)
        if at > delivery.created_ms + settings.retry_for_s * 1000:
            return None
        return at

    # -- endpoints ---------------------------------------------------------------------------------
    def _breaker(self, delivery: Delivery) -> str:
        return self._keys.endpoint_breaker(url_digest(breaker_scope(delivery.url, delivery.tenant)))

    def breaker_open_until(self, delivery: Delivery) -> int:
        """ms until which the delivery's endpoint (its receiver under its trust) is left alone (0: it is not)."""
        value = self._redis.hget(self._breaker(delivery), "open_until")
        return int(cast("str | None", value) or 0)

    def endpoint_result(self, delivery: Delivery, ok: bool) -> None:
        """Count a success (closes the breaker) or a failure (opens it after ``breaker_failures``)."""
        key = self._breaker(delivery)
        if ok:
            self._redis.delete(key)
            return
        failures = int(cast(int, self._redis.hincrby(key, "failures", 1)))
        self._redis.expire(key, self._ttl_s)
        over = failures - self._settings.breaker_failures
        if over >= 0:
            open_s = min(self._settings.backoff_max_s, self._settings.breaker_open_s * 2 ** min(over, 20))
            self._redis.hset(key, "open_until", str(self.now_ms() + int(open_s * 1000)))

    # -- the job's log -----------------------------------------------------------------------------
    def log(self, job_id: str, entry: dict[str, Any]) -> None:
        key = self._keys.job_deliveries(job_id)
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.lpush(key, json.dumps(entry, ensure_ascii=False))
            pipe.ltrim(key, 0, LOG_KEPT - 1)
            pipe.expire(key, self._job_ttl_s)
            pipe.execute()


def delivery_log(client: redis.Redis, keys: Keys, job_id: str) -> list[dict[str, Any]]:
    """A job's delivery attempts, oldest first."""
    rows = cast("list[str]", client.lrange(keys.job_deliveries(job_id), 0, LOG_KEPT - 1))
    return [json.loads(row) for row in reversed(rows)]
