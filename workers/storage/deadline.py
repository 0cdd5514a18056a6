"""A transfer deadline: a minimum throughput over a sliding window, and a total time limit.

The per-read timeout alone lets a server that sends one byte every few seconds hold a store slot for as
long as it likes. A watchdog thread looks at the transfer's progress a few times a window; when the
transfer is too slow, or past its deadline, it shuts the connection's socket (which ends a read blocked
in another thread) and the stream raises :class:`TransferTooSlow` instead of yielding more, or ending as
if complete, so no object is committed.
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._abort = abort
        self._min_bytes = min_bytes_per_s * window_s
        self._window_s = window_s
        self._deadline_s = deadline_s
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
            total = self._bytes
        if now - self._started > self._deadline_s:
            self._trip(f"transfer took longer than its deadline of {self._deadline_s:.0f} s")
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
