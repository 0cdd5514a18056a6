"""What a batch is at an instant: its record and its jobs' counts (``BatchStore.get``/``settle``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from core.jobs import JobState

#: State name counted for a batch job whose record is gone (expired or deleted by hand).
MISSING: Final = "missing"
#: Manifest ``state`` of a line that never became a job.
INVALID: Final = "invalid"
#: A line a budget had no room for: no job was made, nothing was spent (its ``error`` says which budget).
OVER_BUDGET: Final = "over_budget"


class BatchStatusValue:
    READING = "reading"
    SUBMITTED = "submitted"
    DONE = "done"


@dataclass
class BatchStatus:
    """A batch's record plus its job counts (live states as of the last :meth:`BatchStore.settle`)."""

    id: str
    name: str
    source: str
    results: str
    status: str
    level: int
    lines: int = 0
    good: int = 0
    bad: int = 0
    created: int = 0
    pending: int = 0
    #: Lines refused because a budget had no room for them (they cost nothing), and the batch's own budget.
    over_budget: int = 0
    budget: float | None = None
    #: Job state → jobs in it (terminal states exact; live states from the last settle, else absent).
    states: dict[str, int] = field(default_factory=dict)
    created_at: float = 0.0
    read_at: float | None = None
    finished_at: float | None = None
    manifest: str | None = None

    @property
    def finished(self) -> int:
        """Jobs counted terminal."""
        return sum(n for state, n in self.states.items() if state == MISSING or JobState(state).terminal)

    @property
    def done(self) -> bool:
        return self.status == BatchStatusValue.DONE

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "results": self.results,
            "status": self.status,
            "priority_level": self.level,
            "lines": self.lines,
            "good": self.good,
            "bad": self.bad,
            "created": self.created,
            "pending": self.pending,
            "over_budget": self.over_budget,
            "budget": self.budget,
            "states": dict(self.states),
            "created_at": self.created_at,
            "read_at": self.read_at,
            "finished_at": self.finished_at,
            "manifest": self.manifest,
        }

    @classmethod
    def from_hash(cls, batch_id: str, raw: dict[str, str], pending: int) -> BatchStatus:
        def number(name: str) -> int:
            return int(raw.get(name, 0))

        def moment(name: str) -> float | None:
            return float(raw[name]) if name in raw else None

        return cls(
            id=batch_id,
            name=raw.get("name", ""),
            source=raw.get("source", ""),
            results=raw.get("results", ""),
            status=raw.get("status", BatchStatusValue.READING),
            level=number("level"),
            lines=number("lines"),
            good=number("good"),
            bad=number("bad"),
            created=number("created"),
            pending=pending,
            over_budget=number("over_budget"),
            budget=float(raw["budget"]) if raw.get("budget") else None,
            states={name[2:]: int(n) for name, n in raw.items() if name.startswith("n:") and int(n)},
            created_at=float(raw.get("created_at", 0)),
            read_at=moment("read_at"),
            finished_at=moment("finished_at"),
            manifest=raw.get("manifest"),
        )
