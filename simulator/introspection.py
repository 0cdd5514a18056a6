"""What the simulator shows of itself: its counters and peaks, per key and per pool, and its task list."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from simulator.accounts import Account
from simulator.quota import InProgressSet
from simulator.stats import Stats, key_stats_json
from simulator.tasks import Task


class SimState(Protocol):
    """What is shown of the simulator's state (``simulator.state.SimState`` has it)."""

    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def accounts(self) -> Mapping[str, Account]: ...
    @property
    def in_progress(self) -> InProgressSet: ...
    @property
    def tasks(self) -> Mapping[str, Task]: ...


def snapshot(state: SimState) -> dict[str, Any]:
    now = state.clock()
    s = state.stats
    per_key: dict[str, Any] = {}
    for account in state.accounts.values():
        entry = key_stats_json(s.key(account.key_id))
        entry["in_progress"] = account.in_progress.count(now)
        entry["in_progress_by_pool"] = {name: pool.in_progress.count(now) for name, pool in account.pools.items()}
        entry["credits"] = account.credits
        per_key[account.key_id] = entry
    pools: dict[str, dict[str, int]] = {}
    for ks in s.per_key.values():
        for name, ps in ks.pools.items():
            agg = pools.setdefault(name, {"created": 0, "peak_in_progress": 0, "max_creations_in_window": 0})
            agg["created"] += ps.created
            agg["peak_in_progress"] = max(agg["peak_in_progress"], ps.peak_in_progress)
            agg["max_creations_in_window"] = max(agg["max_creations_in_window"], ps.max_creations_in_window)
    return {
        "in_progress": state.in_progress.count(now),
        "peak_in_progress": s.peak_in_progress,
        "max_creations_in_window": max((ks.max_creations_in_window for ks in s.per_key.values()), default=0),
        "create_calls": s.create_calls,
        "created": s.created,
        "rate_limited": s.rate_limited,
        "record_info_calls": s.record_info_calls,
        "record_info_rate_limited": sum(ks.record_info_rate_limited for ks in s.per_key.values()),
        "max_record_info_per_s": max((ks.max_record_info_per_s for ks in s.per_key.values()), default=0),
        "record_info_per_task": dict(s.record_info_per_task),
        "callbacks_sent": s.callbacks_sent,
        "callbacks_delivered": s.callbacks_delivered,
        "callbacks_failed": s.callbacks_failed,
        "callbacks_abandoned": s.callbacks_abandoned,
        "callbacks_dropped": s.callbacks_dropped,
        "callbacks_duplicated": s.callbacks_duplicated,
        "downloads": s.downloads,
        "bytes_served": s.bytes_served,
        "download_urls_issued": s.download_urls_issued,
        "forced_errors": s.forced_errors,
        "errors_by_code": {str(c): n for c, n in sorted(s.errors_by_code.items())},
        "tasks": len(state.tasks),
        "uploads": s.uploads,
        "max_create_requests_in_window": max(
            (ks.max_create_requests_in_window for ks in s.per_key.values()), default=0
        ),
        "pools": pools,
        "per_key": per_key,
    }


def task_list(state: SimState) -> list[dict[str, Any]]:
    now = state.clock()
    return [
        {
            "taskId": t.task_id,
            "key_id": t.key_id,
            "state": t.state_at(now).value,
            "createTime": int(t.created_at * 1000),
            "completeTime": int(t.complete_at * 1000),
            "failCode": t.fail_code,
            "callBackUrl": t.callback_url,
            "callback_status": t.callback_status,
            "callback_attempts": t.callback_attempts,
            "record_info_calls": t.record_info_calls,
            "video_bytes": t.video_bytes,
            "model": t.model,
            "pool": t.pool,
            "outputs": t.outputs,
            "credits": t.credits,
            "param": t.param,
        }
        for t in state.tasks.values()
    ]
