"""The one place a deployment's Redis clients are made: the client, its keys and the job store.

Workers, the web, producers, batches and ``imagineq status`` all build theirs here, so every process
talks to Redis with the same socket options (``config.celery.REDIS_SOCKET_OPTIONS``, shared with the
broker and redbeat) and reads the same values the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from config.celery import REDIS_SOCKET_OPTIONS, sentinel_auth, sentinel_data_node
from config.settings import Settings, sentinel_nodes
from core.credits import CreditPolicy
from core.jobstore import JobStore
from core.keys import Keys
from core.lua_scripts import load_script
from core.workflows import WorkflowStore


def redis_client(settings: Settings) -> Redis:
    """A client for the deployment's Redis, decoding replies to ``str``. With a ``sentinel://`` list, a
    client of the primary the Sentinels name: on a lost connection (or a primary turned replica) it
    asks them again, so it follows a failover by itself."""
    nodes = sentinel_nodes(settings.redis_url)
    if nodes is None:
        return Redis.from_url(settings.redis_url, decode_responses=True, retry_on_timeout=True, **REDIS_SOCKET_OPTIONS)
    from redis.sentinel import Sentinel

    sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_options(settings), **data_node_options(settings))  # type: ignore[no-untyped-call]
    master = sentinel.master_for(settings.redis_sentinel_master, decode_responses=True, retry_on_timeout=True)  # type: ignore[no-untyped-call]
    return cast(Redis, master)


def async_redis_client(settings: Settings) -> AsyncRedis:
    """:func:`redis_client`, for asyncio (the web's event streams)."""
    nodes = sentinel_nodes(settings.redis_url)
    if nodes is None:
        return cast(AsyncRedis, AsyncRedis.from_url(settings.redis_url, decode_responses=True))
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    sentinel = AsyncSentinel(nodes, sentinel_kwargs=sentinel_options(settings), **data_node_options(settings))  # type: ignore[no-untyped-call]
    return cast(AsyncRedis, sentinel.master_for(settings.redis_sentinel_master, decode_responses=True))


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """How to talk to the Sentinels themselves: their password, and the socket timeouts."""
    return {
        "socket_timeout": REDIS_SOCKET_OPTIONS["socket_timeout"],
        "socket_connect_timeout": REDIS_SOCKET_OPTIONS["socket_connect_timeout"],
        **sentinel_auth(settings),
    }


def data_node_options(settings: Settings) -> dict[str, Any]:
    """How to talk to the primary (and replicas): the socket options, its database and password."""
    return {**REDIS_SOCKET_OPTIONS, **sentinel_data_node(settings)}


@dataclass(frozen=True)
class Clients:
    """A Redis client with the deployment's keys, job store and workflow store on it."""

    redis: Redis
    keys: Keys
    jobs: JobStore
    workflows: WorkflowStore

    @classmethod
    def build(cls, settings: Settings, client: Redis | None = None) -> Clients:
        """``client`` when given (tests, a caller sharing its own), else a new one from settings."""
        client = client if client is not None else redis_client(settings)
        keys = Keys(settings.redis_prefix)
        return cls(
            client,
            keys,
            JobStore(
                client,
                keys,
                terminal_ttl_s=settings.job_ttl_s,
                events_max_len=settings.events_max_len,
                replica_acks=settings.replica_acks,
                replica_ack_timeout_ms=settings.enqueue_replica_ack_timeout_ms,
                refuse_unacknowledged=settings.enqueue_unacknowledged == "refuse",
                memory_budget_pct=settings.redis_memory_budget_pct,
                weight_of=principal_weights(settings),
                parent_max_age_s=settings.parent_max_age_s,
                credits=CreditPolicy(settings),
            ),
            WorkflowStore(client, keys, ttl_s=settings.job_ttl_s, events_max_len=settings.events_max_len),
        )


def principal_weights(settings: Settings) -> Callable[[str | None], float]:
    """Each ingress principal's fair-share weight, by name (1 for the operator's own jobs and unknown names)."""
    weights = {principal.name: principal.weight for principal in settings.ingress_principals}
    return lambda owner: weights.get(owner, 1.0) if owner is not None else 1.0


def as_text(value: Any) -> str:
    """A Redis reply as ``str``, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def release_token_lock(client: Redis, key: str, token: str) -> bool:
    """Delete the lock at ``key`` if it still holds ``token`` (one atomic step); True if it did."""
    return bool(load_script(client, "token_lock_release")(keys=[key], args=[token]))
