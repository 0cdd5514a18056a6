"""The events stream: one entry per job that ended and per batch done, read by ``GET /v1/events`` and
``imagineq watch``.

Entries are written where the change happens, in the same atomic step: a job's move into a terminal state
(``job_transition.lua``: ``job.stored``, ``job.failed``, ``job.expired``, ``job.canceled``) and a batch's
finalisation (``batch.completed``), and a workflow's end (``workflow.completed``, with its ``workflow`` id and
final ``state``: ``workflow_done.lua``), a budget filling up (``budget.warning``: ``budget``, ``limit``, ``used``,
``core/lua/ledger.lua``) and an account low on credits (``account.low_balance``: ``account``, ``balance``,
``threshold``, ``balance_record.lua``). Each has ``type``, ``job``, ``batch``, ``owner`` and ``at`` (Redis
clock, seconds); its stream id orders it and is the id a reader resumes from. The stream keeps about
``Settings.events_max_len`` entries; a reader asking to resume from before the oldest one kept is told
it missed some.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

EVENT_ID_PATTERN: Final = r"^[0-9]{1,20}-[0-9]{1,20}$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
#: The fields of a ``budget.warning`` or ``account.low_balance`` entry beyond the common ones.
DETAIL_FIELDS: Final = ("budget", "limit", "used", "account", "balance", "threshold")
#: The event a reader gets when the entries after the id it resumes from were trimmed.
EVENTS_LOST: Final = "events-lost"


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    job_id: str | None
    batch_id: str | None
    owner: str | None
    at: float
    workflow_id: str | None = None
    #: A workflow's final state (``workflow.completed`` only).
    state: str | None = None
    #: What a budget or balance event says (its :data:`DETAIL_FIELDS`), as written.
    details: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, entry_id: str, fields: dict[str, str]) -> Event:
        return cls(
            id=entry_id,
            type=fields.get("type", ""),
            job_id=fields.get("job") or None,
            batch_id=fields.get("batch") or None,
            owner=fields.get("owner") or None,
            at=float(fields.get("at") or 0),
            workflow_id=fields.get("workflow") or None,
            state=fields.get("state") or None,
            details={name: fields[name] for name in DETAIL_FIELDS if name in fields},
        )

    def matches(self, *, batch: str | None, job: str | None, owner: str | None) -> bool:
        """For a reader filtering by batch and/or job, and one who may see ``owner``'s only (None: all)."""
        if batch is not None and self.batch_id != batch:
            return False
        if job is not None and self.job_id != job:
            return False
        mine = self.job_id is not None or self.workflow_id is not None or self.type == "budget.warning"
        return owner is None or (self.owner == owner and mine)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "job_id": self.job_id,
            "batch_id": self.batch_id,
            "at": self.at,
        }
        if self.workflow_id is not None:
            out.update(workflow_id=self.workflow_id, state=self.state)
        out.update(self.details)
        return out


def valid_event_id(text: str) -> bool:
    return bool(_EVENT_ID.match(text))


def older(first: str, second: str) -> bool:
    """Stream id ``first`` comes before ``second``."""
    a, _, b = first.partition("-")
    c, _, d = second.partition("-")
    return (int(a), int(b)) < (int(c), int(d))
