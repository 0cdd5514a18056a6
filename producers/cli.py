"""The ``imagineq`` command line."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Sequence

from config.settings import ConfigError
from producers.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE

#: Modules with a ``register(subparsers)`` function adding their commands (each handler returns an exit code).
EXTENSIONS: tuple[str, ...] = (
    "producers.jobs_cli",
    "producers.batch_cli",
    "producers.status_cli",
    "producers.workflows_cli",
    "producers.costs_cli",
)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagineq", description="Text prompts to stored Grok Imagine videos.")
    commands = parser.add_subparsers(dest="command", required=True)

    secret = commands.add_parser(
        "notify-secret", help="print the secret a principal's notify_url webhooks are signed with (for its receiver)"
    )
    secret.add_argument("principal", nargs="?", default=None, help="the principal (default: jobs without one)")
    secret.set_defaults(handler=_cmd_notify_secret)

    commands.add_parser("simulator", help="run the Apikley simulator (see `imagineq simulator --help`)", add_help=False)

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
