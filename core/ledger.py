"""Reading the credits ledger (:mod:`core.credits` writes it): costs grouped by principal, model, account,
batch, workflow or day over a range of UTC days, and how much of each budget is used."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

import redis

from core.credits import NO_PRINCIPAL, CreditPolicy, from_centi, utc_day
from core.jobstore_args import text
from core.keys import Keys

By = Literal["principal", "model", "account", "batch", "workflow", "day"]
GROUPINGS: Final[tuple[By, ...]] = ("principal", "model", "account", "batch", "workflow", "day")
#: A report covers at most this many days (one hash read per day).
MAX_DAYS: Final = 400
_DIMENSION: Final = {"model": "m:", "account": "a:", "batch": "b:", "workflow": "w:"}


@dataclass(frozen=True)
class CostRow:
    key: str
    charged: float
    reserved: float

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "charged": self.charged, "reserved": self.reserved}


@dataclass(frozen=True)
class BudgetUse:
    """One budget of a principal (or everyone's daily cap): its limit (None: none) and what it holds."""

    budget: str
    period: str
    limit: float | None
    charged: float
    reserved: float

    @property
    def left(self) -> float | None:
        return None if self.limit is None else round(self.limit - self.charged - self.reserved, 2)

    def to_dict(self) -> dict[str, object]:
        return {
            "budget": self.budget,
            "period": self.period,
            "limit": self.limit,
            "charged": self.charged,
            "reserved": self.reserved,
            "left": self.left,
        }


@dataclass(frozen=True)
class CostReport:
    """What ``imagineq costs`` and ``GET /v1/costs`` show: the grouped rows, their totals, the budgets."""

    by: By
    since: str
    until: str
    rows: list[CostRow]
    budgets: list[BudgetUse]

    @property
    def charged(self) -> float:
        return round(sum(row.charged for row in self.rows), 2)

    @property
    def reserved(self) -> float:
        return round(sum(row.reserved for row in self.rows), 2)

    def to_dict(self) -> dict[str, object]:
        return {
            "by": self.by,
            "since": self.since,
            "until": self.until,
            "rows": [row.to_dict() for row in self.rows],
            "charged": self.charged,
            "reserved": self.reserved,
            "budgets": [budget.to_dict() for budget in self.budgets],
        }


def parse_day(value: str, *, field: str = "day", today: str | None = None) -> str:
    """``YYYY-MM-DD``, or ``Nd`` (N days before today, UTC); ValueError naming ``field`` otherwise."""
    value = value.strip()
    if value.endswith("d") and value[:-1].isdigit():
        base = dt.date.fromisoformat(today or utc_day())
        return (base - dt.timedelta(days=int(value[:-1]))).isoformat()
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"{field}: must be a UTC day, YYYY-MM-DD, or Nd: N days ago (got {value[:40]!r})") from None


def days_between(since: str, until: str) -> list[str]:
    first, last = dt.date.fromisoformat(since), dt.date.fromisoformat(until)
    if last < first:
        raise ValueError(f"the range ends ({until}) before it starts ({since})")
    count = (last - first).days + 1
    if count > MAX_DAYS:
        raise ValueError(f"at most {MAX_DAYS} days at once (asked for {count})")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


class Ledger:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys

    def _days(self, days: Sequence[str]) -> list[dict[str, int]]:
        with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(self._keys.ledger_day(day))
            replies = cast("list[dict[bytes | str, bytes | str]]", pipe.execute())
        out = []
        for reply in replies:
            fields = {text(k): text(v) for k, v in reply.items()}
            out.append({name: int(value) for name, value in fields.items() if not name.startswith("warned|")})
        return out

    def costs(self, by: By, since: str, until: str, *, principal: str | None = None) -> list[CostRow]:
        """Charged and reserved credits over the UTC days ``since``..``until`` grouped ``by``, most charged
        first; ``principal``: that principal's only (None: everyone's)."""
        days = days_between(since, until)
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for day, fields in zip(days, self._days(days), strict=True):
            for name, amount in fields.items():
                kind, who, dimension = name.split("|", 2)
                if who == "*" or (principal is not None and who != principal):
                    continue
                slot = 0 if kind == "c" else 1
                if by == "principal" and dimension == "t":
                    sums[who][slot] += amount
                elif by == "day" and dimension == "t":
                    sums[day][slot] += amount
                elif by in _DIMENSION and dimension.startswith(_DIMENSION[by]):
                    sums[dimension[2:]][slot] += amount
        rows = [CostRow(key, from_centi(c), from_centi(r)) for key, (c, r) in sums.items() if c or r]
        if by == "day":
            return sorted(rows, key=lambda row: row.key)
        return sorted(rows, key=lambda row: (-row.charged, -row.reserved, row.key))

    def report(
        self, policy: CreditPolicy, by: By, since: str, until: str, *, principal: str | None = None
    ) -> CostReport:
        """:meth:`costs` with ``principal``'s budgets today (None: jobs of no principal)."""
        rows = self.costs(by, since, until, principal=principal)
        return CostReport(by, since, until, rows, self.budgets(policy, principal))

    def batch(self, batch_id: str) -> CostRow:
        raw = cast("dict[bytes | str, bytes | str]", self._redis.hgetall(self._keys.ledger_batch(batch_id)))
        values = {text(k): text(v) for k, v in raw.items()}
        return CostRow(batch_id, from_centi(values.get("c", "0")), from_centi(values.get("r", "0")))

    def budgets(self, policy: CreditPolicy, principal: str | None, *, day: str | None = None) -> list[BudgetUse]:
        """The budgets ``principal`` (None: jobs of no principal) meets today, and everyone's daily cap."""
        day = day or utc_day()
        who = principal or NO_PRINCIPAL
        limits = policy.budgets(principal)
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._keys.ledger_day(day), [f"c|{who}|t", f"r|{who}|t", "c|*|t", "r|*|t"])
            pipe.hmget(self._keys.ledger_month(day[:7]), [f"c|{who}|t", f"r|{who}|t"])
            today, month = pipe.execute()
        amount = [from_centi(value or "0") for value in [*today, *month]]
        return [
            BudgetUse("principal_day", day, limits.principal_day, amount[0], amount[1]),
            BudgetUse("principal_month", day[:7], limits.principal_month, amount[4], amount[5]),
            BudgetUse("global_day", day, limits.global_day, amount[2], amount[3]),
        ]

    def totals(self) -> dict[str, float]:
        """Every credit since the deployment began: ``c|*|m:<model>``... as credits (the metrics)."""
        raw = cast("dict[bytes | str, bytes | str]", self._redis.hgetall(self._keys.ledger_total()))
        return {text(k): from_centi(text(v)) for k, v in raw.items()}
