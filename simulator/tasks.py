"""A simulated generation task: its fate is drawn at creation, its state derives from the clock."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any


class TaskState(enum.StrEnum):
    WAITING = "waiting"  #: accepted, first 10% of the generation time
    QUEUING = "queuing"  #: next 10%
    GENERATING = "generating"  #: the rest, until completion
    SUCCESS = "success"  #: terminal, result URL available
    FAIL = "fail"  #: terminal, failCode/failMsg set

    @property
    def terminal(self) -> bool:
        return self in (TaskState.SUCCESS, TaskState.FAIL)


#: Fractions of the generation time at which the task leaves waiting, then queuing.
WAITING_END = 0.1
QUEUING_END = 0.2


@dataclass
class Task:
    task_id: str
    key_id: str
    model: str
    param: dict[str, Any]
    callback_url: str | None
    created_at: float  #: wall seconds (epoch)
    complete_at: float  #: wall seconds (epoch) at which the task becomes terminal
    cost_ms: int  #: drawn generation time, simulated milliseconds
    #: 0: the result is the playable clip of its aspect ratio and mode; else that many pseudo-random bytes
    video_bytes: int
    url_ttl_wall_s: float
    #: Credits the task cost (taken from the balance when it was created).
    credits: float = 0.0
    #: Whether its record reports ``consumeCredits`` (the upstream does not document it for these models).
    report_credits: bool = False
    aspect_ratio: str = "2:3"
    mode: str = "normal"
    #: The model's quota pool, what the task makes, and how many files it returns.
    pool: str = "text-to-video"
    kind: str = "video"
    resolution: str = "480p"
    duration_s: int = 6
    outputs: int = 1
    #: png or jpeg, for an image task
    image_format: str = "png"
    #: The ball's colour in its files (``clips.PALETTE``): its parent's for a derived task.
    colour: int = 0
    fail_code: str = ""  #: empty for a task that will succeed
    fail_msg: str = ""
    record_info_calls: int = 0
    #: none | pending | delivered | failed | dropped
    callback_status: str = "none"
    callback_attempts: int = 0

    @property
    def final_state(self) -> TaskState:
        return TaskState.FAIL if self.fail_code else TaskState.SUCCESS

    def state_at(self, now: float) -> TaskState:
        if now >= self.complete_at:
            return self.final_state
        fraction = (now - self.created_at) / (self.complete_at - self.created_at)
        if fraction < WAITING_END:
            return TaskState.WAITING
        if fraction < QUEUING_END:
            return TaskState.QUEUING
        return TaskState.GENERATING

    def updated_at(self, now: float) -> float:
        """Wall time of the latest state change at ``now``."""
        if now >= self.complete_at:
            return self.complete_at
        span = self.complete_at - self.created_at
        for boundary in (QUEUING_END, WAITING_END):
            t = self.created_at + boundary * span
            if now >= t:
                return t
        return self.created_at

    @property
    def url_expires_at(self) -> float:
        return self.complete_at + self.url_ttl_wall_s

    @property
    def extension(self) -> str:
        if self.kind == "video":
            return "mp4"
        return "jpg" if self.image_format == "jpeg" else "png"

    @property
    def content_type(self) -> str:
        if self.kind == "video":
            return "video/mp4"
        return "image/jpeg" if self.image_format == "jpeg" else "image/png"

    def record(self, now: float, result_urls: list[str]) -> dict[str, Any]:
        """The ``data`` object of recordInfo (and of the callback body)."""
        state = self.state_at(now)
        terminal = state.terminal
        result_json = ""
        if state is TaskState.SUCCESS and result_urls:
            result_json = json.dumps({"resultUrls": result_urls})
        return {
            "taskId": self.task_id,
            "model": self.model,
            "state": state.value,
            "param": json.dumps(self.param),
            "resultJson": result_json,
            "failCode": self.fail_code if state is TaskState.FAIL else "",
            "failMsg": self.fail_msg if state is TaskState.FAIL else "",
            "costTime": self.cost_ms if terminal else None,
            "createTime": _ms(self.created_at),
            "completeTime": _ms(self.complete_at) if terminal else None,
            "updateTime": _ms(self.updated_at(now)),
            **({"consumeCredits": self.credits} if self.report_credits and terminal else {}),
        }


def _ms(t: float) -> int:
    return int(t * 1000)
