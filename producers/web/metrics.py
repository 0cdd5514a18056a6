"""Prometheus metrics for ``/metrics``, read from Redis at scrape time.

Nothing is counted in the web process itself: workers and every web replica write to Redis (the job
state indexes, the quota keys, the counters hash ``keys.counters()``), and a scrape reads it all in a few
round trips, so every replica reports the same deployment-wide figures.

Celery queue depth comes from :func:`workers.queues.read_depths`: one gauge per queue and priority step,
and the messages workers hold (reserved, or waiting for a poll countdown) as ``imagineq_celery_unacked``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from core.balances import Balances
from core.clients import as_text
from core.fair_share import PrincipalShare
from core.jobs import JobState
from core.jobstore import JobStore
from core.keys import Keys
from core.ledger import Ledger
from core.quota import QuotaLimiter
from core.quota_outcomes import AccountQuota
from workers.queues import read_depths

UPSTREAM_ERROR_PREFIX = "upstream_error:"
CALLBACK_PREFIX = "callback:"
RECONCILE_PREFIX = "reconcile:"
WEBHOOK_PREFIX = "webhook:"


class RedisCollector(Collector):
    """Yields every ImagineQ metric, read from Redis on each scrape."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        jobs: JobStore,
        quota: QuotaLimiter,
        queues: Iterable[str],
        shares: Callable[[], list[PrincipalShare]] | None = None,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._jobs = jobs
        self._quota = quota
        self._queues = tuple(queues)
        self._shares = shares

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs_by_state()
        yield from self._accounts()
        yield from self._principals()
        yield from self._queue_depth()
        yield from self._counters()
        yield from self._credits()

    def _credits(self) -> Iterator[Metric]:
        """The ledger's totals since the deployment began, and each account's balance as ImagineQ counts it."""
        totals = Ledger(self._redis, self._keys).totals()
        # CounterMetricFamily adds the _total suffix.
        by_model = CounterMetricFamily(
            "imagineq_credits_charged",
            "Credits charged, by model (estimates, settled on the upstream's figure)",
            labels=["model"],
        )
        by_account = CounterMetricFamily(
            "imagineq_account_credits_charged", "Credits charged, by upstream account", labels=["account"]
        )
        for name, amount in sorted(totals.items()):
            if name.startswith("c|*|m:"):
                by_model.add_metric([name.removeprefix("c|*|m:")], amount)
            elif name.startswith("c|*|a:"):
                by_account.add_metric([name.removeprefix("c|*|a:")], amount)
        reserved = GaugeMetricFamily("imagineq_credits_reserved", "Credits reserved by jobs not yet charged")
        reserved.add_metric([], totals.get("r|*|t", 0.0))
        yield from (by_model, by_account, reserved)
        balance = GaugeMetricFamily(
            "imagineq_account_balance_credits", "The account's credits when last read (chat/credit)", labels=["account"]
        )
        available = GaugeMetricFamily(
            "imagineq_account_available_credits",
            "What the account can still pay: its last reading less the charges and holds since",
            labels=["account"],
        )
        low = GaugeMetricFamily(
            "imagineq_account_low_balance", "1 while the account is below its low mark", labels=["account"]
        )
        age = GaugeMetricFamily(
            "imagineq_account_balance_age_seconds", "Seconds since the balance was read", labels=["account"]
        )
        now = time.time()
        for account in Balances(self._redis, self._keys).read(self._quota.account_names):
            if account.credits is None or account.available is None or account.read_at is None:
                continue
            balance.add_metric([account.account], account.credits)
            available.add_metric([account.account], account.available)
            low.add_metric([account.account], 1 if account.low else 0)
            age.add_metric([account.account], max(0.0, now - account.read_at))
        yield from (balance, available, low, age)

    def _principals(self) -> Iterator[Metric]:
        """Fair share per principal: the label set is the configured principals and ``@operator``."""
        if self._shares is None:
            return
        labels = ["principal"]
        queued = GaugeMetricFamily("imagineq_principal_queued", "Jobs waiting for a slot", labels=labels)
        held = GaugeMetricFamily("imagineq_principal_in_progress", "In-progress slots held", labels=labels)
        created = GaugeMetricFamily(
            "imagineq_principal_creations_last_hour", "Creations in the last hour", labels=labels
        )
        share = GaugeMetricFamily("imagineq_principal_share", "Share of the last hour's creations", labels=labels)
        fair = GaugeMetricFamily(
            "imagineq_principal_fair_share", "The share its weight entitles it to among the active", labels=labels
        )
        oldest = GaugeMetricFamily(
            "imagineq_principal_oldest_waiting_seconds", "Age of its oldest waiting job", labels=labels
        )
        now = time.time()
        for entry in self._shares():
            name = [entry.principal]
            queued.add_metric(name, entry.queued)
            held.add_metric(name, entry.in_progress)
            created.add_metric(name, entry.creations)
            share.add_metric(name, entry.share)
            fair.add_metric(name, entry.fair_share)
            oldest.add_metric(name, 0.0 if entry.oldest_waiting_at is None else max(0.0, now - entry.oldest_waiting_at))
        yield from (queued, held, created, share, fair, oldest)

    def _jobs_by_state(self) -> Iterator[Metric]:
        metric = GaugeMetricFamily("imagineq_jobs", "Jobs by state (state index sizes)", labels=["state"])
        for state, count in self._jobs.count_by_state().items():
            metric.add_metric([state.value], count)
        yield metric
        oldest = GaugeMetricFamily(
            "imagineq_jobs_oldest_seconds",
            "How long the job longest in each unfinished state has been there (0: none there)",
            labels=["state"],
        )
        now_ms = time.time() * 1000
        unfinished = [state for state in JobState if not state.terminal]
        for state, entered in self._jobs.oldest_entered_ms(unfinished).items():
            oldest.add_metric([state.value], 0.0 if entered is None else max(0.0, (now_ms - entered) / 1000))
        yield oldest

    def _accounts(self) -> Iterator[Metric]:
        labels = ["account", "pool"]
        created = GaugeMetricFamily(
            "imagineq_account_creations_in_window",
            "createTask calls of a model pool in the rolling window",
            labels=labels,
        )
        created_limit = GaugeMetricFamily(
            "imagineq_account_creations_limit", "creations allowed per window in a pool (less margin)", labels=labels
        )
        leased = GaugeMetricFamily("imagineq_account_in_progress", "in-progress leases held in a pool", labels=labels)
        leased_limit = GaugeMetricFamily(
            "imagineq_account_in_progress_limit", "in-progress leases allowed in a pool (less margin)", labels=labels
        )
        ready = GaugeMetricFamily("imagineq_ready_jobs", "Queued jobs a submitter may take, by pool", labels=["pool"])
        cooldown = GaugeMetricFamily(
            "imagineq_account_cooldown_remaining_seconds", "cooldown left (upstream 429/455)", labels=["account"]
        )
        paused = GaugeMetricFamily(
            "imagineq_account_paused",
            "1 while the account is paused (402/433/...); no end time",
            labels=["account", "reason"],
        )
        accounts: dict[str, AccountQuota] = {}
        for quota in self._quota.snapshot(pool=None):
            created.add_metric([quota.account, quota.pool], quota.creations_in_window)
            created_limit.add_metric([quota.account, quota.pool], quota.creations_limit)
            leased.add_metric([quota.account, quota.pool], quota.in_progress)
            leased_limit.add_metric([quota.account, quota.pool], quota.in_progress_limit)
            accounts.setdefault(quota.account, quota)
        for quota in accounts.values():
            cooldown.add_metric([quota.account], quota.cooldown_s)
            paused.add_metric([quota.account, quota.paused or ""], 1 if quota.paused else 0)
        with self._redis.pipeline(transaction=False) as pipe:
            for pool in self._quota.pools:
                pipe.zcard(self._keys.ready(pool))
            for pool, size in zip(self._quota.pools, pipe.execute(), strict=True):
                ready.add_metric([pool], int(size))
        yield from (created, created_limit, leased, leased_limit, ready, cooldown, paused)

    def _queue_depth(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "imagineq_queue_depth", "Messages waiting in a Celery queue", labels=["queue", "priority"]
        )
        depths = read_depths(self._redis, self._keys, self._queues)
        for queue, steps in depths.waiting.items():
            for step, size in steps.items():
                depth.add_metric([queue, str(step)], size)
        yield depth
        unacked = GaugeMetricFamily(
            "imagineq_celery_unacked", "Messages held by workers (reserved or waiting for a countdown)"
        )
        unacked.add_metric([], depths.held)
        yield unacked

    def _counters(self) -> Iterator[Metric]:
        raw = cast("dict[Any, Any]", self._redis.hgetall(self._keys.counters()))
        counters = {as_text(name): int(value) for name, value in raw.items()}
        errors = CounterMetricFamily(
            "imagineq_upstream_errors",
            "Upstream errors by code (or HTTP status, or transport)",
            labels=["code"],
        )
        callbacks = CounterMetricFamily(
            "imagineq_callbacks", "Upstream callbacks received, by outcome", labels=["outcome"]
        )
        reconciled = CounterMetricFamily(
            "imagineq_reconciled", "Jobs the reconciler re-drove or repaired, by case", labels=["case"]
        )
        webhooks = CounterMetricFamily(
            "imagineq_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retry (failed, tried again later), failed (given up)",
            labels=["outcome"],
        )
        for outcome in ("delivered", "retry", "failed"):  # each always present: rates need a series at 0
            webhooks.add_metric([outcome], counters.get(WEBHOOK_PREFIX + outcome, 0))
        for name, value in sorted(counters.items()):
            if name.startswith(UPSTREAM_ERROR_PREFIX):
                errors.add_metric([name.removeprefix(UPSTREAM_ERROR_PREFIX)], value)
            elif name.startswith(CALLBACK_PREFIX):
                callbacks.add_metric([name.removeprefix(CALLBACK_PREFIX)], value)
            elif name.startswith(RECONCILE_PREFIX):
                reconciled.add_metric([name.removeprefix(RECONCILE_PREFIX)], value)
        yield errors
        yield callbacks
        yield reconciled
        yield webhooks
        record_info = CounterMetricFamily("imagineq_record_info_calls", "recordInfo calls made by polls")
        record_info.add_metric([], counters.get("record_info_calls", 0))
        yield record_info
        stored = CounterMetricFamily("imagineq_bytes_stored", "Bytes uploaded to S3")
        stored.add_metric([], counters.get("bytes_stored", 0))
        yield stored


def build_registry(collector: RedisCollector) -> CollectorRegistry:
    """A private registry (not the process-global one), so several apps can live in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
