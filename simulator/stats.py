"""What the simulator saw, for tests and benchmarks to check the client from the outside."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PoolStats:
    """Counters for one model pool of one key."""

    created: int = 0
    peak_in_progress: int = 0
    max_creations_in_window: int = 0


@dataclass
class KeyStats:
    """Counters for one API key (one account); ``peak_in_progress`` and ``max_creations_in_window`` are the
    text-to-video pool's (``pools`` holds every pool's)."""

    create_calls: int = 0
    created: int = 0
    rate_limited: int = 0
    record_info_calls: int = 0
    record_info_rate_limited: int = 0
    #: The most recordInfo calls that arrived in any rolling (simulated) second, refused ones included.
    max_record_info_per_s: int = 0
    peak_in_progress: int = 0
    max_creations_in_window: int = 0
    #: The most createTask requests that arrived in any rolling request-rate window (when one is set).
    max_create_requests_in_window: int = 0
    uploads: int = 0
    #: Credits its creations took from the balance (whether or not it is unlimited).
    credits_spent: float = 0.0
    errors_by_code: Counter[int] = field(default_factory=Counter)
    pools: dict[str, PoolStats] = field(default_factory=dict)

    def pool(self, name: str) -> PoolStats:
        stats = self.pools.get(name)
        if stats is None:
            stats = self.pools[name] = PoolStats()
        return stats


@dataclass
class Stats:
    """Process-wide counters; ``per_key`` holds the per-account breakdown."""

    create_calls: int = 0
    created: int = 0
    rate_limited: int = 0
    peak_in_progress: int = 0
    record_info_calls: int = 0
    record_info_per_task: Counter[str] = field(default_factory=Counter)
    callbacks_sent: int = 0  #: HTTP attempts, retries and duplicates included
    callbacks_delivered: int = 0  #: attempts answered 2xx
    callbacks_failed: int = 0  #: attempts answered non-2xx or not answered
    callbacks_abandoned: int = 0  #: deliveries that ran out of retries
    callbacks_dropped: int = 0  #: deliveries skipped by the drop_callbacks fault switch
    callbacks_duplicated: int = 0  #: deliveries sent a second time on purpose
    downloads: int = 0  #: result file GETs that started streaming
    bytes_served: int = 0
    download_urls_issued: int = 0
    forced_errors: int = 0
    uploads: int = 0
    errors_by_code: Counter[int] = field(default_factory=Counter)
    per_key: dict[str, KeyStats] = field(default_factory=dict)

    def key(self, key_id: str) -> KeyStats:
        ks = self.per_key.get(key_id)
        if ks is None:
            ks = self.per_key[key_id] = KeyStats()
        return ks

    def error(self, code: int, key_id: str | None) -> None:
        self.errors_by_code[code] += 1
        if code == 429:
            self.rate_limited += 1
        if key_id is not None:
            ks = self.key(key_id)
            ks.errors_by_code[code] += 1
            if code == 429:
                ks.rate_limited += 1


def key_stats_json(ks: KeyStats) -> dict[str, Any]:
    return {
        "create_calls": ks.create_calls,
        "created": ks.created,
        "rate_limited": ks.rate_limited,
        "record_info_calls": ks.record_info_calls,
        "record_info_rate_limited": ks.record_info_rate_limited,
        "max_record_info_per_s": ks.max_record_info_per_s,
        "peak_in_progress": ks.peak_in_progress,
        "max_creations_in_window": ks.max_creations_in_window,
        "max_create_requests_in_window": ks.max_create_requests_in_window,
        "uploads": ks.uploads,
        "credits_spent": ks.credits_spent,
        "errors_by_code": {str(c): n for c, n in sorted(ks.errors_by_code.items())},
        "pools": {
            name: {
                "created": ps.created,
                "peak_in_progress": ps.peak_in_progress,
                "max_creations_in_window": ps.max_creations_in_window,
            }
            for name, ps in sorted(ks.pools.items())
        },
    }
