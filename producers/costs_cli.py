"""``imagineq estimate FILE`` (a dry run: what a request, a list or a batch file would cost) and
``imagineq costs`` (what the ledger holds, grouped): see :mod:`producers.costs` and :mod:`core.ledger`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from producers.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def _credits(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _cmd_estimate(args: argparse.Namespace) -> int:
    from core.errors import ValidationError
    from producers.api import Producer
    from producers.costs import Estimator

    producer = Producer()
    try:
        estimate = Estimator(producer).file(args.file, owner=None)
    except OSError as error:
        print(f"error: cannot read {args.file}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValidationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(estimate.to_dict(), indent=2))
    else:
        by_model: dict[str, tuple[int, float]] = {}
        for item in estimate.items:
            if item.model is not None and item.credits is not None:
                count, total = by_model.get(item.model, (0, 0.0))
                by_model[item.model] = (count + 1, total + item.credits)
        for model, (count, total) in sorted(by_model.items()):
            print(f"  {model:<16} {count:>7,} jobs  {_credits(total):>14} credits")
        for item in estimate.items:
            if item.error is not None:
                where = f"line {item.line}" if item.line is not None else f"request {item.index}"
                print(f"  {where}: {item.error}", file=sys.stderr)
        print(f"total: {_credits(estimate.total)} credits for {len(estimate.items) - estimate.errors:,} jobs")
        if estimate.batch_budget is not None:
            print(f"the file's budget: {_credits(estimate.batch_budget)} credits")
        for budget in estimate.budgets:
            if budget.limit is not None:
                fits = "fits" if estimate.total <= (budget.left or 0) else "does NOT fit"
                print(f"budget {budget.budget} ({budget.period}): {_credits(budget.left)} left — {fits}")
    return EXIT_FAILED if estimate.errors else EXIT_OK


def _cmd_costs(args: argparse.Namespace) -> int:
    from core.credits import CreditPolicy, utc_day
    from core.ledger import Ledger, parse_day
    from producers.api import Producer

    try:
        since = parse_day(args.since, field="--since")
        until = parse_day(args.until, field="--until") if args.until else utc_day()
        producer = Producer()
        ledger = Ledger(producer.redis, producer.keys)
        report = ledger.report(CreditPolicy(producer.settings), args.by, since, until, principal=args.principal)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK
    print(f"credits by {args.by}, {since} to {until} (UTC){' for ' + args.principal if args.principal else ''}")
    print(f"  {args.by:<36} {'charged':>14} {'reserved':>14}")
    for row in report.rows:
        print(f"  {row.key:<36} {_credits(row.charged):>14} {_credits(row.reserved):>14}")
    if not report.rows:
        print("  (nothing in this range)")
    if args.by != "account":
        print(f"  {'total':<36} {_credits(report.charged):>14} {_credits(report.reserved):>14}")
    for budget in report.budgets:
        if budget.limit is not None:
            print(f"budget {budget.budget} ({budget.period}): {_credits(budget.limit)}, {_credits(budget.left)} left")
    return EXIT_OK


def register(commands: Any) -> None:
    from core.ledger import GROUPINGS

    estimate = commands.add_parser(
        "estimate", help="what a job (JSON), a list of jobs or a batch file (JSONL) would cost; nothing is enqueued"
    )
    estimate.add_argument("file", type=Path, help="a JSON request or list, or a JSONL batch file")
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    estimate.set_defaults(handler=_cmd_estimate)

    costs = commands.add_parser("costs", help="credits charged and reserved, from the ledger, grouped")
    costs.add_argument("--by", choices=GROUPINGS, default="day", help="how to group (default: day)")
    costs.add_argument("--since", default="6d", help="first UTC day: YYYY-MM-DD or Nd (N days ago; default 6d)")
    costs.add_argument("--until", default=None, help="last UTC day (default: today)")
    costs.add_argument("--principal", default=None, help="one principal's only ('-': jobs of no principal)")
    costs.add_argument("--json", action="store_true", help="print the report as JSON")
    costs.set_defaults(handler=_cmd_costs)
