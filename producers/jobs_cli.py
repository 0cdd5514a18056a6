"""``imagineq submit|job|jobs|resubmit|cancel|fetch|watch``: one job at a time, from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from core.catalog import MODELS
from producers.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from producers.job_views import duration_text, event_line, follow, job_table

MODEL_NAMES = tuple(MODELS)


def _model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The model's fields given on the command line: the flags of the common ones, ``--field NAME=VALUE``
    (a JSON value, else text) for any other."""
    from pathlib import Path

    fields: dict[str, Any] = {}
    for name in ("aspect_ratio", "mode", "duration", "resolution", "parent", "index", "extend_at", "extend_times"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    images: list[Any] = [
        image if image.startswith(("http://", "https://", "s3://")) else Path(image) for image in args.image or []
    ]
    if images:
        # image-to-image takes a list (images), the others one image.
        fields["images" if args.model in ("image-to-image", "grok-imagine/image-to-image") else "image"] = (
            images if len(images) > 1 or args.model in ("image-to-image", "grok-imagine/image-to-image") else images[0]
        )
    for item in args.field or []:
        name, equals, text = item.partition("=")
        if not equals or not name:
            raise ValueError(f"--field {item!r}: must be NAME=VALUE")
        try:
            fields[name] = json.loads(text)
        except ValueError:
            fields[name] = text
    return fields


def _cmd_submit(args: argparse.Namespace) -> int:
    from producers.api import Producer

    try:
        fields = _model_fields(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    producer = Producer()
    job = producer.enqueue(
        args.prompt,
        model=args.model,
        idempotency_key=args.idempotency_key,
        notify_url=args.notify_url,
        **fields,
    )
    # The id at once (on stderr with --json, which keeps stdout one JSON document).
    estimate = f" (estimate {job.estimate:g} credits)" if job.estimate is not None else ""
    print(f"job {job.id} {job.state.value}{estimate}", file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.wait:
        job = follow(producer, job, timeout_s=args.timeout, out=sys.stderr if args.json else sys.stdout)
    print(json.dumps(job.to_dict(), indent=2) if args.json else job_table(job))
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
    print(job_table(job))
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
    from producers.api import Producer
    from producers.rules import NotCancelable

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
            duration_text(now - job.created_at),
            "" if took is None else duration_text(took),
            job.account or "",
            job.prompt if len(job.prompt) <= 48 else job.prompt[:47] + "…",
        )
    # Not on a terminal (a pipe, a file): wide enough that no id is cut short.
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    return EXIT_OK


def _cmd_fetch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from producers.api import Producer

    producer = Producer()
    job = find_job(producer, args.job_id)
    if job is None:
        return EXIT_FAILED
    outputs = job.outputs or [{"index": 0, "uri": job.s3_uri or ""}]
    chosen = [o for o in outputs if args.index is None or o.get("index") == args.index]
    if not chosen:
        print(f"error: job {job.id} has {len(outputs)} output(s); there is no --index {args.index}", file=sys.stderr)
        return EXIT_USAGE
    for output in chosen:
        index = int(output.get("index", 0))
        extension = str(output.get("uri", "")).rpartition(".")[2] or "mp4"
        name = f"{job.id}.{extension}" if len(outputs) == 1 else f"{job.id}-{index}.{extension}"
        target = Path(args.path or name)
        if target.is_dir():
            target = target / name
        elif len(chosen) > 1:
            target = target.with_name(f"{target.stem}-{index}{target.suffix or '.' + extension}")
        try:
            digest = producer.download(job, target, index=index)
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
                    print(event_line(producer, event, as_json=args.json), flush=True)
                    shown += 1
                    if args.count is not None and shown >= args.count:
                        return EXIT_OK
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def register(commands: Any) -> None:
    from core.jobs import JobState as JobStateNames

    submit = commands.add_parser("submit", help="enqueue one job (a prompt, an image, a parent job)")
    submit.add_argument("prompt", nargs="?", default=None, help="what to make (optional for some models)")
    submit.add_argument(
        "--model", default="text-to-video", help=f"the model: {', '.join(MODEL_NAMES)} (default text-to-video)"
    )
    submit.add_argument("--aspect-ratio", default=None, help="2:3 (default), 3:2, 1:1, 16:9 or 9:16")
    submit.add_argument("--mode", default=None, help="fun, normal (default) or spicy")
    submit.add_argument("--duration", default=None, help="seconds of video: 6 (default), 10 or 15")
    submit.add_argument("--resolution", default=None, help="480p (default) or 720p")
    submit.add_argument(
        "--image", action="append", default=None, metavar="PATH|URL", help="an image file, URL or s3:// object"
    )
    submit.add_argument("--parent", default=None, help="the job an upscale, extend or image-to-video starts from")
    submit.add_argument("--index", type=int, default=None, help="which image of the parent (image-to-video)")
    submit.add_argument("--extend-at", type=int, default=None, help="extend: where to continue from (seconds)")
    submit.add_argument("--extend-times", default=None, help="extend: seconds to add, 6 or 10")
    submit.add_argument(
        "--field", action="append", default=None, metavar="NAME=VALUE", help="any other field of the model"
    )
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
    fetch.add_argument(
        "path", nargs="?", default=None, help="file or folder to write (default ./JOB_ID.mp4, ./JOB_ID-N.png ...)"
    )
    fetch.add_argument("--index", type=int, default=None, help="only output N (default: every output)")
    fetch.set_defaults(handler=_cmd_fetch)

    watch = commands.add_parser("watch", help="print events as jobs end and batches finish (Ctrl-C stops)")
    watch.add_argument("--batch", default=None, help="only this batch's events")
    watch.add_argument("--job", default=None, help="only this job's events (its full id)")
    watch.add_argument("--after", default=None, help="start after this event id (default: from now on)")
    watch.add_argument("--count", type=int, default=None, help="stop after this many events")
    watch.add_argument("--json", action="store_true", help="one JSON object per event")
    watch.set_defaults(handler=_cmd_watch)
