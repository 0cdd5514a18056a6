"""The Redis broker transport: kombu's, with one failure on a lost connection reported as what it is.

When a worker loses Redis, Celery closes the broker connection (ignoring connection errors) and opens a
new one. Closing the channel first tries to put the worker's unacknowledged messages back in their
queues; with the connection already released, kombu then reads its host from ``None`` and raises
``AttributeError``, which Celery does not expect there: the worker exits ("Unrecoverable error"), and a
worker being stopped fails the same way acknowledging its last messages. Seen in the chaos bench and in
celery/kombu#582, #970.

Here that case raises a Redis ``ConnectionError`` instead, one of the transport's connection errors, so
Celery ignores it and reconnects. The messages stay in the broker's unacked set and come back as usual:
at the next restore or after the visibility timeout (the reconciler re-drives their jobs sooner).
It is selected by the URL scheme: :func:`use_for_redis_urls` points kombu's ``redis`` and ``rediss``
aliases at it (``workers.celery`` does at import). Naming it in ``broker_transport`` instead would work
for the workers, but the connection's URL would then start with ``workers.broker:Transport://``, and
Flower, which picks its broker client for the Broker tab (queue lengths) by that scheme, answers
"'redis' broker is not supported".
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis

log = logging.getLogger("imagineq.broker")


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            log.warning("broker connection already closed: unacknowledged messages stay in Redis for later")
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """The same fix on kombu's Sentinel channel (the primary it connects to is the Sentinels' answer)."""


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


def use_for_redis_urls() -> None:
    """``redis://`` and ``rediss://`` broker URLs select this transport in this process, ``sentinel://``
    its Sentinel form."""
    for scheme in ("redis", "rediss"):
        kombu_transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
    kombu_transport.TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
