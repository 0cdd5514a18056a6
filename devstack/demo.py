"""``make demo``: the whole pipeline on private local services, shown live.

Starts a private Redis (or uses ``IMAGINEQ_REDIS_URL`` when reachable), a SeaweedFS S3 server, the
Apikley simulator and one Celery worker per queue; enqueues a handful of varied prompts (one of which the
simulator's moderation rejects); shows the job states live; prints where every video landed in S3 and
copies each one out as a playable ``.mp4`` under ``var/demo/`` in the checkout (git-ignored: the last run's
videos only), which outlives the run; tears everything down. Exits non-zero if a job that should have been
stored was not.

With ``--keep`` (``make demo KEEP=1``) everything stays up until Ctrl-C, with Flower and the web's ``/docs``
too, and ``var/demo/demo.env`` (mode 0600: it holds the credentials) sets up a shell for the CLI; the
dashboard's and ``/metrics``' tokens are in ``var/demo/dashboard.token`` and ``var/demo/ops.token``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import sys
import time
import uuid
from pathlib import Path

import requests
from rich.console import Console
from rich.live import Live
from rich.table import Table

from config.settings import load_settings
from core.jobs import Job, JobState
from devstack import services
from producers.api import Producer
from producers.status_cli import STATE_STYLE

PROMPTS: list[tuple[str, str, str]] = [
    ("A red fox trots through fresh snow at dawn, slow tracking shot", "3:2", "normal"),
    ("Paper boats race down a rain gutter, macro lens, playful", "1:1", "fun"),
    ("A lighthouse beam sweeps over a stormy sea, dramatic push-in", "2:3", "spicy"),
    ("Timelapse of a city skyline from dusk to night, lights flicker on", "3:2", "normal"),
    ("A cat in a spacesuit floats past a porthole, gentle rotation", "2:3", "fun"),
    ("forbidden content that the upstream moderation refuses", "1:1", "normal"),
]
MODERATION_WORD = "forbidden"
DEADLINE_S = 240.0
DEMO_DIR = services.REPO_ROOT / "var" / "demo"


def _write_private(folder: Path, name: str, text: str) -> Path:
    """A file under ``folder`` readable by this user only (tokens, credentials: never printed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    return path


def _env_file(env: dict[str, str]) -> str:
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def _copy_out(producer: Producer, jobs: list[Job], folder: Path) -> list[Path]:
    """Each stored video as ``<folder>/<job id>-<aspect>-<mode>.mp4``, checked against its sha256; the
    videos of earlier runs are removed first."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.mp4"):
        old.unlink()
    paths = []
    for job in jobs:
        path = folder / f"{job.id}-{(job.aspect_ratio or '').replace(':', 'x')}-{job.mode}.mp4"
        producer.download(job, path)
        paths.append(path)
    producer.close()
    return paths


def _table(jobs: list[Job], started: float, final: bool = False) -> Table:
    title = "ImagineQ demo — results" if final else f"ImagineQ demo — {time.monotonic() - started:5.1f}s"
    table = Table(title=title)
    for column in ("job", "prompt", "state", "S3 object / reason", "size", "time"):
        # One line per job at any width: long values end in an ellipsis, never mid-word on five lines.
        table.add_column(column, overflow="ellipsis", no_wrap=True, min_width=5)
    for job in jobs:
        end = job.updated_at if job.state.terminal else time.time()
        where = job.s3_uri.rsplit("/", 1)[-1] if job.s3_uri else (job.reason or "")
        size = _size(job.size) if job.size else ""
        style = STATE_STYLE.get(job.state.value, "white")
        table.add_row(
            job.id[:12], job.prompt, f"[{style}]{job.state.value}[/]", where, size, f"{end - job.created_at:5.1f}s"
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the services (and the dashboard) running until Ctrl-C (make demo KEEP=1)",
    )
    parser.add_argument(
        "--dir", type=Path, default=DEMO_DIR, help=f"where the videos and files go (default {DEMO_DIR})"
    )
    args = parser.parse_args(argv)
    folder: Path = args.dir
    console = Console(width=None if sys.stdout.isatty() else 150)
    with services.terminate_on_signals(), services.LocalStack() as stack:
        console.print("[bold]Starting private services[/] (Redis, S3 server, simulator, web, 3 workers)…")
        redis_url = stack.redis(os.environ.get("IMAGINEQ_REDIS_URL"))
        s3 = stack.s3()
        simulator = stack.simulator(
            ["--gen-time", "4:9", "--moderation-words", MODERATION_WORD]  # results: playable clips
        )
        web_socket = services.reserve_port()
        web_port = web_socket.getsockname()[1]
        token, ops_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        env = services.deployment_env(
            redis_url=redis_url,
            s3=s3,
            simulator_url=simulator.url,
            bucket="imagineq-demo",
            extra={
                "IMAGINEQ_REDIS_PREFIX": f"demo-{uuid.uuid4().hex[:8]}",
                # The simulator calls the web back when a video is ready; polling is only a safety net.
                "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
                "IMAGINEQ_INGRESS_TOKENS": json.dumps([token]),
                "IMAGINEQ_OPS_TOKENS": json.dumps([ops_token]),
                "IMAGINEQ_DOCS_ENABLED": "true" if args.keep else "false",
            },
        )
        web = services.start_web(stack, env, sock=web_socket)
        for queue in ("submit", "poll", "store"):
            services.start_worker(stack, env, queue, concurrency=2)
        console.print(f"  redis {redis_url}  s3 {s3.url}  simulator {simulator.url}  web {web.url}")

        os.environ.update(env)
        settings = load_settings()
        producer = Producer(settings)
        started = time.monotonic()
        jobs = [producer.enqueue(p, aspect_ratio=ar, mode=mode) for p, ar, mode in PROMPTS]
        # The live table goes away when it is done: the results are printed once, below it.
        with Live(_table(jobs, started), console=console, refresh_per_second=4, transient=True) as live:
            while time.monotonic() - started < DEADLINE_S:
                jobs = [producer.get(job.id) or job for job in jobs]
                live.update(_table(jobs, started))
                if all(job.state.terminal for job in jobs):
                    break
                time.sleep(0.5)
        console.print()
        console.print(_table(jobs, started, final=True))
        for job in jobs:
            if job.s3_uri:
                console.print(f"  {job.id[:12]}  {job.s3_uri}", overflow="ellipsis", no_wrap=True)
            elif job.error:
                console.print(f"  {job.id[:12]}  {job.reason}: {job.error}")

        missing = [job for job in jobs if MODERATION_WORD not in job.prompt and job.state is not JobState.STORED]
        moderated = [job for job in jobs if MODERATION_WORD in job.prompt]
        producer.close()
        stats = requests.get(f"{simulator.url}/__sim__/stats", timeout=5).json()
        console.print(
            f"Upstream saw {stats['created']} creations, {stats['rate_limited']} rate-limited answers, "
            f"{stats['record_info_calls']} recordInfo calls and {stats['callbacks_delivered']} delivered callbacks."
        )
        if missing:
            console.print(f"[red]{len(missing)} job(s) that should have been stored were not.[/]")
            for service in stack.services:
                console.print(f"[dim]--- {service.name} (last lines)[/]\n{service.log_tail(15)}")
            return 1
        if any(job.state is not JobState.FAILED for job in moderated):
            console.print("[red]The moderated prompt was not failed by the upstream.[/]")
            return 1
        stored = [job for job in jobs if job.state is JobState.STORED]
        console.print(f"[green]{len(stored)} videos stored in S3; the moderated prompt failed with its reason.[/]")
        copies = _copy_out(Producer(settings), stored, folder)
        console.print(f"Copied out of S3 (they outlive the demo; [bold]rm -rf {folder}[/] cleans up):")
        for path in copies:
            console.print(f"  {path}")
        token_file = _write_private(folder, "dashboard.token", token + "\n")
        if not args.keep:
            console.print("To keep the services, the dashboard, Flower and the CLI after the run: make demo KEEP=1")
        else:
            flower_port = services.free_port()
            flower_auth = f"admin:{secrets.token_urlsafe(12)}"
            services.start_flower(stack, env, flower_port, flower_auth, folder / "flower.db")
            env_file = _write_private(folder, "demo.env", _env_file({**env, "FLOWER_BASIC_AUTH": flower_auth}))
            ops_file = _write_private(folder, "ops.token", ops_token + "\n")
            console.print(
                f"\n  dashboard  {web.url}/   (sign in with the token in {token_file})\n"
                f"  API docs   {web.url}/docs\n"
                f'  metrics    curl -H "Authorization: Bearer $(cat {ops_file})" {web.url}/metrics\n'
                f"  flower     http://127.0.0.1:{flower_port}/   (user admin; password in {env_file})\n"
                f"  simulator  {simulator.url}\n"
                f"  CLI        set -a; . {env_file}; set +a; imagineq jobs\n\n"
                "The services run until Ctrl-C."
            )
            with contextlib.suppress(KeyboardInterrupt):
                while all(service.alive() for service in stack.services):
                    time.sleep(1)
            env_file.unlink(missing_ok=True)
        console.print("Tearing down the private services…")
    return 0


if __name__ == "__main__":
    sys.exit(main())
