"""The Prometheus rules and the Grafana board against a real Prometheus (Debian's package): promtool's own
checks and unit tests of every alert, then a Prometheus scraping a running deployment's ``/metrics`` with its
ops token, where every recording rule and every panel query of the board returns series."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from core.jobs import JobState
from devstack import services
from devstack.deployment import Deployment, deployment, wait_until
from devstack.processes import free_port

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "imagineq-rules.yml"
BOARD = DEPLOY / "grafana" / "imagineq.json"
OPS = "prometheus-ops-token-0123456789abcdef"


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules_and_every_alert_fires_when_it_should() -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        ["promtool", "test", "rules", "imagineq-rules.test.yml"], cwd=RULES.parent, capture_output=True, text=True
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tests = (RULES.parent / "imagineq-rules.test.yml").read_text()
    assert {alert for alert in alerts if alert not in tests} == set()  # every alert has a test


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(
        tmp_path_factory.mktemp("prometheus"),
        env={"IMAGINEQ_OPS_TOKENS": json.dumps([OPS]), "IMAGINEQ_CREDITS__BALANCE_INTERVAL_S": "5"},
    ) as deployed:
        services.start_beat(deployed.stack, deployed.env)
        yield deployed


def start_prometheus(dep: Deployment, web_url: str, folder: Path) -> str:
    """Prometheus scraping ``web_url`` every second with the ops token, evaluating the rules every second
    (the same rules, their groups' interval shortened: the test cannot wait 30 s per evaluation)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
    (folder / "rules.yml").write_text(yaml.safe_dump(rules))
    (folder / "ops.token").write_text(OPS)
    host = web_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(folder / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "imagineq",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(folder / "ops.token")},
                "static_configs": [{"targets": [host]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        "prometheus",
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    dep.stack.spawn("prometheus", argv)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(url), 60, "Prometheus to start")
    return url


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def test_every_recording_rule_and_panel_query_returns_series_on_a_real_prometheus(dep: Deployment, tmp_path: Path):
    web = services.start_web(dep.stack, dep.env)
    jobs = [dep.producer.enqueue(f"A scraped clip {i}") for i in range(3)]
    assert all(job.state is JobState.STORED for job in dep.wait_all(jobs))
    url = start_prometheus(dep, web.url, tmp_path)
    wait_until(lambda: bool(query(url, 'up{job="imagineq"} == 1')), 60, "a scrape with the ops token")
    records = [
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]
    panels = [
        (panel["title"], target["expr"])
        for panel in json.loads(BOARD.read_text())["panels"]
        for target in panel["targets"]
    ]
    assert len(records) >= 8 and len(panels) >= 12
    # A rate needs two scrapes, a balance beat's first reading: every one within a minute.
    deadline = time.monotonic() + 60
    missing = records + [expr for _, expr in panels]
    while missing and time.monotonic() < deadline:
        missing = [expr for expr in missing if not query(url, expr)]
        time.sleep(1)
    assert missing == [], f"no series for {missing}"
    # The figures are the deployment's: three jobs stored, every slot free again.
    stored = query(url, 'imagineq_jobs{state="stored"}')
    assert float(stored[0]["value"][1]) >= 3
    assert float(query(url, "sum(imagineq:slot_use:ratio)")[0]["value"][1]) == 0
