"""How many replicas must have a write before ImagineQ relies on it (Redis ``WAIT``).

Replication is asynchronous: a primary that dies takes with it the writes its replicas had not received,
and the replica promoted in its place never saw them. For the writes that must survive that (a quota
slot before its createTask is sent, a job before its producer is told it is accepted) the write and a
``WAIT`` go on one connection, so the count ``WAIT`` returns is of replicas holding that very write.
"""

from __future__ import annotations

import time
from typing import Any, Final, cast

import redis

#: How long the number of connected replicas (for ``replica_acks=-1``) is taken as known.
REPLICAS_RECHECK_S: Final = 10.0


class ReplicaAcks:
    """The acknowledgements to ask for: ``setting`` replicas, or with -1 (auto) one when the primary has
    a replica connected, else none (looked up at most every ``REPLICAS_RECHECK_S``)."""

    def __init__(self, client: redis.Redis, setting: int) -> None:
        self._redis = client
        self.setting = setting
        self._seen: tuple[float, int] = (-1e9, 0)

    def wanted(self) -> int:
        if self.setting >= 0:
            return self.setting
        at, count = self._seen
        now = time.monotonic()
        if now - at > REPLICAS_RECHECK_S:
            try:
                info = cast("dict[str, Any]", self._redis.info("replication"))
                count = int(info.get("connected_slaves", 0))
            except redis.RedisError:
                count = self._seen[1]
            self._seen = (now, count)
        return 1 if count > 0 else 0
