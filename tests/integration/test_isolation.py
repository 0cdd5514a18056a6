"""No test, bench or demo can reach a real account: settings never leak from the shell or a .env file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from devstack import services
from devstack.services import LocalStack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REAL = [{"name": "prod", "api_key": "sk-live-do-not-use", "base_url": "https://api.apikley.ru"}]
PRINT_SETTINGS = (
    "import json; from config.settings import load_settings; s = load_settings(); "
    "print(json.dumps({'accounts': [[a.name, a.base_url] for a in s.accounts], 'redis': s.redis_url}))"
)


def test_the_test_process_itself_sees_no_settings_of_the_shell_and_no_dotenv() -> None:
    assert not [name for name in os.environ if name.startswith("IMAGINEQ_")]
    assert Path.cwd() != REPO and not (Path.cwd() / ".env").exists()


def test_a_child_process_sees_only_the_settings_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A developer's shell exports a real account, and a .env with another sits where the test runs.
    monkeypatch.setenv("IMAGINEQ_ACCOUNTS", json.dumps(REAL))
    monkeypatch.setenv("IMAGINEQ_REDIS_URL", "redis://prod-redis.internal:6379/0")
    (Path.cwd() / ".env").write_text(f"IMAGINEQ_ACCOUNTS='{json.dumps(REAL)}'\n")
    try:
        with LocalStack(tmp_path) as stack:
            given = {"IMAGINEQ_API_KEY": "sim-key", "IMAGINEQ_UPSTREAM_BASE_URL": "http://127.0.0.1:9"}
            child = stack.spawn("settings", [sys.executable, "-c", PRINT_SETTINGS], given)
            assert child.process.wait(timeout=30) == 0, child.log_tail()
            seen = json.loads(child.log_tail().splitlines()[-1])
    finally:
        (Path.cwd() / ".env").unlink()
    assert seen == {"accounts": [["default", "http://127.0.0.1:9"]], "redis": "redis://127.0.0.1:6379/0"}


@pytest.mark.parametrize(
    "env",
    [
        {"IMAGINEQ_API_KEY": "k"},  # no base URL: the real upstream
        {"IMAGINEQ_API_KEY": "k", "IMAGINEQ_UPSTREAM_BASE_URL": "https://api.apikley.ru"},
        {"IMAGINEQ_ACCOUNTS": json.dumps(REAL)},
        {"IMAGINEQ_ACCOUNTS": json.dumps([{"name": "a", "api_key": "k", "base_url": "http://10.0.0.8:8900"}])},
    ],
)
def test_no_worker_starts_against_an_upstream_other_than_a_local_simulator(tmp_path: Path, env: dict[str, str]):
    with LocalStack(tmp_path) as stack, pytest.raises(services.ServiceError, match="refusing to start a worker"):
        services.start_worker(stack, env, "submit")
    assert not list(tmp_path.glob("worker-*.log"))  # refused before anything was spawned


def test_a_local_simulator_is_accepted() -> None:
    for url in ("http://127.0.0.1:8900", "http://localhost:1", "http://[::1]:8900"):
        services.require_local_upstream({"IMAGINEQ_API_KEY": "k", "IMAGINEQ_UPSTREAM_BASE_URL": url})
