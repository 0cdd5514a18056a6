"""The one place a deployment's Redis clients are made: the client, its keys and the job store.

Workers, the web, producers, batches and ``imagineq status`` all build theirs here, so every process
talks to Redis with the same socket options (``config.celery.REDIS_SOCKET_OPTIONS``, shared with the
broker and redbeat) and reads the same values the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis

from config.celery import REDIS_SOCKET_OPTIONS
from config.settings import Settings
from workers.jobstore import JobStore
from workers.keys import Keys
from workers.lua_scripts import load_script


def redis_client(settings: Settings) -> Redis:
    """A client for the deployment's Redis, decoding replies to ``str``."""
    return Redis.from_url(settings.redis_url, decode_responses=True, retry_on_timeout=True, **REDIS_SOCKET_OPTIONS)


@dataclass(frozen=True)
class Clients:
    """A Redis client with the deployment's keys and job store on it."""

    redis: Redis
    keys: Keys
    jobs: JobStore

    @classmethod
    def build(cls, settings: Settings, client: Redis | None = None) -> Clients:
        """``client`` when given (tests, a caller sharing its own), else a new one from settings."""
        client = client if client is not None else redis_client(settings)
        keys = Keys(settings.redis_prefix)
        return cls(
            client,
            keys,
            JobStore(client, keys, terminal_ttl_s=settings.job_ttl_s, events_max_len=settings.events_max_len),
        )


def as_text(value: Any) -> str:
    """A Redis reply as ``str``, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def release_token_lock(client: Redis, key: str, token: str) -> bool:
    """Delete the lock at ``key`` if it still holds ``token`` (one atomic step); True if it did."""
    return bool(load_script(client, "token_lock_release")(keys=[key], args=[token]))
