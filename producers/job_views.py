"""How the command line shows jobs: a job as a person reads it, a wait on one, an event as a line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def size_text(n: Any) -> str | None:
    """``10,190 bytes`` everywhere the CLI shows a size."""
    return f"{int(n):,} bytes" if isinstance(n, int) else None


def when_text(at: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else None


def job_table(job: Any) -> str:
    """A job as a person reads it: what was asked, where it is, what came of it, and its timeline."""
    rows: list[tuple[str, Any]] = [
        ("job", job.id),
        ("state", job.state.value),
        ("model", job.model),
        ("prompt", job.prompt),
        *((name.replace("_", " "), value) for name, value in job.input.items() if not isinstance(value, dict | list)),
        ("created", when_text(job.created_at)),
        ("estimate", None if job.estimate is None else f"{job.estimate:g} credits"),
        ("charged", None if job.charged is None else f"{job.charged:g} credits ({job.credits})"),
        ("reason", job.reason),
        ("error", job.error),
        ("account", job.account),
        ("task", job.task_id),
        ("s3", job.s3_uri),
        ("size", size_text(job.size)),
        ("sha256", job.sha256),
    ]
    if len(job.outputs) > 1:
        rows += [
            (f"out {o['index']}", f"{o['uri']} ({o.get('content_type')}, {size_text(o.get('size'))})")
            for o in job.outputs
        ]
    for attempt in job.history:
        rows.append(
            ("earlier", f"{attempt.get('reason')}: {attempt.get('error') or ''} (task {attempt.get('task_id')})")
        )
    moments = sorted((at, state) for state, at in job.timestamps.items() if at)
    steps = "  ".join(f"{state} {time.strftime('%H:%M:%S', time.gmtime(at))}" for at, state in moments)
    rows.append(("timeline", steps))
    return "\n".join(f"{name:12} {value}" for name, value in rows if value not in (None, ""))


def follow(producer: Any, job: Any, *, timeout_s: float, out: Any) -> Any:
    """Wait for ``job`` to end; TimeoutError past ``timeout_s``. On a terminal a live line shows the state
    and the time so far; otherwise a line is printed at each state the job moves to."""
    from rich.console import Console

    started = time.monotonic()
    state = job.state
    live = out.isatty() if hasattr(out, "isatty") else False
    console = Console(file=out)
    with console.status(f"{state.value} 0.0s", spinner="dots") if live else _nothing() as status:
        while not job.state.terminal:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"job {job.id} is still {job.state.value} after {timeout_s:.0f}s")
            time.sleep(0.25)
            job = producer.get(job.id) or job
            elapsed = time.monotonic() - started
            if status is not None:
                status.update(f"{job.state.value} {elapsed:.1f}s")
            if job.state is not state:
                state = job.state
                if status is None:
                    print(f"{elapsed:6.1f}s  {state.value}", file=out, flush=True)
    return job


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def event_line(producer: Any, event: Any, *, as_json: bool) -> str:
    job = producer.get(event.job_id) if event.job_id else None
    if as_json:
        data = event.to_dict()
        if job is not None:
            data["job"] = job.public_dict()
        return json.dumps(data, ensure_ascii=False)
    when = time.strftime("%H:%M:%S", time.gmtime(event.at))
    if event.job_id is None and event.details:
        return f"{when}  {event.type:16} " + " ".join(f"{name} {value}" for name, value in event.details.items())
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
