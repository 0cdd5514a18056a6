"""Liveness for container probes: a worker's or beat's main loop touches a file, a probe reads its age.

A worker's main process sends an event heartbeat every couple of seconds from its event loop (``-E``, as
every Procfile worker runs); beat ticks at least every few seconds. Each touches the file named by the
``alive_file`` setting (``IMAGINEQ_ALIVE_FILE``; unset: nothing is written). The probe, ``python -m
workers.liveness --max-age 120``, fails when the file is older than that: the loop is wedged or the process stopped
sending (a broker away for that long included: restarting then costs nothing, the messages are acked
late and come back). Unlike ``celery inspect ping`` it starts no Celery app and sends nothing through
the broker: a probe costs a settings load and a stat call.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Final

from config.settings import get_settings

#: The ``alive_file`` setting's variable.
ALIVE_FILE_ENV: Final = "IMAGINEQ_ALIVE_FILE"
#: At most one touch per this many seconds (heartbeats come every 2 s; beat may tick more often).
TOUCH_EVERY_S: Final = 5.0

_last_touch = 0.0


def touch() -> None:
    """Mark the process alive (at most every ``TOUCH_EVERY_S``); nothing when no file is configured."""
    global _last_touch
    path = get_settings().alive_file
    now = time.monotonic()
    if not path or now - _last_touch < TOUCH_EVERY_S:
        return
    _last_touch = now
    # A read-only or missing directory: the probe then fails, which is what it should report.
    with contextlib.suppress(OSError):
        Path(path).touch()


def on_heartbeat(**_: Any) -> None:
    """Celery's ``heartbeat_sent`` receiver (connected by ``workers.celery``)."""
    touch()


def age_s(path: Path) -> float | None:
    """Seconds since ``path`` was last touched, or None when it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when the process touched its alive file lately.")
    parser.add_argument("--max-age", type=float, default=120.0, help="seconds (default 120)")
    parser.add_argument("--file", help=f"default: the alive_file setting (${ALIVE_FILE_ENV})")
    args = parser.parse_args(argv)
    if not args.file:
        args.file = get_settings().alive_file
    if not args.file:
        print(f"no alive file: set {ALIVE_FILE_ENV} or --file", file=sys.stderr)
        return 2
    age = age_s(Path(args.file))
    if age is None:
        print(f"{args.file} does not exist yet", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"{args.file} last touched {age:.0f} s ago (> {args.max_age:.0f} s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
