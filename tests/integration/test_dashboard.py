"""The dashboard in a real headless Chromium, against a running deployment with real workers.

One deployment for the module (web, workers, simulator with playable clips); each test signs in through
the page itself. Screenshots of every page land in ``var/screenshots/`` (``tests/integration/browser.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from core.credits import CreditPolicy, utc_day
from core.jobs import JobState
from core.ledger import Ledger
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until
from tests.integration import browser

pytestmark = pytest.mark.integration

ADMIN_TOKEN = f"admin-{uuid.uuid4().hex}"
TENANT_TOKEN = f"acme-{uuid.uuid4().hex}"
PRINCIPALS = [
    {"name": "ops", "token": ADMIN_TOKEN, "admin": True},
    {"name": "acme", "token": TENANT_TOKEN, "budget_day": 500},
]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(
        tmp_path_factory.mktemp("dashboard"),
        simulator_args=("--gen-time", "0.3:0.8"),  # results: playable clips
        env={"IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(PRINCIPALS), "IMAGINEQ_CREDITS__BALANCE_INTERVAL_S": "5"},
    ) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def web(dep: Deployment) -> services.Service:
    return services.start_web(dep.stack, dep.env)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with browser.browser() as launched:
        yield launched


def sign_in(page: Page, web: services.Service, token: str) -> None:
    page.goto(f"{web.url}/")
    expect(page).to_have_url(f"{web.url}/signin")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{web.url}/")


def status_json(dep: Deployment) -> dict[str, Any]:
    done = dep.cli("status", "--json", "--no-credits")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_overview_jobs_and_a_playing_video_then_sign_out(dep: Deployment, web: services.Service, chromium: Browser):
    jobs = dep.producer.enqueue_many(
        [
            {"prompt": "A red fox trots through fresh snow", "aspect_ratio": "3:2"},
            {"prompt": "Paper boats race down a rain gutter", "aspect_ratio": "1:1", "mode": "fun"},
            {"prompt": "A lighthouse beam sweeps a stormy sea", "mode": "spicy"},
        ]
    )
    done = dep.wait_all(jobs)
    assert all(job.state is JobState.STORED for job in done), [(j.state, j.error) for j in done]

    with browser.session(chromium) as session:
        page = session.page
        page.goto(f"{web.url}/")
        page.fill("#token", "not-a-token")
        page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_have_text("Unknown token.")
        session.screenshot("dashboard-signin")
        sign_in(page, web, ADMIN_TOKEN)

        # The overview's numbers are imagineq status's (nothing moves now: every job has ended).
        status = status_json(dep)
        page.reload()
        for account in status["accounts"]:
            card = page.locator(f'[data-account="{account["account"]}"]')
            expect(card.locator('[data-field="creations"]')).to_have_text(str(account["creations_in_window"]))
            expect(card.locator('[data-field="in-progress"]')).to_have_text(str(account["in_progress"]))
        for queue in status["queues"]:
            row = page.locator(f'[data-queue="{queue["queue"]}"] [data-field="waiting"]')
            expect(row).to_have_text(str(queue["waiting_total"]))
        for state, count in status["jobs"].items():
            expect(page.locator(f'[data-state="{state}"] [data-field="count"]')).to_have_text(str(count))
        expect(page.locator('[data-field="stored-hour"]')).to_have_text(str(status["jobs"]["stored"]))
        # It refreshes by itself.
        first = page.locator("#live").get_attribute("data-refreshed")
        page.wait_for_function(
            "previous => document.querySelector('#live').getAttribute('data-refreshed') !== previous", arg=first
        )
        session.screenshot("dashboard-overview")

        # The jobs list shows them, newest first; an id prefix finds one.
        page.click("nav >> text=Jobs")
        for job in done:
            expect(page.locator(f'tr[data-job="{job.id}"]')).to_contain_text("stored")
        session.screenshot("dashboard-jobs")
        page.fill("input[name=q]", done[0].id[:10])
        page.click("form.filters button")
        expect(page).to_have_url(f"{web.url}/jobs/{done[0].id}")

        # A stored job's page: its story, and its video playing from S3.
        expect(page.locator('[data-field="state"]')).to_have_text("stored")
        expect(page.locator("table.facts")).to_contain_text(must(done[0].task_id))
        expect(page.locator("table.facts")).to_contain_text(must(done[0].sha256))
        expect(page.locator("table.timeline")).to_contain_text("downloading")
        page.wait_for_function("() => document.getElementById('video').currentTime > 0.5", timeout=20_000)
        playing = page.evaluate(
            "() => { const v = document.getElementById('video');"
            " return {t: v.currentTime, w: v.videoWidth, h: v.videoHeight, paused: v.paused}; }"
        )
        assert playing["w"] * 2 == playing["h"] * 3 and not playing["paused"], playing  # 3:2
        session.screenshot("dashboard-job", full_page=False)

        # Signing out ends the session: the pages ask for a sign-in again.
        page.click("form.signout button")
        expect(page).to_have_url(f"{web.url}/signin")
        page.goto(f"{web.url}/jobs")
        expect(page).to_have_url(f"{web.url}/signin")
        assert not session.refused, session.refused


def test_cancel_a_queued_job_and_watch_a_batch_reach_100_percent(
    dep: Deployment, web: services.Service, chromium: Browser, tmp_path: Path
):
    for worker in dep.workers.pop("submit"):
        worker.stop()
    queued = dep.producer.enqueue("A queued job, canceled from the dashboard")
    with browser.session(chromium) as session:
        page = session.page
        sign_in(page, web, ADMIN_TOKEN)
        page.goto(f"{web.url}/jobs/{queued.id}")
        expect(page.locator('[data-field="state"]')).to_have_text("queued")
        page.click('button:has-text("Cancel")')
        expect(page.get_by_role("status")).to_have_text("Canceled.")
        expect(page.locator('[data-field="state"]')).to_have_text("canceled")
        assert must(dep.producer.get(queued.id)).state is JobState.CANCELED

        lines = tmp_path / "night.jsonl"
        lines.write_text("".join(json.dumps({"prompt": f"Night scene number {i}"}) + "\n" for i in range(6)))
        submitted = dep.cli("batch", "submit", str(lines), "--json")
        assert submitted.returncode == 0, submitted.stderr
        batch_id = json.loads(submitted.stdout)["id"]
        page.click("nav >> text=Batches")
        bar = page.locator(f'tr[data-batch="{batch_id}"] .progress')
        expect(bar).to_have_attribute("data-done", "0.0")
        dep.start_worker("submit", concurrency=2)
        expect(bar).to_have_attribute("data-done", "100.0", timeout=90_000)  # the page refreshes itself
        expect(page.locator(f'tr[data-batch="{batch_id}"]')).to_contain_text("6 stored")
        session.screenshot("dashboard-batches")
        assert not session.refused, session.refused


def test_a_tenant_sees_its_own_jobs_only_and_actions_need_the_csrf_token(dep: Deployment, web: services.Service):
    mine = requests.post(
        f"{web.url}/v1/jobs",
        json={"prompt": "A tenant's own job"},
        headers={"Authorization": f"Bearer {TENANT_TOKEN}"},
        timeout=10,
    ).json()
    theirs = dep.producer.enqueue("Someone else's job")
    client = requests.Session()
    signed = client.post(f"{web.url}/signin", data={"token": TENANT_TOKEN}, allow_redirects=False, timeout=10)
    assert signed.status_code == 303
    cookie = next(c for c in client.cookies if c.name == "imagineq_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and str(cookie.get_nonstandard_attr("SameSite")).lower() == "strict"

    listing = client.get(f"{web.url}/jobs", timeout=10).text
    assert mine["id"] in listing and theirs.id not in listing
    assert client.get(f"{web.url}/jobs/{theirs.id}", timeout=10).status_code == 404
    assert "admins" in client.get(f"{web.url}/batches", timeout=10).text

    # An action without the session's CSRF token (a forged form post) is refused, and changes nothing.
    refused = client.post(f"{web.url}/jobs/{mine['id']}/cancel", data={}, allow_redirects=False, timeout=10)
    assert refused.status_code == 403
    forged = client.post(
        f"{web.url}/jobs/{mine['id']}/cancel",
        data={"csrf": "guess"},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
        timeout=10,
    )
    assert forged.status_code == 403
    assert must(dep.producer.get(mine["id"])).state is not JobState.CANCELED
    # Without a cookie, a page sends the browser to sign in.
    assert requests.get(f"{web.url}/", allow_redirects=False, timeout=10).headers["location"] == "/signin"
    wait_until(lambda: must(dep.producer.get(mine["id"])).state.terminal, 60, "the tenant's job to end")


def test_a_workflow_is_drawn_as_a_graph_with_each_nodes_state_and_pictures(
    dep: Deployment, web: services.Service, chromium: Browser
) -> None:
    # Given a tenant's workflow: an image, videos of two of its images, the first one extended.
    nodes: list[dict[str, Any]] = [
        {"name": "lighthouse", "model": "text-to-image", "prompt": "a lighthouse at dusk", "aspect_ratio": "16:9"},
        {"name": "video-0", "model": "image-to-video", "parent": "lighthouse", "index": 0},
        {"name": "video-3", "model": "image-to-video", "parent": "lighthouse", "index": 3},
        {"name": "upscaled", "model": "upscale", "parent": "lighthouse"},
        {"name": "longer", "model": "extend", "parent": "video-0", "extend_times": "6"},
    ]
    dep.sim_config(images_per_task=4)
    try:
        workflow, _ = dep.producer.submit_workflow({"nodes": nodes}, owner="acme")
        wait_until(lambda: (dep.producer.workflow(workflow.id) or {}).get("state") != "running", 120, "the workflow")
    finally:
        dep.sim_config(images_per_task=1)
    assert must(dep.producer.workflow(workflow.id))["state"] == "completed", dep.producer.workflow(workflow.id)
    with browser.session(chromium) as session:
        page = session.page
        sign_in(page, web, TENANT_TOKEN)
        page.click("nav >> text=Workflows")
        expect(page.locator(f'tr[data-workflow="{workflow.id}"]')).to_contain_text("completed")
        page.click(f'tr[data-workflow="{workflow.id}"] a')
        expect(page).to_have_url(f"{web.url}/workflows/{workflow.id}")
        # Then every node is drawn with its state, an edge per parent, and the images' pictures loaded.
        for node in nodes:
            expect(page.locator(f"#graph [data-node={node['name']!r}]")).to_have_attribute("data-state", "stored")
        expect(page.locator("#graph path.edge")).to_have_count(4)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#graph image')].length === 2 && "
            "[...document.querySelectorAll('#graph image')].every(i => i.getBBox().width > 0)"
        )
        session.screenshot("dashboard-workflow")
        # A node links to its job's page.
        page.click('#graph [data-node="video-3"]')
        expect(page.locator('[data-field="state"]')).to_have_text("stored")
    # Another tenant's (or nobody's) workflow is not found.
    others, _ = dep.producer.submit_workflow({"nodes": nodes[:1]})
    with browser.session(chromium) as session:
        sign_in(session.page, web, TENANT_TOKEN)
        answer = session.page.goto(f"{web.url}/workflows/{others.id}")
        assert answer is not None and answer.status == 404


def test_only_a_failure_a_new_attempt_may_fix_is_offered_a_resubmit_and_every_attempt_is_kept(
    dep: Deployment, web: services.Service, chromium: Browser
) -> None:
    # A moderation refusal fails the same way every time: no resubmit, anywhere.
    refused = dep.wait_all([dep.producer.enqueue("forbidden fruit, slow pan")])[0]
    assert (refused.state, refused.fail_code) == (JobState.FAILED, "content_moderation")
    assert not refused.resubmittable
    with pytest.raises(ValueError, match="would fail the same way"):
        dep.producer.resubmit(refused)
    cli = dep.cli("resubmit", refused.id)
    assert cli.returncode == 1 and "would fail the same way" in cli.stderr
    # An internal upstream error may pass: resubmitted, the job keeps its first attempt.
    dep.sim_config(fail_rate=1.0)
    try:
        broken = dep.wait_all([dep.producer.enqueue("A kite over the dunes, wide shot")])[0]
    finally:
        dep.sim_config(fail_rate=0.0)
    assert broken.state is JobState.FAILED and broken.resubmittable, (broken.reason, broken.fail_code)
    first_task = broken.task_id
    again = dep.wait_all([dep.producer.resubmit(broken)])[0]
    assert again.state is JobState.STORED and again.task_id != first_task
    assert [(a["reason"], a["task_id"]) for a in again.history] == [("generation_failed", first_task)]
    assert again.history[0]["timestamps"]["queued"] < again.timestamps["queued"]
    with browser.session(chromium) as session:
        page = session.page
        sign_in(page, web, ADMIN_TOKEN)
        page.goto(f"{web.url}/jobs/{refused.id}")
        expect(page.locator('[data-field="state"]')).to_have_text("failed")
        expect(page.locator("form[action$='/resubmit']")).to_have_count(0)
        # The reason is said once, not twice in one sentence.
        assert page.locator("table.facts").inner_text().count("matched 'forbidden'") == 1
        session.screenshot("dashboard-failed-job", full_page=False)
        # A job that does not exist is a page of the dashboard, not an API's JSON.
        missing = page.goto(f"{web.url}/jobs/{'0' * 32}")
        assert missing is not None and missing.status == 404
        expect(page.locator("#not-found")).to_contain_text("not found")
        page.goto(f"{web.url}/jobs/{again.id}")
        # The timeline shows both attempts: the first ending in its failure, the second stored.
        expect(page.locator('table.timeline tr[data-attempt="1"]')).to_contain_text(["queued", "failed"])
        expect(page.locator('table.timeline tr[data-attempt="1"]').last).to_contain_text("generation_failed")
        expect(page.locator('table.timeline tr[data-attempt="2"]').last).to_contain_text("stored")
        session.screenshot("dashboard-resubmitted-job")


def test_the_costs_page_shows_spend_per_day_and_model_budgets_and_balances_to_each_their_own(
    dep: Deployment, web: services.Service, chromium: Browser, tmp_path: Path
):
    dep.sim_config(credits=25_000)
    services.start_beat(dep.stack, dep.env)
    tenant = requests.post(
        f"{web.url}/v1/jobs",
        json=[{"prompt": "Acme's clip", "duration": "10"}, {"model": "text-to-image", "prompt": "Acme's still"}],
        headers={"Authorization": f"Bearer {TENANT_TOKEN}"},
        timeout=30,
    )
    assert tenant.status_code == 201, tenant.text
    mine = [must(dep.producer.get(job["id"])) for job in tenant.json()["jobs"]]
    operators = [dep.producer.enqueue("An operator's 720p clip", resolution="720p", duration="15")]
    lines = tmp_path / "budgeted.jsonl"
    lines.write_text('{"batch": {"budget": 40}}\n' + "".join(f'{{"prompt": "dusk {i}"}}\n' for i in range(3)))
    submitted = dep.cli("batch", "submit", str(lines), "--json")
    assert submitted.returncode == 0, submitted.stderr
    batch = json.loads(submitted.stdout)
    assert batch["over_budget"] == 1 and batch["created"] == 2  # two 14.4-credit clips fit in 40
    done = dep.wait_all([*mine, *operators])
    assert all(job.state is JobState.STORED for job in done)
    ledger = Ledger(dep.producer.redis, dep.producer.keys)
    today = utc_day()

    def shown(principal: str | None, model: str) -> str:
        (row,) = [row for row in ledger.costs("model", today, today, principal=principal) if row.key == model]
        return f"{row.charged:,.2f}"

    with browser.session(chromium) as session:
        page = session.page
        sign_in(page, web, ADMIN_TOKEN)
        page.click("nav >> text=Costs")
        expect(page).to_have_url(f"{web.url}/costs")
        # Everyone's, per model, as the ledger holds them (this test's 24 + 67.5 and 4 credits among them).
        expect(page.locator('tr[data-model="text-to-video"] td').nth(1)).to_have_text(shown(None, "text-to-video"))
        expect(page.locator('tr[data-model="text-to-image"] td').nth(1)).to_have_text(shown(None, "text-to-image"))
        expect(page.locator('tr[data-budget="principal_day"][data-whose="acme"]')).to_contain_text("500.00")
        expect(page.locator("table.top-batches")).to_contain_text(batch["id"][:16])
        available = page.locator('tr[data-account="default"] [data-field="available"]')
        expect(available).not_to_have_text("—", timeout=30_000)  # beat read the balance
        session.screenshot("dashboard-costs")
        page.goto(f"{web.url}/batches")  # the batch's line past its budget, as the CLI and manifest say
        expect(page.locator(f'tr[data-batch="{batch["id"]}"]')).to_contain_text("1 over budget")
        assert not session.refused, session.refused
    use = ledger.budgets(CreditPolicy(dep.settings), "acme")[0]
    assert use.limit == 500 and use.charged >= 28
    with browser.session(chromium) as session:
        page = session.page
        sign_in(page, web, TENANT_TOKEN)
        page.goto(f"{web.url}/costs")
        # Its own only, with what its budget has left.
        expect(page.locator('tr[data-model="text-to-video"] td').nth(1)).to_have_text(shown("acme", "text-to-video"))
        left = page.locator('tr[data-budget="principal_day"][data-whose="acme"] [data-field="left"]')
        expect(left).to_have_text(f"{use.left:,.2f}")
        expect(page.locator("table.balances")).to_have_count(0)
