"""Per-key quotas: a sliding creation log and the set of tasks in progress.

Both are O(1) amortised per call: the log is a deque pruned from the left, the in-progress set
is a min-heap of completion times popped as tasks finish. Times are wall-clock seconds.
"""

from __future__ import annotations

import heapq
from collections import deque


class SlidingWindowLog:
    """Timestamps of the creations inside the last ``window`` seconds."""

    def __init__(self) -> None:
        self._log: deque[float] = deque()

    def prune(self, now: float, window: float) -> None:
        cutoff = now - window
        while self._log and self._log[0] <= cutoff:
            self._log.popleft()

    def count(self, now: float, window: float) -> int:
        self.prune(now, window)
        return len(self._log)

    def record(self, now: float) -> None:
        self._log.append(now)

    def seconds_until_free(self, now: float, window: float) -> float:
        """Wall seconds until the oldest entry leaves the window (0 if the log is empty)."""
        self.prune(now, window)
        if not self._log:
            return 0.0
        return max(0.0, self._log[0] + window - now)

    def clear(self) -> None:
        self._log.clear()


class InProgressSet:
    """Tasks created but not yet terminal, keyed by their completion time."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []

    def prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            heapq.heappop(self._heap)

    def count(self, now: float) -> int:
        self.prune(now)
        return len(self._heap)

    def add(self, complete_at: float, task_id: str) -> None:
        heapq.heappush(self._heap, (complete_at, task_id))

    def seconds_until_free(self, now: float) -> float:
        """Wall seconds until the next task completes (0 if none is in progress)."""
        self.prune(now)
        if not self._heap:
            return 0.0
        return max(0.0, self._heap[0][0] - now)

    def clear(self) -> None:
        self._heap.clear()
