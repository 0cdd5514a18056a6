"""A total deadline on an outbound HTTP attempt, however the other side drips its bytes.

``requests`` and urllib3 time each connect and each read, never a whole exchange: a server that sends a
byte of its headers every few seconds resets the read timeout with each one and can hold the caller for
as long as it likes. A :class:`SocketWatch` collects the sockets its thread sends and reads through while
it is active (the connections of :func:`watched_adapter` sessions register themselves: a new connection
when it is made, a pooled one at each request), and :meth:`SocketWatch.shut` shuts them all down from any
thread, which ends a read blocked on them at once. A :class:`Deadline` is a watch that shuts itself
after a number of seconds; the transfer watchdog of result downloads drives one by throughput too.

A socket registered after the watch was shut is shut at once, so a connection made just too late never
gets through.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Any, ClassVar

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


def _shut_socket(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class SocketWatch:
    """The sockets this thread uses while the watch is active; :meth:`shut` ends every exchange on them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[Any] = []
        self._outer: SocketWatch | None = None
        #: True once :meth:`shut` ran: every exchange under the watch has failed or will.
        self.shut_down = False

    @staticmethod
    def current() -> SocketWatch | None:
        watch: SocketWatch | None = getattr(_local, "watch", None)
        return watch

    def __enter__(self) -> SocketWatch:
        self._outer = SocketWatch.current()
        _local.watch = self
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        _local.watch = self._outer
        with self._lock:
            self._sockets.clear()

    def watch(self, sock: Any) -> None:
        with self._lock:
            if not self.shut_down:
                self._sockets.append(sock)
                return
        _shut_socket(sock)

    def shut(self) -> None:
        with self._lock:
            self.shut_down = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut_socket(sock)


class Deadline(SocketWatch):
    """A :class:`SocketWatch` that shuts itself ``seconds`` after it was entered."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Deadline:
        super().__enter__()
        self._timer = threading.Timer(self.seconds, self.shut)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().__exit__(kind, error, tb)

    @property
    def passed(self) -> bool:
        return self.shut_down


def watch_socket(sock: Any) -> None:
    """Register ``sock`` with this thread's active watch, if any."""
    watch = SocketWatch.current()
    if watch is not None:
        watch.watch(sock)


class WatchedConnectionMixin:
    """For urllib3 connection classes: register the socket with the thread's watch, when the connection
    is made and again at each request on a pooled connection."""

    sock: Any

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        watch_socket(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> Any:
        if self.sock is not None:
            watch_socket(self.sock)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class WatchedHTTPConnection(WatchedConnectionMixin, HTTPConnection):
    pass


class WatchedHTTPSConnection(WatchedConnectionMixin, HTTPSConnection):
    pass


def use_connection_classes(adapter: HTTPAdapter, http_conn: type, https_conn: type) -> None:
    """Make ``adapter``'s pools use these connection classes (after its pool manager exists)."""
    http_pool = type("WatchedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("WatchedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
    adapter.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}


class WatchedAdapter(HTTPAdapter):
    """A requests adapter whose connections register with the thread's :class:`SocketWatch`."""

    connection_classes: ClassVar[tuple[type, type]] = (WatchedHTTPConnection, WatchedHTTPSConnection)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        use_connection_classes(self, *self.connection_classes)
