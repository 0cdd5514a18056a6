"""The simulator's accounts: one per API key, with a quota per model pool, credits and uploaded files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from simulator.models import POOLS
from simulator.quota import InProgressSet, SlidingWindowLog


def key_id(api_key: str) -> str:
    """Public id of an API key: never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:10]


@dataclass
class Pool:
    """One model pool of one key: its tasks in progress and its creations in the rolling window."""

    window: SlidingWindowLog = field(default_factory=SlidingWindowLog)
    in_progress: InProgressSet = field(default_factory=InProgressSet)


@dataclass
class Upload:
    """A file uploaded to the key's file store."""

    data: bytes
    mime_type: str
    uploaded_at: float


@dataclass
class Account:
    """One API key: its own quotas (one per model pool), credits and uploaded files."""

    key_id: str
    #: The balance, lowered by each task's price (-1: unlimited).
    credits: float
    pools: dict[str, Pool] = field(default_factory=lambda: {pool: Pool() for pool in POOLS})
    #: createTask requests of every model (the optional account-wide request rate).
    create_requests: SlidingWindowLog = field(default_factory=SlidingWindowLog)
    #: recordInfo calls answered in the last rolling second (the limit), and every one that arrived.
    record_info_answered: SlidingWindowLog = field(default_factory=SlidingWindowLog)
    record_info_arrived: SlidingWindowLog = field(default_factory=SlidingWindowLog)
    uploads: dict[str, Upload] = field(default_factory=dict)

    @property
    def window(self) -> SlidingWindowLog:
        """The text-to-video pool's creation log (the only pool before the other models)."""
        return self.pools["text-to-video"].window

    @property
    def in_progress(self) -> InProgressSet:
        return self.pools["text-to-video"].in_progress
