"""``make demo`` and ``make run``, as a newcomer runs them (their Python entry points, after ``make install``)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import pytest
import requests

from devstack.deployment import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "imagineq"


def clean_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("IMAGINEQ_")}


def test_make_demo_stores_every_prompt_but_the_moderated_one() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "devstack.demo"], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=240
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "5 videos stored in S3; the moderated prompt failed with its reason." in demo.stdout
    assert "Tearing down the private services" in demo.stdout
    # Each stored video was copied out of S3 as a playable file that outlives the demo.
    copies = [
        Path(line.strip())
        for line in demo.stdout.splitlines()
        if line.strip().startswith("/") and line.strip().endswith(".mp4")
    ]
    assert len(copies) == 5, demo.stdout
    for path in copies:
        assert path.parent == REPO / "var" / "demo"
        with av.open(str(path)) as container:
            (stream,) = container.streams.video
            assert stream.codec_context.name == "h264"
            width, height = (int(side) for side in path.stem.split("-")[1].split("x"))
            assert stream.width * height == stream.height * width


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


@contextmanager
def make_run(tmp_path: Path, data_dir: Path) -> Iterator[dict[str, str]]:
    """``make run`` (its entry point) until the block ends, then Ctrl-C; yields the CLI's environment."""
    env_file = tmp_path / "run.env"
    argv = [sys.executable, "-m", "devstack.run", "--env-file", str(env_file), "--data-dir", str(data_dir)]
    run = subprocess.Popen(
        [*argv, "--simulator-args", "--gen-time 0.3:0.8"],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(env_file.exists, 60, "make run to write its env file")
        settings_env = read_env_file(env_file)
        web = f"http://127.0.0.1:{settings_env['PORT']}"

        def web_up() -> bool:
            try:
                return requests.get(f"{web}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(web_up, 90, "the Procfile's web process")
        yield {**clean_env(), **settings_env}
    finally:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        started = time.monotonic()
        code = run.wait(timeout=90)
        output = run.stdout.read() if run.stdout else ""
    assert code == 0, output[-3000:]
    assert time.monotonic() - started < 60
    assert not env_file.exists()  # removed when it stops


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_make_run_serves_the_whole_procfile_and_keeps_what_it_stored_for_the_next_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "var-run"
    with make_run(tmp_path, data_dir) as env:
        submitted = cli(env, tmp_path, "submit", "A make run smoke test", "--aspect-ratio", "1:1", "--wait")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "stored" in submitted.stdout
        job_id = submitted.stdout.split()[1]  # "job ID queued"
        status = cli(env, tmp_path, "status", "--json", "--no-credits")
        assert status.returncode == 0, status.stderr
        first = cli(env, tmp_path, "fetch", job_id, str(tmp_path / "first.mp4"))
        assert first.returncode == 0, first.stdout + first.stderr
    kept = {path.name for path in data_dir.iterdir()}
    assert {"redis", "s3"} <= kept and any(name.startswith("flower.db") for name in kept), kept  # Flower's shelve
    assert any((data_dir / "redis").rglob("*.aof")), "Redis kept no append-only file"

    # The next run, on new ports, has the job and its video.
    with make_run(tmp_path, data_dir) as env:
        shown = cli(env, tmp_path, "job", job_id, "--json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert json.loads(shown.stdout)["state"] == "stored"
        again = cli(env, tmp_path, "fetch", job_id, str(tmp_path / "again.mp4"))
        assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "again.mp4").read_bytes() == (tmp_path / "first.mp4").read_bytes()
    with av.open(str(tmp_path / "again.mp4")) as container:
        (stream,) = container.streams.video
        assert stream.codec_context.name == "h264" and stream.width == stream.height


def test_make_demo_keep_leaves_a_deployment_the_cli_flower_and_metrics_can_use(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "devstack.demo", "--keep", "--dir", str(folder)],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "The services run until Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "The services run until Ctrl-C" in output, output[-3000:]
        env_file = folder / "demo.env"
        # The files holding credentials and tokens are this user's alone, and no secret is printed.
        for name in ("demo.env", "ops.token", "dashboard.token"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600, name
        ops_token = (folder / "ops.token").read_text().strip()
        settings_env = read_env_file(env_file)
        assert ops_token not in output and settings_env["IMAGINEQ_S3__SECRET_ACCESS_KEY"] not in output
        env = {**clean_env(), **settings_env}
        # The CLI line it prints works: the demo's jobs are listed, and a video can be fetched.
        assert f"set -a; . {env_file}; set +a; imagineq jobs" in output
        jobs = cli(env, tmp_path, "jobs", "--json")
        assert jobs.returncode == 0, jobs.stderr
        listed = json.loads(jobs.stdout)
        stored = [job for job in listed if job["state"] == "stored"]
        assert len(listed) == 6 and len(stored) == 5, listed
        fetched = cli(env, tmp_path, "fetch", stored[0]["id"], str(tmp_path / "video.mp4"))
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        # /metrics takes the ops token from its file; /docs is on; Flower asks for its login.
        web = next(line.split()[1] for line in output.splitlines() if line.strip().startswith("dashboard"))
        web = web.rstrip("/")
        assert requests.get(f"{web}/metrics", timeout=10).status_code == 401
        metrics = requests.get(f"{web}/metrics", headers={"Authorization": f"Bearer {ops_token}"}, timeout=10)
        assert metrics.status_code == 200 and "imagineq_jobs" in metrics.text
        assert requests.get(f"{web}/docs", timeout=10).status_code == 200
        flower = next(line.split()[1] for line in output.splitlines() if line.strip().startswith("flower"))
        user, _, password = settings_env["FLOWER_BASIC_AUTH"].partition(":")

        def flower_up() -> bool:
            try:
                return requests.get(flower, auth=(user, password), timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(flower_up, 60, "Flower")
        assert requests.get(flower, timeout=10).status_code == 401
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        demo.wait(timeout=90)
    assert not (folder / "demo.env").exists()  # the credentials go with the services
