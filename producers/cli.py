"""The ``imagineq`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from config.settings import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Modules with a ``register(subparsers)`` function adding their commands (each handler returns an exit code).
EXTENSIONS: tuple[str, ...] = ("producers.batch_cli", "producers.status_cli")


def _job_table(job: Any) -> str:
    data = job.to_dict()
    rows = [
        ("job", data.get("id")),
        ("state", data.get("state")),
        ("reason", data.get("reason")),
        ("error", data.get("error")),
        ("account", data.get("account")),
        ("task", data.get("task_id")),
        ("s3", data.get("s3_uri")),
        ("size", data.get("size")),
        ("sha256", data.get("sha256")),
    ]
    return "\n".join(f"{name:8} {value}" for name, value in rows if value not in (None, ""))


def _cmd_submit(args: argparse.Namespace) -> int:
    from producers.api import Producer

    producer = Producer()
    job = producer.enqueue(
        args.prompt,
        aspect_ratio=args.aspect_ratio,
        mode=args.mode,
        idempotency_key=args.idempotency_key,
        notify_url=args.notify_url,
    )
    # The id at once (on stderr with --json, which keeps stdout one JSON document).
    print(f"job {job.id} {job.state.value}", file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.wait:
        job = _follow(producer, job, timeout_s=args.timeout, out=sys.stderr if args.json else sys.stdout)
    print(json.dumps(job.to_dict(), indent=2) if args.json else _job_table(job))
    if args.wait and job.state.value != "stored":
        return EXIT_FAILED
    return EXIT_OK


#: The shortest job id prefix a command accepts.
MIN_PREFIX = 8


def find_job(producer: Any, text: str) -> Any:
    """The job ``text`` names: its id, or a unique prefix of at least 8 characters; None (with the
    reason printed) otherwise."""
    job = producer.get(text)
    if job is not None:
        return job
    if len(text) < MIN_PREFIX:
        print(
            f"error: job {text} not found (give the id, or a unique prefix of {MIN_PREFIX}+ characters)",
            file=sys.stderr,
        )
        return None
    matches = producer.jobs.ids_with_prefix(text.lower(), limit=3)
    if len(matches) > 1:
        shown = ", ".join(matches[:2]) + (", ..." if len(matches) > 2 else "")
        print(f"error: {text} is the start of several jobs ({shown}); give more of the id", file=sys.stderr)
        return None
    job = producer.get(matches[0]) if matches else None
    if job is None:
        print(f"error: job {text} not found", file=sys.stderr)
    return job


def _follow(producer: Any, job: Any, *, timeout_s: float, out: Any) -> Any:
    """Wait for ``job`` to end, printing a line at each state it moves to; TimeoutError past ``timeout_s``."""
    started = time.monotonic()
    state = job.state
    while not job.state.terminal:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"job {job.id} is still {job.state.value} after {timeout_s:.0f}s")
        time.sleep(0.25)
        job = producer.get(job.id) or job
        if job.state is not state:
            state = job.state
            print(f"{time.monotonic() - started:6.1f}s  {state.value}", file=out, flush=True)
    return job


def _cmd_job(args: argparse.Namespace) -> int:
    from producers.api import Producer
    from workers.notify.store import delivery_log

    producer = Producer()
    job = find_job(producer, args.job_id)
    if job is None:
        return EXIT_FAILED
    deliveries = delivery_log(producer.redis, producer.keys, job.id)
    if args.json:
        print(json.dumps({**job.to_dict(), "deliveries": deliveries}, indent=2))
        return EXIT_OK
    print(_job_table(job))
    for entry in deliveries:
        outcome = entry.get("status") or entry.get("error")
        print(
            f"{'webhook':8} {entry.get('event')} → {entry.get('url')} attempt {entry.get('attempt')}: "
            f"{outcome} ({entry.get('latency_ms')} ms){' ' + entry['error'] if entry.get('error') else ''}"
        )
    return EXIT_OK


def _cmd_resubmit(args: argparse.Namespace) -> int:
    from producers.api import Producer

    producer = Producer()
    job = find_job(producer, args.job_id)
    if job is None:
        return EXIT_FAILED
    try:
        producer.resubmit(job)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"job {job.id} queued again (was failed: {job.reason})")
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    from producers.api import NotCancelable, Producer

    producer = Producer()
    job = find_job(producer, args.job_id)
    if job is None:
        return EXIT_FAILED
    try:
        producer.cancel(job.id, by="from the command line")
    except NotCancelable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"job {job.id} canceled")
    return EXIT_OK


def _cmd_jobs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from core.jobs import JobState
    from producers.api import Producer

    producer = Producer()
    states = [JobState(args.state)] if args.state else list(JobState)
    # Newest first in each state; with --batch, read at most ten times the limit per state.
    read = args.limit * (10 if args.batch else 1)
    rows = [row for state in states for row in producer.jobs.newest_in_state(state, read)]
    rows.sort(key=lambda row: row[1], reverse=True)
    jobs = [job for job in producer.jobs.get_many([job_id for job_id, _ in rows]) if job is not None]
    if args.batch:
        jobs = [job for job in jobs if job.batch_id == args.batch]
    jobs = jobs[: args.limit]
    if args.json:
        print(json.dumps([job.to_dict() for job in jobs], indent=2))
        return EXIT_OK
    table = Table("job", "state", "age", "took", "account", "prompt")
    now = time.time()
    for job in jobs:
        took = job.updated_at - job.created_at if job.state.terminal else None
        table.add_row(
            job.id,
            job.state.value,
            _duration(now - job.created_at),
            "" if took is None else _duration(took),
            job.account or "",
            job.prompt if len(job.prompt) <= 48 else job.prompt[:47] + "…",
        )
    # Not on a terminal (a pipe, a file): wide enough that no id is cut short.
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    return EXIT_OK


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _cmd_fetch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from producers.api import Producer

    producer = Producer()
    job = find_job(producer, args.job_id)
    if job is None:
        return EXIT_FAILED
    target = Path(args.path or f"{job.id}.mp4")
    if target.is_dir():
        target = target / f"{job.id}.mp4"
    try:
        digest = producer.download(job, target)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{target} ({target.stat().st_size:,} bytes, sha256 {digest[:12]}…)")
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    """Print the events stream: a line (or a JSON object) per job that ends and per batch done."""
    from typing import cast

    from core.events import Event, valid_event_id
    from producers.api import Producer

    if args.after is not None and not valid_event_id(args.after):
        print("error: --after must be an event id such as 1733000000000-0", file=sys.stderr)
        return EXIT_USAGE
    producer = Producer()
    key = producer.keys.events()
    cursor = args.after
    if cursor is None:
        newest = cast("list[tuple[str, dict[str, str]]]", producer.redis.xrevrange(key, count=1))
        cursor = newest[0][0] if newest else "0-0"
    shown = 0
    try:
        while args.count is None or shown < args.count:
            reply = cast("list[Any]", producer.redis.xread({key: cursor}, count=200, block=5000) or [])
            for _, entries in reply:
                for entry_id, fields in entries:
                    cursor = entry_id
                    event = Event.of(entry_id, fields)
                    if not event.matches(batch=args.batch, job=args.job, owner=None):
                        continue
                    print(_event_line(producer, event, as_json=args.json), flush=True)
                    shown += 1
                    if args.count is not None and shown >= args.count:
                        return EXIT_OK
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _event_line(producer: Any, event: Any, *, as_json: bool) -> str:
    job = producer.get(event.job_id) if event.job_id else None
    if as_json:
        data = event.to_dict()
        if job is not None:
            data["job"] = job.public_dict()
        return json.dumps(data, ensure_ascii=False)
    when = time.strftime("%H:%M:%S", time.gmtime(event.at))
    if event.job_id is None:
        return f"{when}  {event.type:16} batch {event.batch_id}"
    if job is None:
        detail = ""
    elif job.reason:
        detail = f"{job.reason}: {job.error}"
    else:
        detail = job.s3_uri or ""
    batch = f"  batch {event.batch_id}" if event.batch_id else ""
    return f"{when}  {event.type:16} job {event.job_id}{batch}  {detail}".rstrip()


def _cmd_notify_secret(args: argparse.Namespace) -> int:
    """Print the secret a principal's (or, without one, the Python API's) ``notify_url`` webhooks are
    signed with: the operator hands it to that tenant, whose receiver verifies with it."""
    from config.settings import get_settings
    from workers.notify.targets import notify_secret

    settings = get_settings()
    if args.principal is not None and settings.principal(args.principal) is None:
        print(f"error: no ingress principal is named {args.principal!r}", file=sys.stderr)
        return EXIT_USAGE
    secret = notify_secret(args.principal, settings)
    if secret is None:
        print(
            "error: no signing secret: set IMAGINEQ_NOTIFY__SIGNING_SECRET (or the principal's notify_secret)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(secret)
    return EXIT_OK


def _cmd_simulator(rest: Sequence[str]) -> int:
    # A process of its own, not an import: the simulator stands apart from the producers.
    return subprocess.call([sys.executable, "-m", "simulator", *rest])


def _cmd_demo(_: argparse.Namespace) -> int:
    # The demo lives with the local development services (a checkout, not the installed package).
    return subprocess.call([sys.executable, "-m", "devstack.demo"])


def build_parser() -> argparse.ArgumentParser:
    from core.jobs import JobState as JobStateNames

    parser = argparse.ArgumentParser(prog="imagineq", description="Text prompts to stored Grok Imagine videos.")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="enqueue one prompt")
    submit.add_argument("prompt")
    submit.add_argument("--aspect-ratio", default="2:3", help="2:3 (default), 3:2 or 1:1")
    submit.add_argument("--mode", default="normal", help="fun, normal (default) or spicy")
    submit.add_argument("--idempotency-key", default=None, help="the same key returns the same job")
    submit.add_argument("--notify-url", default=None, help="POST the job's end there (signed webhook)")
    submit.add_argument("--wait", action="store_true", help="wait until the job is terminal")
    submit.add_argument("--timeout", type=float, default=1200.0, help="seconds to --wait (default 1200)")
    submit.add_argument("--json", action="store_true", help="print the job record as JSON")
    submit.set_defaults(handler=_cmd_submit)

    job = commands.add_parser("job", help="show one job")
    job.add_argument("job_id", help="the job's id, or a unique prefix of 8+ characters")
    job.add_argument("--json", action="store_true")
    job.set_defaults(handler=_cmd_job)

    resubmit = commands.add_parser("resubmit", help="queue a failed job again (e.g. outcome_unknown)")
    resubmit.add_argument("job_id", help="the job's id, or a unique prefix of 8+ characters")
    resubmit.set_defaults(handler=_cmd_resubmit)

    cancel = commands.add_parser("cancel", help="cancel a job that has not been submitted yet")
    cancel.add_argument("job_id", help="the job's id, or a unique prefix of 8+ characters")
    cancel.set_defaults(handler=_cmd_cancel)

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--state", choices=[state.value for state in JobStateNames], help="only jobs in this state")
    jobs.add_argument("--batch", default=None, help="only jobs of this batch")
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=_cmd_jobs)

    fetch = commands.add_parser("fetch", help="download a stored job's video")
    fetch.add_argument("job_id", help="the job's id, or a unique prefix of 8+ characters")
    fetch.add_argument("path", nargs="?", default=None, help="file or folder to write (default ./JOB_ID.mp4)")
    fetch.set_defaults(handler=_cmd_fetch)

    watch = commands.add_parser("watch", help="print events as jobs end and batches finish (Ctrl-C stops)")
    watch.add_argument("--batch", default=None, help="only this batch's events")
    watch.add_argument("--job", default=None, help="only this job's events (its full id)")
    watch.add_argument("--after", default=None, help="start after this event id (default: from now on)")
    watch.add_argument("--count", type=int, default=None, help="stop after this many events")
    watch.add_argument("--json", action="store_true", help="one JSON object per event")
    watch.set_defaults(handler=_cmd_watch)

    secret = commands.add_parser(
        "notify-secret", help="print the secret a principal's notify_url webhooks are signed with (for its receiver)"
    )
    secret.add_argument("principal", nargs="?", default=None, help="the principal (default: jobs without one)")
    secret.set_defaults(handler=_cmd_notify_secret)

    commands.add_parser("simulator", help="run the Apikley simulator (see `imagineq simulator --help`)", add_help=False)
    demo = commands.add_parser("demo", help="run the end-to-end demo on private local services")
    demo.set_defaults(handler=_cmd_demo)

    # Command groups that live in their own modules register themselves here.
    for module_name in EXTENSIONS:
        module = importlib.import_module(module_name)
        module.register(commands)
    return parser


def _unreachable(service: str, where: str, setting: str, error: Exception) -> int:
    """One line naming the service, where it was looked for and the setting that says so (secrets
    redacted), instead of a traceback; the exit status of a configuration problem."""
    from config.settings import get_settings
    from workers.logs import Redactor

    line = f"error: {service} at {where} ({setting}): {error}"
    print(Redactor.for_settings(get_settings()).redact(line), file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    import kombu.exceptions
    import redis

    from config.settings import get_settings, redact_url
    from core.errors import ImagineQError, ValidationError
    from workers.logs import configure_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulator"]:
        return _cmd_simulator(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        # Log lines (WARNING and up unless IMAGINEQ_LOG_LEVEL) go to stderr, secrets redacted.
        configure_logging(get_settings(), service="cli", level="WARNING")
        code: int = args.handler(args)
    except (redis.RedisError, kombu.exceptions.OperationalError) as error:
        return _unreachable("Redis", redact_url(get_settings().redis_url), "IMAGINEQ_REDIS_URL", error)
    except ValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return EXIT_USAGE
    except (ImagineQError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:
        # botocore's errors, matched by module: importing botocore here would slow every command down.
        if not type(error).__module__.startswith("botocore."):
            raise
        endpoint = get_settings().s3.endpoint_url
        return _unreachable("S3", redact_url(endpoint) if endpoint else "AWS S3", "IMAGINEQ_S3__*", error)
    return code


if __name__ == "__main__":
    sys.exit(main())
