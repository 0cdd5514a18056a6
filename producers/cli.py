"""The ``imagineq`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
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
    )
    if args.wait:
        job = producer.wait(job.id, timeout=args.timeout)
    print(json.dumps(job.to_dict(), indent=2) if args.json else _job_table(job))
    if args.wait and job.state.value != "stored":
        return EXIT_FAILED
    return EXIT_OK


def _cmd_job(args: argparse.Namespace) -> int:
    from producers.api import Producer

    job = Producer().get(args.job_id)
    if job is None:
        print(f"error: job {args.job_id} not found", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(job.to_dict(), indent=2) if args.json else _job_table(job))
    return EXIT_OK


def _cmd_resubmit(args: argparse.Namespace) -> int:
    from producers.api import Producer
    from workers.jobs import JobState

    producer = Producer()
    job = producer.get(args.job_id)
    if job is None:
        print(f"error: job {args.job_id} not found", file=sys.stderr)
        return EXIT_FAILED
    if job.state is not JobState.FAILED:
        print(f"error: job {job.id} is {job.state.value}; only failed jobs can be resubmitted", file=sys.stderr)
        return EXIT_FAILED
    if job.reason == "outcome_unknown" and job.account:
        # Its first task may still run upstream: that slot stays taken on its own, and this attempt
        # takes (and logs) a slot and a creation of its own.
        from workers.quota import QuotaLimiter

        QuotaLimiter.for_settings(producer.redis, producer.keys, producer.settings).detach_hold(job.account, job.id)
    if not producer.jobs.transition(
        job.id,
        JobState.QUEUED,
        expect=JobState.FAILED,
        fields={
            "reason": None,
            "error": None,
            "task_id": None,
            "account": None,
            "create_sent_at": None,
            "submit_attempts": None,
        },
    ):
        print(f"error: job {job.id} changed state meanwhile; look again", file=sys.stderr)
        return EXIT_FAILED
    refreshed = producer.get(job.id)
    assert refreshed is not None
    producer.publish(refreshed)
    print(f"job {job.id} queued again (was failed: {job.reason})")
    return EXIT_OK


def _cmd_simulator(rest: Sequence[str]) -> int:
    # A process of its own, not an import: the simulator stands apart from the producers.
    return subprocess.call([sys.executable, "-m", "simulator", *rest])


def _cmd_demo(_: argparse.Namespace) -> int:
    # The demo lives with the local development services (a checkout, not the installed package).
    return subprocess.call([sys.executable, "-m", "devstack.demo"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagineq", description="Text prompts to stored Grok Imagine videos.")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="enqueue one prompt")
    submit.add_argument("prompt")
    submit.add_argument("--aspect-ratio", default="2:3", help="2:3 (default), 3:2 or 1:1")
    submit.add_argument("--mode", default="normal", help="fun, normal (default) or spicy")
    submit.add_argument("--idempotency-key", default=None, help="the same key returns the same job")
    submit.add_argument("--wait", action="store_true", help="wait until the job is terminal")
    submit.add_argument("--timeout", type=float, default=1200.0, help="seconds to --wait (default 1200)")
    submit.add_argument("--json", action="store_true", help="print the job record as JSON")
    submit.set_defaults(handler=_cmd_submit)

    job = commands.add_parser("job", help="show one job")
    job.add_argument("job_id")
    job.add_argument("--json", action="store_true")
    job.set_defaults(handler=_cmd_job)

    resubmit = commands.add_parser("resubmit", help="queue a failed job again (e.g. outcome_unknown)")
    resubmit.add_argument("job_id")
    resubmit.set_defaults(handler=_cmd_resubmit)

    commands.add_parser("simulator", help="run the Apikley simulator (see `imagineq simulator --help`)", add_help=False)
    demo = commands.add_parser("demo", help="run the end-to-end demo on private local services")
    demo.set_defaults(handler=_cmd_demo)

    # Command groups that live in their own modules register themselves here.
    for module_name in EXTENSIONS:
        module = importlib.import_module(module_name)
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from config.settings import get_settings
    from workers.errors import ImagineQError, ValidationError
    from workers.logs import configure_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulator"]:
        return _cmd_simulator(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        # Log lines (WARNING and up unless IMAGINEQ_LOG_LEVEL) go to stderr, secrets redacted.
        configure_logging(get_settings(), service="cli", level="WARNING")
        code: int = args.handler(args)
    except ValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return EXIT_USAGE
    except (ImagineQError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
