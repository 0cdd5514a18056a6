"""A transfer deadline: the response's headers in time, a minimum throughput over a sliding window, and a
total time limit.

The per-read timeout alone lets a server that sends one byte every few seconds hold a store slot for as
long as it likes, whether it drips its headers or its body. A watchdog thread, started before the request,
looks at the transfer a few times a window; when the headers have not come within ``headers_deadline_s``,
or the body is too slow, or the whole transfer is past its deadline, it aborts (shuts the sockets of the
transfer, which ends a read blocked in another thread: :mod:`workers.socket_watch`) and the stream raises
:class:`TransferTooSlow` instead of yielding more, or ending as if complete, so no object is committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType

from workers.streams import StreamError


class TransferTooSlow(StreamError):
    """The transfer fell below its minimum throughput or passed its deadline."""


class TransferWatchdog:
    """Watches one transfer; :meth:`stream` passes its chunks through and counts them."""

    def __init__(
        self,
        abort: Callable[[], None],
        *,
        min_bytes_per_s: int,
        window_s: float,
        deadline_s: float,
        headers_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``headers_deadline_s``: until :meth:`headers_received`, the transfer must get its headers
        within this long of starting (None: no such phase; the throughput is watched from the start)."""
        self._abort = abort
        self._min_bytes = min_bytes_per_s * window_s
        self._window_s = window_s
        self._deadline_s = deadline_s
        self._headers_deadline_s = headers_deadline_s
        self._headers = headers_deadline_s is None
        self._clock = clock
        self._bytes = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why the transfer was ended; None while it may go on.
        self.tripped: str | None = None

    def __enter__(self) -> TransferWatchdog:
        self._started = self._window_start = self._clock()
        self._window_bytes = 0
        self._thread = threading.Thread(target=self._watch, name="transfer-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def headers_received(self) -> None:
        """The response's headers are in: from now on its body's throughput is watched."""
        with self._lock:
            self._headers = True
            self._window_start, self._window_bytes = self._clock(), self._bytes

    def stream(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks``, counted; raises :class:`TransferTooSlow` once the watchdog has tripped."""
        for chunk in chunks:
            self._check()
            with self._lock:
                self._bytes += len(chunk)
            yield chunk
        self._check()  # a socket shut by the watchdog ends the body early: that is no clean end

    def check_now(self) -> None:
        """One look at the transfer (the thread does this a few times a window)."""
        now = self._clock()
        with self._lock:
            total, headers = self._bytes, self._headers
        if now - self._started > self._deadline_s:
            self._trip(f"transfer took longer than its deadline of {self._deadline_s:.0f} s")
        elif not headers:
            if self._headers_deadline_s is not None and now - self._started > self._headers_deadline_s:
                self._trip(f"no response headers within {self._headers_deadline_s:g} s")
        elif now - self._window_start >= self._window_s:
            moved = total - self._window_bytes
            if moved < self._min_bytes:
                self._trip(
                    f"transfer too slow: {moved} bytes in {now - self._window_start:.0f} s "
                    f"(minimum {self._min_bytes / self._window_s:.0f} bytes/s)"
                )
            self._window_start, self._window_bytes = now, total

    def _watch(self) -> None:
        interval = max(0.05, min(1.0, self._window_s / 4))
        while not self._done.wait(interval) and self.tripped is None:
            self.check_now()

    def _trip(self, reason: str) -> None:
        if self.tripped is None:
            self.tripped = reason
            self._abort()

    def _check(self) -> None:
        if self.tripped is not None:
            raise TransferTooSlow(self.tripped)
