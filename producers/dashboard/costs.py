"""What the dashboard's costs page shows: spend per day and per model, the top batches, the budgets with
what each has left and (for an admin) the accounts' balances, read from the ledger (:mod:`core.ledger`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from config.settings import PrincipalSettings
from core.balances import Balance, Balances
from core.credits import NO_PRINCIPAL, CreditPolicy, utc_day
from core.ledger import BudgetUse, CostRow, Ledger
from producers.web.context import Web

#: Days the page looks back over.
DAYS = 14
#: Batches listed (the most charged first).
TOP_BATCHES = 8


@dataclass(frozen=True)
class CostsView:
    since: str
    until: str
    #: One per day, oldest first (a day without spend included): (day, charged, reserved).
    per_day: list[CostRow]
    per_model: list[CostRow]
    batches: list[CostRow]
    #: (whose, budget): an admin sees every principal's and the daily cap; a tenant its own.
    budgets: list[tuple[str, BudgetUse]]
    charged: float
    reserved: float
    #: Whose costs these are (None: everyone's, for an admin).
    principal: str | None
    balances: list[Balance] = field(default_factory=list)

    @property
    def most_per_day(self) -> float:
        return max((row.charged + row.reserved for row in self.per_day), default=0.0)

    @property
    def most_per_model(self) -> float:
        return max((row.charged + row.reserved for row in self.per_model), default=0.0)


def costs_view(web: Web, principal: PrincipalSettings) -> CostsView:
    until = utc_day()
    since = (dt.date.fromisoformat(until) - dt.timedelta(days=DAYS - 1)).isoformat()
    whose = None if principal.admin else principal.name
    ledger = Ledger(web.producer.redis, web.producer.keys)
    found = {row.key: row for row in ledger.costs("day", since, until, principal=whose)}
    per_day = [
        found.get(day, CostRow(day, 0.0, 0.0))
        for day in ((dt.date.fromisoformat(since) + dt.timedelta(days=i)).isoformat() for i in range(DAYS))
    ]
    per_model = ledger.costs("model", since, until, principal=whose)
    batches = ledger.costs("batch", since, until, principal=whose)[:TOP_BATCHES]
    policy = CreditPolicy(web.settings)
    budgets: list[tuple[str, BudgetUse]] = []
    if principal.admin:
        everyone = [None, *(p.name for p in web.settings.ingress_principals)]
        for name in everyone:
            uses = ledger.budgets(policy, name)
            if name is None:
                budgets.append(("everyone", uses[2]))
            budgets += [(name or NO_PRINCIPAL, use) for use in uses[:2] if use.limit is not None or name is None]
    else:
        budgets = [(principal.name, use) for use in ledger.budgets(policy, principal.name)[:2]]
    balances = Balances(web.producer.redis, web.producer.keys).read(a.name for a in web.settings.accounts)
    return CostsView(
        since=since,
        until=until,
        per_day=per_day,
        per_model=per_model,
        batches=batches,
        budgets=budgets,
        charged=round(sum(row.charged for row in per_day), 2),
        reserved=round(sum(row.reserved for row in per_day), 2),
        principal=whose,
        balances=balances if principal.admin else [],
    )
