"""What work costs: a dry run that prices requests or a whole file before anything is enqueued, and the
ledger's reports (``imagineq estimate``, ``imagineq costs``, ``POST /v1/estimate``, ``GET /v1/costs``).

An estimate checks the model and the fields that set the price (``duration``, ``resolution``,
``extend_times``; an upscale's parent: what it made) — the rest of a request is checked when it is
enqueued. In a batch file a line's ``parent`` may name an earlier line's ``id``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

from config.settings import Settings
from core.catalog import DEFAULT_MODEL, Catalog
from core.credits import CreditPolicy
from core.errors import ValidationError
from core.keys import Keys
from core.ledger import BudgetUse, Ledger
from workers.batch.lines import batch_header
from workers.intake import Intake


class Producer(Protocol):
    """What an estimate needs of a producer (``producers.api.Producer`` has it)."""

    settings: Settings
    catalog: Catalog
    redis: redis.Redis
    keys: Keys

    @property
    def intake(self) -> Intake: ...


@dataclass(frozen=True)
class ItemEstimate:
    index: int
    credits: float | None
    model: str | None = None
    #: A batch line's number and id.
    line: int | None = None
    id: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "model": self.model, "credits": self.credits}
        if self.line is not None:
            out.update(line=self.line, id=self.id)
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Estimate:
    items: list[ItemEstimate]
    #: The budgets the work would meet (the caller's, today), with what they have left.
    budgets: list[BudgetUse] = field(default_factory=list)
    #: A batch file's own budget (its header line).
    batch_budget: float | None = None

    @property
    def total(self) -> float:
        return round(sum(item.credits or 0.0 for item in self.items), 2)

    @property
    def errors(self) -> int:
        return sum(1 for item in self.items if item.error is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "items": [item.to_dict() for item in self.items],
            "errors": self.errors,
            "batch_budget": self.batch_budget,
            "budgets": [budget.to_dict() for budget in self.budgets],
        }


class Estimator:
    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._policy = CreditPolicy(producer.settings)

    def price(self, item: Any, *, owner: str | None, outputs: dict[str, str]) -> tuple[str, float]:
        """The model and estimate of one request (a mapping); ``outputs``: what earlier batch lines make,
        by their ``id`` (a line's ``parent`` may name one). ValidationError names a bad field."""
        if not isinstance(item, Mapping):
            raise ValidationError("request", f"must be an object (got {type(item).__name__})")
        spec = self._producer.catalog.spec(item.get("model") or DEFAULT_MODEL)
        priced = {spec.price.seconds_field, "resolution"}
        values: dict[str, Any] = {}
        for spec_field in spec.fields:
            if spec_field.name in priced:
                value = item.get(spec_field.name)
                values[spec_field.name] = spec_field.default if value is None else spec_field.check(value)
        parent_output = None
        parent = item.get("parent")
        if spec.parent is not None and parent is not None:
            if isinstance(parent, str) and parent in outputs:
                parent_output = outputs[parent]
            else:
                found = self._producer.intake.parent(spec, str(parent), owner=owner, index=item.get("index"))
                parent_output = found.spec.output_of(found.parent_output)
        if isinstance(item.get("id"), str):
            outputs[item["id"]] = spec.output_of(parent_output)
        return spec.short, self._policy.estimate(spec.short, values, parent_output)

    def requests(self, items: Sequence[Any], *, owner: str | None) -> Estimate:
        """Each request's estimate; a bad one is refused (ValidationError naming ``requests[i].field``)."""
        out: list[ItemEstimate] = []
        outputs: dict[str, str] = {}
        for index, item in enumerate(items):
            try:
                model, credits = self.price(item, owner=owner, outputs=outputs)
            except ValidationError as error:
                raise ValidationError(
                    f"requests[{index}].{error.field}", error.message, item=index, item_field=error.field
                ) from None
            out.append(ItemEstimate(index, credits, model))
        return Estimate(out, self.budgets(owner))

    def lines(self, lines: Iterable[tuple[int, bytes]], *, owner: str | None) -> Estimate:
        """A batch file's lines priced one by one; a bad line is reported, never stops the rest."""
        out: list[ItemEstimate] = []
        outputs: dict[str, str] = {}
        batch_budget = None
        for number, raw in lines:
            if number == 1 and (header := batch_header(raw)) is not None:
                batch_budget = header.get("budget")
                continue
            if not raw.strip():
                continue
            index = len(out)
            try:
                item = json.loads(raw)
            except ValueError as error:
                out.append(ItemEstimate(index, None, line=number, error=f"not JSON ({error})"))
                continue
            line_id = item.get("id") if isinstance(item, dict) else None
            try:
                model, credits = self.price(item, owner=owner, outputs=outputs)
            except ValidationError as error:
                out.append(ItemEstimate(index, None, line=number, id=line_id, error=str(error)))
                continue
            out.append(ItemEstimate(index, credits, model, line=number, id=line_id))
        return Estimate(out, self.budgets(owner), batch_budget=batch_budget)

    def file(self, path: Path, *, owner: str | None = None) -> Estimate:
        """A JSON file (one request, or a list) or a JSONL batch file."""
        data = path.read_bytes()
        stripped = data.lstrip()
        if stripped.startswith(b"["):
            return self.requests(json.loads(data), owner=owner)
        lines = [(number, raw.rstrip(b"\r")) for number, raw in enumerate(data.split(b"\n"), start=1)]
        if stripped.startswith(b"{") and len([raw for _, raw in lines if raw.strip()]) > 1:
            return self.lines(lines, owner=owner)
        if stripped.startswith(b"{"):
            return self.requests([json.loads(data)], owner=owner)
        return self.lines(lines, owner=owner)

    def budgets(self, owner: str | None) -> list[BudgetUse]:
        return Ledger(self._producer.redis, self._producer.keys).budgets(self._policy, owner)
