"""``imagineq batch submit|status|list``: JSONL batches from the command line (rich progress)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.settings import Settings
from core.jobs import JobState
from core.quota import QuotaLimiter
from producers.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from workers.batch.reader import BAD_LINES_KEPT, PRIORITY_LEVELS, BatchSubmitter, SubmitResult
from workers.batch.status import BatchStatus
from workers.batch.store import wait_until_finished

#: Bad lines printed after a submit (all of them are in the manifest).
BAD_LINES_SHOWN = 20
LIVE_STATES = ("queued", "submitting", "generating", "downloading")
END_STATES = ("stored", "failed", "expired", "canceled", "missing")


def register(subparsers: Any) -> None:
    batch = subparsers.add_parser("batch", help="submit and follow JSONL batches")
    commands = batch.add_subparsers(dest="batch_command", required=True)

    submit = commands.add_parser("submit", help="enqueue every good line of a JSONL file (path or s3://)")
    submit.add_argument("file", help="local path or s3://bucket/key of a JSONL file")
    submit.add_argument("--name", default=None, help="batch name, its identity (default: from the file's content)")
    submit.add_argument(
        "--priority",
        choices=sorted(PRIORITY_LEVELS),
        default="low",
        help="low (default) or normal; interactive jobs always go first",
    )
    submit.add_argument("--results", default=None, help="manifest location (default: <name>.results.jsonl beside FILE)")
    submit.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="CREDITS",
        help="the most credits the batch's jobs may cost (else the file's header line's); lines past it are "
        "reported over_budget in the manifest and cost nothing",
    )
    submit.add_argument("--wait", action="store_true", help="follow the batch until every line has ended")
    submit.add_argument("--timeout", type=float, default=None, help="seconds to --wait (default: no limit)")
    submit.add_argument("--json", action="store_true", help="print the outcome as JSON")
    submit.set_defaults(handler=_cmd_submit)

    status = commands.add_parser("status", help="show a batch's progress")
    status.add_argument("batch_id", help="the batch's id, or a unique prefix of it")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_cmd_status)

    listing = commands.add_parser("list", help="the newest batches")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_cmd_list)


# -- submit -----------------------------------------------------------------------------------------------


def _cmd_submit(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    submitter = BatchSubmitter()
    try:
        with Progress(
            TextColumn("reading {task.description}"),
            TextColumn("{task.completed:,} lines"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=args.json,
        ) as progress:
            reading = progress.add_task(args.file, total=None)
            result = submitter.submit(
                args.file,
                name=args.name,
                priority=args.priority,
                results=args.results,
                on_chunk=lambda lines: progress.update(reading, completed=lines),
                budget=args.budget,
            )
        if not args.json:
            _print_submitted(console, result)
        status = result.status
        if args.wait:
            status = _follow(console, submitter, status, timeout_s=args.timeout, quiet=args.json)
        if args.json:
            out = status.to_dict()
            out["bad_lines"] = [{"line": b.line, "id": b.id, "error": b.error} for b in result.bad_lines]
            print(json.dumps(out, indent=2))
        elif args.wait:
            _print_summary(Console(), status)
    finally:
        submitter.close()
    return _exit_code(status, waited=args.wait)


def _exit_code(status: BatchStatus, *, waited: bool) -> int:
    """The rule of ``producers.exit_codes``: bad lines are reported, not failures; a file with no good line
    is unusable input; accepted lines that did not end stored (or a wait that ran out) are failures."""
    if status.good == 0:
        return EXIT_USAGE
    if waited and (status.pending or any(status.states.get(s, 0) for s in END_STATES if s != "stored")):
        return EXIT_FAILED
    return EXIT_OK


def _print_submitted(console: Console, result: SubmitResult) -> None:
    status = result.status
    if not result.read:
        console.print(f"batch [bold]{status.id}[/] was submitted before ({status.status}): nothing new sent")
        return
    rate = status.lines / result.elapsed_s if result.elapsed_s > 0 else 0.0
    over = f", {status.over_budget:,} over budget" if status.over_budget else ""
    console.print(
        f"batch [bold]{status.id}[/]: {_count(status.lines, 'line')} read, {status.good:,} good, "
        f"{status.bad:,} bad{over}, {_count(status.created, 'new job')} ({rate:,.0f} lines/s)"
    )
    if status.budget is not None:
        console.print(f"  budget {status.budget:g} credits: lines past it are over_budget in the manifest")
    for bad in result.bad_lines[:BAD_LINES_SHOWN]:
        label = f" (id {bad.id})" if bad.id is not None else ""
        console.print(f"  [red]line {bad.line}{label}[/]: {bad.error}", highlight=False)
    hidden = status.bad - min(len(result.bad_lines), BAD_LINES_SHOWN)
    if hidden > 0:
        more = "" if status.bad <= BAD_LINES_KEPT else f" (first {BAD_LINES_KEPT} kept in memory)"
        console.print(f"  ... and {hidden:,} more bad {_plural(hidden, 'line')}{more}: every one is in the manifest")


def _follow(
    console: Console, submitter: BatchSubmitter, status: BatchStatus, *, timeout_s: float | None, quiet: bool
) -> BatchStatus:
    """Settle the batch until every line has ended, with a progress bar on a terminal (counts per state,
    throughput and an ETA from the account quotas), else a line each time its counts change."""
    quota = QuotaLimiter.for_settings(submitter.redis, submitter.keys, submitter.settings)
    started, done_at_start = time.monotonic(), status.finished
    plain = not console.is_terminal and not quiet
    last = ""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TextColumn("{task.fields[states]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        transient=True,
        disable=quiet,
    ) as progress:
        batch_id = status.id
        bar = progress.add_task(batch_id, total=max(status.good, 1), states="", rate="", eta="?")
        for status in wait_until_finished(submitter.batches, batch_id, submitter.files, timeout_s=timeout_s):
            elapsed = time.monotonic() - started
            per_min = (status.finished - done_at_start) / elapsed * 60 if elapsed > 1 else 0.0
            progress.update(
                bar,
                completed=status.finished,
                states=_states_line(status),
                rate=f"{per_min:,.1f}/min",
                eta=_eta(submitter.settings, quota, status),
            )
            line = f"{status.finished:,}/{status.good:,} ended · {_states_line(status)}"
            if plain and line != last:
                print(f"{elapsed:6.1f}s  {line}", file=sys.stderr, flush=True)
                last = line
    return status


def _states_line(status: BatchStatus) -> str:
    parts = [f"{state} {status.states[state]:,}" for state in (*LIVE_STATES, *END_STATES) if status.states.get(state)]
    return " · ".join(parts)


def quota_eta_s(settings: Settings, quota: QuotaLimiter, to_create: int) -> float | None:
    """Seconds until ``to_create`` more tasks can have been created, at best, under the accounts' creation
    quotas (what is left in the current windows now, then the windows' rate). None without accounts."""
    if not settings.accounts:
        return None
    if to_create <= 0:
        return 0.0
    rate_per_s = sum(a.creations_limit / a.creation_window_s for a in settings.accounts)
    headroom = sum(max(0, q.creations_limit - q.creations_in_window) for q in quota.snapshot())
    return max(0, to_create - headroom) / rate_per_s


def _eta(settings: Settings, quota: QuotaLimiter, status: BatchStatus) -> str:
    to_create = status.states.get(JobState.QUEUED.value, 0) + status.states.get(JobState.SUBMITTING.value, 0)
    seconds = quota_eta_s(settings, quota, to_create)
    if seconds is None:
        return "?"
    hours, rest = divmod(int(seconds), 3600)
    return f"≥{hours}h{rest // 60:02d}m" if hours else f"≥{rest // 60}m{rest % 60:02d}s"


def _over_budget(status: BatchStatus) -> str:
    """Lines past a budget: how many, and the batch's own budget when it has one."""
    budget = f" (the batch's budget: {status.budget:g} credits)" if status.budget is not None else ""
    return f"{status.over_budget:,}{budget}"


def _print_summary(console: Console, status: BatchStatus) -> None:
    table = Table(title=f"batch {status.id} ({status.name})", show_header=False)
    table.add_row("lines", f"{status.lines:,}")
    table.add_row("bad lines", f"{status.bad:,}")
    if status.over_budget:
        table.add_row("over budget", _over_budget(status))
    for state in END_STATES:
        if status.states.get(state):
            table.add_row(state, f"{status.states[state]:,}")
    table.add_row("status", status.status)
    if status.manifest:
        table.add_row("manifest", status.manifest)
    console.print(table)


# -- status and list --------------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    submitter = BatchSubmitter()
    try:
        found = submitter.batches.find(args.batch_id)  # its id, or a unique prefix of it
        status = submitter.batches.settle(found) if found is not None else None
    finally:
        submitter.close()
    if status is None:
        print(f"error: batch {args.batch_id} not found", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
        return EXIT_OK
    table = Table(title=f"batch {status.id}", show_header=False)
    for name, value in (
        ("name", status.name),
        ("status", status.status),
        ("source", status.source),
        ("manifest", status.manifest or f"(when done) {status.results}"),
        ("lines", f"{status.lines:,}"),
        ("good", f"{status.good:,}"),
        ("bad", f"{status.bad:,}"),
        ("new jobs", f"{status.created:,}"),
    ):
        table.add_row(name, value)
    if status.over_budget:
        table.add_row("over budget", _over_budget(status))
    for state in (*LIVE_STATES, *END_STATES):
        if status.states.get(state):
            table.add_row(state, f"{status.states[state]:,}")
    # Not on a terminal (a pipe, a file): wide enough that no id is cut short.
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    submitter = BatchSubmitter()
    try:
        batches = submitter.batches.recent(args.limit)
    finally:
        submitter.close()
    if args.json:
        print(json.dumps([status.to_dict() for status in batches], indent=2))
        return EXIT_OK
    table = Table("batch", "name", "status", "lines", "bad", "ended", "pending", "submitted at (UTC)")
    for status in batches:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(status.created_at))
        table.add_row(
            status.id,
            status.name,
            status.status,
            f"{status.lines:,}",
            f"{status.bad:,}",
            f"{status.finished:,}",
            f"{status.pending:,}",
            when,
        )
    # Not on a terminal (a pipe, a file): wide enough that no id is cut short.
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    return EXIT_OK


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else f"{noun}s"


def _count(n: int, noun: str) -> str:
    """``1 line``, ``2 lines``, ``1,000 new jobs``."""
    return f"{n:,} {_plural(n, noun)}"
