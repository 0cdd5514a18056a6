"""``imagineq status [--json] [--watch [SECONDS]]``: one screen with the state of a deployment.

Gathering lives in :mod:`producers.status`; this module renders it with rich (or as JSON, one object per
refresh) and redacts every string it prints with the deployment's secrets (``workers.logs.Redactor``).
With ``--watch`` the upstream is asked for credits at most every :data:`CREDITS_EVERY_S`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from config.celery import PRIORITY_STEPS
from config.settings import get_settings
from core.jobs import JobState
from producers.exit_codes import EXIT_FAILED, EXIT_OK
from producers.status import AccountStatus, Status, StatusReader
from workers.logs import Redactor

DEFAULT_WATCH_S = 2.0
#: In ``--watch``, credits (an upstream call per account) are refreshed at most this often.
CREDITS_EVERY_S = 30.0
STATE_STYLE = {
    "queued": "white",
    "submitting": "yellow",
    "generating": "cyan",
    "downloading": "blue",
    "stored": "green",
    "failed": "red",
    "expired": "magenta",
    "canceled": "dim",
}

#: Makes a redacted table cell from any value (and a style).
Cell = Callable[..., Text]


def register(subparsers: Any) -> None:
    status = subparsers.add_parser(
        "status", help="quotas, credits, queues, jobs by state and recent failures on one screen"
    )
    status.add_argument("--json", action="store_true", help="print JSON (with --watch: one object per line)")
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=DEFAULT_WATCH_S,
        default=None,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C",
    )
    status.add_argument("--failures", type=int, default=10, metavar="N", help="newest failures shown (10)")
    status.add_argument("--no-credits", action="store_true", help="do not ask the upstream for credits")
    status.set_defaults(handler=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    settings = get_settings()
    redactor = Redactor.for_settings(settings)
    reader = StatusReader(settings)
    console = Console(width=None if sys.stdout.isatty() else 130, highlight=False)
    try:
        if args.watch is None:
            status = reader.gather(credits=not args.no_credits, failures=args.failures)
            _show(console, status, redactor, as_json=args.json)
            return EXIT_OK
        return _watch(console, reader, redactor, args)
    except redis.RedisError as error:
        print(redactor.redact(f"error: Redis at {reader.redis_location}: {error}"), file=sys.stderr)
        return EXIT_FAILED
    finally:
        reader.close()


def _show(console: Console, status: Status, redactor: Redactor, *, as_json: bool) -> None:
    if as_json:
        print(redactor.redact(status.to_json()), flush=True)
    else:
        console.print(render(status, redactor))


def _watch(console: Console, reader: StatusReader, redactor: Redactor, args: argparse.Namespace) -> int:
    interval_s = max(0.2, float(args.watch))
    known: dict[str, tuple[float | None, str | None]] = {}
    asked_at = -1e9

    def refresh() -> Status:
        nonlocal known, asked_at
        ask = not args.no_credits and time.monotonic() - asked_at >= CREDITS_EVERY_S
        status = reader.gather(
            credits=not args.no_credits, failures=args.failures, known_credits=None if ask else known
        )
        if ask:
            known = {a.account: (a.credits, a.credits_error) for a in status.accounts}
            asked_at = time.monotonic()
        return status

    try:
        if args.json:
            while True:
                _show(console, refresh(), redactor, as_json=True)
                time.sleep(interval_s)
        with Live(render(refresh(), redactor), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(render(refresh(), redactor), refresh=True)
    except KeyboardInterrupt:
        return EXIT_OK


# -- rendering -----------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """``45s``, ``3m 05s``, ``2h 03m``, ``1d 04h``."""
    if seconds is None:
        return "—"
    total = int(seconds)
    if total < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h {total % 3600 // 60:02d}m"
    return f"{total // 86400}d {total % 86400 // 3600:02d}h"


def render(status: Status, redactor: Redactor) -> Group:
    """The whole screen; every string cell is redacted."""

    def cell(value: object, style: str = "") -> Text:
        return Text(redactor.redact(str(value)), style=style)

    at = datetime.fromtimestamp(status.at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = cell(f"ImagineQ status · redis {status.redis} · prefix {status.prefix} · {at}", "bold")
    return Group(
        header,
        _accounts(status, cell),
        _principals(status, cell),
        _queues(status, cell),
        _jobs(status, cell),
        _failures(status, cell),
    )


def _can_pay(account: AccountStatus, cell: Cell) -> Text:
    """What the account can still pay as ImagineQ counts it (beat's last reading, less charges and holds)."""
    balance = account.balance
    if balance is None or balance.available is None:
        return cell("not read yet", "dim")
    style = "red" if balance.available <= 0 else ("yellow" if balance.low else "")
    return cell(f"{balance.available:g}" + (" (low)" if balance.low else ""), style)


def _accounts(status: Status, cell: Cell) -> Table | Text:
    if not status.accounts:
        return cell("no upstream account configured (IMAGINEQ_API_KEY / IMAGINEQ_ACCOUNTS)", "yellow")
    table = Table(title="Accounts", title_justify="left")
    for column in ("account", "created in window", "in progress", "cooldown", "paused", "credits", "can pay"):
        table.add_column(column, overflow="fold")
    for account in status.accounts:
        full_window = account.creations_in_window >= account.creations_limit
        full_slots = account.in_progress >= account.in_progress_limit
        if account.credits is not None:
            credits = cell(account.credits, "red" if account.credits == 0 else "")
        elif account.credits_error is not None:
            credits = cell(f"unknown ({account.credits_error})", "yellow")
        else:
            credits = cell("not asked", "dim")
        table.add_row(
            cell(account.account, "bold"),
            cell(
                f"{account.creations_in_window} / {account.creations_limit} per {duration(account.window_s)}",
                "red" if full_window else "",
            ),
            cell(f"{account.in_progress} / {account.in_progress_limit}", "yellow" if full_slots else ""),
            cell(duration(account.cooldown_s), "yellow") if account.cooldown_s > 0 else cell("—", "dim"),
            cell(account.paused, "red") if account.paused else cell("—", "dim"),
            credits,
            _can_pay(account, cell),
        )
        for pool in account.pools:
            table.add_row(
                cell(f"  {pool.pool}", "dim"),
                cell(f"{pool.creations_in_window} / {pool.creations_limit} per {duration(account.window_s)}"),
                cell(f"{pool.in_progress} / {pool.in_progress_limit}"),
                cell("", ""),
                cell("", ""),
                cell("", ""),
                cell("", ""),
            )
    return table


def _principals(status: Status, cell: Cell) -> Table | Text:
    """Fair share: who waits, who holds slots, who got the last hour's creations against its weight."""
    if not status.principals:
        return cell("Principals: nothing queued, in progress or created in the last hour", "dim")
    table = Table(title="Principals (fair share)", title_justify="left")
    for column in ("principal", "weight", "queued", "oldest waiting", "in progress", "created 1 h", "share / fair"):
        table.add_column(column, overflow="fold")
    for share in status.principals:
        oldest = "—" if share.oldest_waiting_at is None else duration(max(0.0, status.at - share.oldest_waiting_at))
        below = share.creations and share.share < 0.9 * share.fair_share
        table.add_row(
            cell(share.principal, "bold"),
            cell(f"{share.weight:g}"),
            cell(share.queued),
            cell(oldest),
            cell(share.in_progress),
            cell(share.creations),
            cell(f"{share.share:.0%} / {share.fair_share:.0%}", "yellow" if below else ""),
        )
    return table


def _queues(status: Status, cell: Cell) -> Table:
    table = Table(title="Celery queues", title_justify="left")
    table.add_column("queue")
    for step in PRIORITY_STEPS:
        label = "interactive" if step == PRIORITY_STEPS[0] else ("batch" if step == PRIORITY_STEPS[-1] else "")
        table.add_column(f"p{step} {label}".strip(), justify="right")
    table.add_column("waiting", justify="right")
    table.add_column("held by workers", justify="right")
    for queue in status.queues:
        table.add_row(
            cell(queue.queue, "bold"),
            *(cell(queue.waiting.get(step, 0)) for step in PRIORITY_STEPS),
            cell(queue.waiting_total, "bold"),
            cell("?" if queue.held is None else queue.held),
        )
    table.caption = (
        f"waiting: per priority list (0 served first); held: reserved, running or waiting for a countdown "
        f"(all queues: {status.held_total})"
    )
    return table


def _jobs(status: Status, cell: Cell) -> Table:
    table = Table(title="Jobs by state", title_justify="left")
    for state in JobState:
        table.add_column(state.value, justify="right", style=STATE_STYLE.get(state.value, ""))
    table.add_row(*(cell(status.jobs.get(state.value, 0)) for state in JobState))
    if status.oldest_queued_job is None:
        table.caption = "no job waiting"
    else:
        table.caption = f"oldest queued: {duration(status.oldest_queued_age_s)} (job {status.oldest_queued_job})"
    return table


def _failures(status: Status, cell: Cell) -> Table | Text:
    if not status.failures:
        return cell("No failed or expired jobs.", "green")
    table = Table(title="Last failures (newest first)", title_justify="left")
    for column in ("ago", "job", "state", "reason", "account", "error"):
        table.add_column(column, overflow="fold")
    for failure in status.failures:
        table.add_row(
            cell(duration(max(0.0, status.at - failure.at))),
            cell(failure.job_id),
            cell(failure.state, STATE_STYLE.get(failure.state, "")),
            cell(failure.reason or "—"),
            cell(failure.account or "—"),
            cell(failure.error or ""),
        )
    return table
