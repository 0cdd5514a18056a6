"""Callback delivery: POST the terminal task to its callBackUrl, signed, retried, maybe twice.

Signature (when an HMAC key is set): ``X-Webhook-Timestamp`` = unix seconds and
``X-Webhook-Signature`` = base64(HMAC-SHA256(key, f"{taskId}.{timestamp}")).
Retries follow a failed attempt (non-2xx or transport error) after ``callback_backoff_s * 2**i``
simulated seconds; each attempt has ``callback_timeout_s`` wall seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import aiohttp

from simulator.state import SimState
from simulator.tasks import Task, TaskState

log = logging.getLogger(__name__)

USER_AGENT = "Apikley-Webhook/1.0 (imagineq-simulator)"


def sign(hmac_key: str, task_id: str, timestamp: str) -> str:
    """The X-Webhook-Signature value for ``task_id`` at ``timestamp`` (unix seconds as text)."""
    digest = hmac.new(hmac_key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def callback_body(state: SimState, task: Task) -> dict[str, Any]:
    now = max(state.clock(), task.complete_at)
    data = task.record(now, state.result_urls(task, now))
    if task.final_state is TaskState.SUCCESS:
        return {"code": 200, "msg": "Playground task completed successfully.", "data": data}
    return {"code": 501, "msg": f"generation failed: {task.fail_msg}", "data": data}


class CallbackSender:
    """Schedules one delivery per terminal task that has a callBackUrl."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._session: aiohttp.ClientSession | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._running: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200), headers={"User-Agent": USER_AGENT}
        )

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for running in list(self._running):
            running.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def schedule(self, task: Task) -> None:
        """Fire the delivery at the task's completion time, whether or not anyone polls."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, task.complete_at - self.state.clock())
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            if timer is not None:
                self._timers.discard(timer)
            running = loop.create_task(self.deliver(task))
            self._running.add(running)
            running.add_done_callback(self._running.discard)

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    async def deliver(self, task: Task) -> None:
        state = self.state
        if state.tasks.get(task.task_id) is not task:  # reset since creation
            return
        if state.options.drop_callbacks:
            task.callback_status = "dropped"
            state.stats.callbacks_dropped += 1
            return
        task.callback_status = "pending"
        delivered = await self._deliver_with_retries(task)
        if delivered and state.rng.random() < state.options.callback_duplicates:
            state.stats.callbacks_duplicated += 1
            await self._deliver_with_retries(task)

    async def _deliver_with_retries(self, task: Task) -> bool:
        opts = self.state.options
        for attempt in range(opts.callback_retries + 1):
            if attempt:
                await asyncio.sleep(opts.wall(opts.callback_backoff_s * 2 ** (attempt - 1)))
            if await self._attempt(task):
                task.callback_status = "delivered"
                return True
        task.callback_status = "failed"
        self.state.stats.callbacks_abandoned += 1
        return False

    async def _attempt(self, task: Task) -> bool:
        assert self._session is not None, "CallbackSender.start() not awaited"
        assert task.callback_url is not None
        stats = self.state.stats
        opts = self.state.options
        body = json.dumps(callback_body(self.state, task))
        headers = {"Content-Type": "application/json"}
        if opts.hmac_key is not None:
            timestamp = str(int(time.time()))
            headers["X-Webhook-Timestamp"] = timestamp
            headers["X-Webhook-Signature"] = sign(opts.hmac_key, task.task_id, timestamp)
        stats.callbacks_sent += 1
        task.callback_attempts += 1
        try:
            async with self._session.post(
                task.callback_url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=opts.callback_timeout_s),
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError) as e:
            log.info("callback %s to %s failed: %r", task.task_id, task.callback_url, e)
            ok = False
        if ok:
            stats.callbacks_delivered += 1
        else:
            stats.callbacks_failed += 1
        return ok
