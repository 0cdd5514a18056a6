"""``make demo`` and ``make run``, as a newcomer runs them (their Python entry points, after ``make install``)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.deployment import wait_until

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


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


def test_make_run_serves_the_whole_procfile_until_stopped(tmp_path: Path) -> None:
    env_file = tmp_path / "run.env"
    run = subprocess.Popen(
        [sys.executable, "-m", "devstack.run", "--env-file", str(env_file), "--simulator-args", "--gen-time 0.3:0.8"],
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
        child_env = {**clean_env(), **settings_env}
        submitted = subprocess.run(
            [str(CLI), "submit", "A make run smoke test", "--wait", "--timeout", "90"],
            env=child_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "stored" in submitted.stdout
        status = subprocess.run(
            [str(CLI), "status", "--json", "--no-credits"], env=child_env, cwd=tmp_path, capture_output=True, text=True
        )
        assert status.returncode == 0, status.stderr
    finally:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        started = time.monotonic()
        code = run.wait(timeout=90)
        output = run.stdout.read() if run.stdout else ""
    assert code == 0, output[-3000:]
    assert time.monotonic() - started < 60
    assert not env_file.exists()  # removed when it stops
