"""uvicorn's HTTP protocol with deadlines on reading a request and a cap on each client's connections
(``uvicorn --http producers.web.protocol:GuardedProtocol``).

uvicorn times out idle keep-alive connections, but not a client that holds a connection open while it
sends almost nothing: its request line and headers a byte at a time, or a body it announced and never
finishes. Each such connection holds a place of ``--limit-concurrency``, and when they are all taken every
request answers 503, ``/healthz`` included. So:

- every request's headers must be complete within ``web_header_timeout_s`` of the connection opening (or
  of the previous response ending), and its body within ``web_body_timeout_s`` of its headers; otherwise
  the connection is closed;
- one client address may hold at most ``web_max_connections_per_client`` connections to this process;
  a connection past that is answered 503 and closed at once, before anything is read. Addresses in
  ``web_trusted_proxies`` are exempt: every client of a proxy comes from the proxy's address (limit those
  at the proxy).

Counts are per process (each web replica holds its own connections).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config.settings import Settings, get_settings

_REFUSED_BODY = b'{"detail":"too many connections from this address (web_max_connections_per_client)"}'
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: 5\r\ncontent-length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY
)


class ClientLimits:
    """The open connections of each client address in this process, and who is exempt."""

    def __init__(self, settings: Settings) -> None:
        self.per_client = settings.web_max_connections_per_client
        self.header_timeout_s = settings.web_header_timeout_s
        self.body_timeout_s = settings.web_body_timeout_s
        self._trusted = [ipaddress.ip_network(network, strict=False) for network in settings.web_trusted_proxies]
        self.open: Counter[str] = Counter()

    def exempt(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)


class GuardedProtocol(HttpToolsProtocol):  # type: ignore[misc]
    limits: ClassVar[ClientLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if GuardedProtocol.limits is None:
            GuardedProtocol.limits = ClientLimits(get_settings())
        self._limits = GuardedProtocol.limits
        self._deadline: asyncio.TimerHandle | None = None
        self._counted: str | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        limits = self._limits
        if host and not limits.exempt(host):
            if limits.open[host] >= limits.per_client:
                self._refused = True
                transport.write(_REFUSED)
                transport.close()
                return
            limits.open[host] += 1
            self._counted = host
        super().connection_made(transport)
        self._arm(limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._counted is not None:
            self._limits.open[self._counted] -= 1
            if self._limits.open[self._counted] <= 0:
                del self._limits.open[self._counted]
            self._counted = None
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def on_headers_complete(self) -> None:
        self._arm(self._limits.body_timeout_s)  # the body (if any) has its own deadline from here
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self._limits.header_timeout_s)  # the next request on this connection

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()
