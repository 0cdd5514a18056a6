"""The liveness probe of workers and beat (``python -m workers.liveness``, what the Kubernetes manifests
run): real worker and beat processes touch their alive file while their main loop runs, and the probe
fails once a process stops (here: frozen with SIGSTOP, as a wedged loop looks from outside)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import services
from devstack.deployment import Deployment, deployment, wait_until
from workers.liveness import ALIVE_FILE_ENV

pytestmark = pytest.mark.integration


def probe(alive: Path, max_age_s: float) -> int:
    argv = [sys.executable, "-m", "workers.liveness", "--file", str(alive), "--max-age", str(max_age_s)]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("liveness"), workers={}) as deployed:
        yield deployed


@pytest.mark.parametrize("process", ["worker", "beat"])
def test_the_probe_passes_while_the_loop_runs_and_fails_once_it_stops(
    dep: Deployment, tmp_path: Path, process: str
) -> None:
    alive = tmp_path / "alive"
    env = {**dep.env, ALIVE_FILE_ENV: str(alive)}
    assert probe(alive, 120) == 1  # never touched: a process that never started its loop is not alive
    if process == "worker":
        service = services.start_worker(dep.stack, env, "poll", concurrency=1)
    else:
        service = services.start_beat(dep.stack, env)
    try:
        wait_until(alive.exists, 60, f"{process} to touch its alive file")
        assert probe(alive, 120) == 0
        first = alive.stat().st_mtime
        wait_until(lambda: alive.stat().st_mtime > first, 30, f"{process} to touch its alive file again")
        os.kill(service.process.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: probe(alive, 3) == 1, 30, f"the probe to fail for a frozen {process}")
        finally:
            os.kill(service.process.pid, signal.SIGCONT)
    finally:
        service.stop()


def test_the_probe_without_a_file_named_says_so(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name != ALIVE_FILE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "workers.liveness"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert done.returncode == 2 and ALIVE_FILE_ENV in done.stderr
