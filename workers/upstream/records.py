"""What the upstream says about a task: its state and its record (recordInfo ``data`` or a callback's
``data``), parsed strictly: a garbled answer is a retryable "bad response", never a ``KeyError``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from core.errors import TransportError
from workers.upstream.answers import RECORD_INFO


class TaskState(StrEnum):
    """Upstream task state, as recordInfo and callbacks report it."""

    #: Accepted, not yet queued.
    WAITING = "waiting"
    #: Queued for a generator.
    QUEUING = "queuing"
    #: Being generated.
    GENERATING = "generating"
    #: Done; ``resultJson`` holds the result URLs (valid 24 h).
    SUCCESS = "success"
    #: Done without a result; ``failCode``/``failMsg`` say why.
    FAIL = "fail"

    @property
    def terminal(self) -> bool:
        """True once the task will not change any more (its in-progress slot is free)."""
        return self in (TaskState.SUCCESS, TaskState.FAIL)


@dataclass(frozen=True)
class TaskRecord:
    """What the upstream knows about one task (recordInfo ``data`` or a callback's ``data``)."""

    task_id: str
    state: TaskState
    result_urls: tuple[str, ...]
    fail_code: str
    fail_msg: str
    cost_time_ms: int | None
    create_time_ms: int | None
    complete_time_ms: int | None
    update_time_ms: int | None
    #: The credits the task consumed, when the record says (undocumented for these models: None otherwise).
    consumed_credits: float | None = None

    @classmethod
    def from_payload(cls, data: Mapping[str, Any], *, endpoint: str = RECORD_INFO) -> TaskRecord:
        """Parse ``data``; accepts ``taskId`` or ``task_id``, ``resultJson`` as a JSON string or a dict.

        A missing or garbled task id, state or result raises :class:`TransportError` ("bad
        response", retryable), never ``KeyError``. Optional numbers that do not parse become None.
        """

        def bad(what: str) -> TransportError:
            return TransportError(f"bad response: {what}", endpoint=endpoint)

        if not isinstance(data, Mapping):
            raise bad(f"data is {type(data).__name__}, not an object")
        raw_id = data.get("taskId") or data.get("task_id")
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            raw_id = str(raw_id)
        if not isinstance(raw_id, str) or not raw_id.strip():
            raise bad("no taskId")
        raw_state = data.get("state")
        if raw_state is None or raw_state == "":
            raise bad("no state")  # not "unknown state 'None'"
        try:
            state = TaskState(str(raw_state).strip().lower())
        except ValueError:
            raise bad(f"unknown state {str(raw_state)[:40]!r}") from None
        fail_code = data.get("failCode")
        fail_msg = data.get("failMsg")
        return cls(
            task_id=raw_id.strip(),
            state=state,
            result_urls=_result_urls(data.get("resultJson"), bad),
            fail_code="" if fail_code is None else str(fail_code),
            fail_msg="" if fail_msg is None else str(fail_msg),
            cost_time_ms=optional_int(data.get("costTime")),
            create_time_ms=optional_int(data.get("createTime")),
            complete_time_ms=optional_int(data.get("completeTime")),
            update_time_ms=optional_int(data.get("updateTime")),
            consumed_credits=_consumed_credits(data),
        )


#: Where a record may carry the credits its task consumed: none is documented for these models, and the
#: market API's other models use these names; the first present and sane one is taken.
CONSUMED_CREDITS_FIELDS: Final = ("consumeCredits", "creditsConsumed", "costCredits", "credits")
#: A figure above this is not believed (no task of the family costs near it).
CONSUMED_CREDITS_MAX: Final = 10_000.0


def _consumed_credits(data: Mapping[str, Any]) -> float | None:
    for name in CONSUMED_CREDITS_FIELDS:
        value = optional_number(data.get(name))
        if value is not None and 0 <= value <= CONSUMED_CREDITS_MAX:
            return round(value, 2)
    return None


def optional_number(value: Any) -> float | None:
    """A finite number the upstream wrote as a number or a string; anything else (bools too) is None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def optional_int(value: Any) -> int | None:
    """An integer the upstream wrote as a number or a string; anything else (bools too) is None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _result_urls(raw: Any, bad: Callable[[str], TransportError]) -> tuple[str, ...]:
    """``resultJson`` → its ``resultUrls``; empty (None, "", {}) means no result yet."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise bad("resultJson is not JSON") from None
    if not isinstance(raw, Mapping):
        raise bad("resultJson is not an object")
    urls = raw.get("resultUrls", [])
    if urls is None:
        return ()
    if not isinstance(urls, list) or not all(isinstance(url, str) and url for url in urls):
        raise bad("resultUrls is not a list of URLs")
    return tuple(urls)
