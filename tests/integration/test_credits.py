"""Credits with real workers, beat and the web on two accounts: budgets that hold exactly under concurrency,
a ledger whose charges equal what the simulator's balances lost, jobs sent only to an account that can pay,
batch budgets, a refill that resumes work, settling on the upstream's own figure, and the reports."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests

from config.settings import CreditSettings, ModelSettings, Settings
from core.balances import Balances
from core.credits import CreditPolicy, utc_day
from core.errors import OverBudget
from core.jobs import Job, JobRequest, JobState
from core.ledger import Ledger
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until
from producers.api import Producer
from simulator.accounts import key_id

pytestmark = pytest.mark.integration

KEYS = ("credit-key-a", "credit-key-b")
ADMIN = "credits-admin-token-0123456789abcdef"
TENANT = "credits-tenant-token-0123456789abcdef"
OPS = "credits-ops-token-0123456789abcdef"
#: 6 s at 480p: 6 x 2.4 credits.
CLIP = 14.4


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    accounts = [{"name": f"acct{i}", "api_key": key, "base_url": "{simulator}"} for i, key in enumerate(KEYS)]
    principals = [
        {"name": "ops", "token": ADMIN, "admin": True},
        {"name": "tenant", "token": TENANT, "budget_day": 2 * CLIP + 1},
    ]
    with deployment(
        tmp_path_factory.mktemp("credits"),
        simulator_args=(
            "--gen-time",
            "0.5:1.5",
            "--video-bytes",
            "65536",
            "--credits",
            "100000",
            *(arg for key in KEYS for arg in ("--api-key", key)),
        ),
        env={
            "IMAGINEQ_ACCOUNTS": json.dumps(accounts),
            "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(principals),
            "IMAGINEQ_CREDITS__BALANCE_INTERVAL_S": "5",
            "IMAGINEQ_OPS_TOKENS": json.dumps([OPS]),
        },
        workers={"submit": 2, "poll": 2, "store": 2},
    ) as deployed:
        services.start_beat(deployed.stack, deployed.env)
        yield deployed
        deployed.sim_config(report_credits=False)


def spent_upstream(dep: Deployment) -> float:
    """Credits the simulator's accounts have lost, all keys together."""
    return float(round(sum(entry["credits_spent"] for entry in dep.stats()["per_key"].values()), 2))


def charged_here(dep: Deployment) -> float:
    """Credits the ledger has charged since the deployment began (every day, every model)."""
    return float(Ledger(dep.producer.redis, dep.producer.keys).totals().get("c|*|t", 0.0))


def producer_with(dep: Deployment, **credits: Any) -> Producer:
    """A producer of this deployment whose budgets (or prices) are its own: budgets are checked with the
    limits the enqueueing process passes."""
    update: dict[str, Any] = {"credits": CreditSettings(**credits.pop("budgets", {}))}
    if "models" in credits:
        update["models"] = credits.pop("models")
    settings: Settings = dep.settings.model_copy(update=update)
    return Producer(settings)


def enqueue_as(producer: Producer, owner: str, **fields: Any) -> Job:
    request = JobRequest.from_mapping({"prompt": "a paid clip", **fields}, owner=owner)
    ((job, created),) = producer.enqueue_prepared(producer.prepare([request]))
    assert created
    return job


def balances_read_after(dep: Deployment, moment: float) -> None:
    """Beat has read every account's balance since ``moment``."""
    balances = Balances(dep.producer.redis, dep.producer.keys)

    def fresh() -> bool:
        return all(b.read_at is not None and b.read_at > moment for b in balances.read(["acct0", "acct1"]))

    wait_until(fresh, 30, "beat to read both balances")


def test_fifty_producers_racing_for_room_for_exactly_ten_jobs_get_exactly_ten(dep: Deployment):
    producer = producer_with(dep, budgets={"principal_day": 10 * CLIP})
    owner = f"racer-{uuid.uuid4().hex[:8]}"
    start = threading.Barrier(50)
    accepted: list[Job] = []
    refused: list[OverBudget] = []
    lock = threading.Lock()

    def race() -> None:
        start.wait()
        try:
            job = enqueue_as(producer, owner)
        except OverBudget as error:
            with lock:
                refused.append(error)
        else:
            with lock:
                accepted.append(job)

    threads = [threading.Thread(target=race) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(accepted) == 10 and len(refused) == 40
    assert {error.budget for error in refused} == {"principal_day"}
    assert all(error.limit == 10 * CLIP and error.estimate == CLIP for error in refused)
    use = Ledger(dep.producer.redis, dep.producer.keys).budgets(CreditPolicy(producer.settings), owner)
    assert use[0].charged + use[0].reserved == pytest.approx(10 * CLIP)
    done = dep.wait_all(accepted, timeout=120)
    assert all(job.state is JobState.STORED and job.charged == CLIP for job in done)
    producer.close()


def test_a_request_of_several_jobs_past_a_budget_is_refused_whole_and_reserves_nothing(dep: Deployment):
    producer = producer_with(dep, budgets={"principal_day": 3 * CLIP})
    owner = f"whole-{uuid.uuid4().hex[:8]}"
    five = [JobRequest.from_mapping({"prompt": f"one of five {i}"}, owner=owner) for i in range(5)]
    with pytest.raises(OverBudget) as refused:
        producer.enqueue_prepared(producer.prepare(five))
    assert refused.value.charged == 0 and refused.value.reserved == 3 * CLIP  # the first three, taken back
    use = Ledger(dep.producer.redis, dep.producer.keys).budgets(CreditPolicy(producer.settings), owner)[0]
    assert use.charged == 0 and use.reserved == 0
    assert not [
        key
        for key in dep.producer.redis.scan_iter(match=dep.producer.keys.job("*"))
        if owner in str(dep.producer.redis.hget(key, "owner"))
    ]
    three = producer.enqueue_prepared(producer.prepare(five[:3]))
    assert [created for _, created in three] == [True] * 3
    dep.wait_all([job for job, _ in three], timeout=90)
    producer.close()


def test_the_ledger_charges_what_the_upstream_balance_lost_across_failures_cancels_and_rejections(dep: Deployment):
    before_upstream, before_ledger = spent_upstream(dep), charged_here(dep)
    producer = dep.producer
    dep.sim_config(force_status={"code": 422, "count": 1, "endpoint": "createTask"})
    rejected = producer.wait(producer.enqueue("refused at createTask").id, timeout=60)  # never created: released
    first = producer.enqueue("the first clip")
    canceled = producer.cancel(producer.enqueue(model="extend", parent=first.id).id, by="the test")
    stored = [
        first,
        *(producer.enqueue(f"clip {d} {r}", duration=d, resolution=r) for d, r in (("10", "720p"), ("15", "480p"))),
    ]
    images = [producer.enqueue("an image", model="text-to-image")]
    moderated = producer.enqueue("a forbidden clip")  # created, then failed upstream: still charged
    children = [
        producer.enqueue(model="extend", parent=moderated.id),
        producer.enqueue(model="upscale", parent=moderated.id),
    ]
    ended = dep.wait_all([*stored, *images, moderated, *children], timeout=120)
    assert [job.state for job in ended[:4]] == [JobState.STORED] * 4
    assert ended[4].state is JobState.FAILED and ended[4].credits == "charged"
    assert all(job.reason == "parent_failed" and job.credits == "released" for job in ended[5:])
    assert rejected.state is JobState.FAILED and rejected.reason == "rejected" and rejected.credits == "released"
    assert canceled.state is JobState.CANCELED and must(producer.get(canceled.id)).credits == "released"
    lost = round(spent_upstream(dep) - before_upstream, 2)
    assert lost == pytest.approx(14.4 + 45 + 36 + 4 + 14.4)
    assert round(charged_here(dep) - before_ledger, 2) == pytest.approx(lost)
    # Nothing stays reserved by a job that ended.
    assert (
        Ledger(producer.redis, producer.keys).costs("principal", utc_day(), utc_day(), principal="-")[0].reserved == 0
    )


def test_a_job_goes_to_the_account_that_can_pay_and_no_402_is_met(dep: Deployment):
    errors_before = dep.stats()["errors_by_code"].get("402", 0)
    moment = time.time()
    dep.sim_config(credits={key_id(KEYS[0]): 20, key_id(KEYS[1]): 5000})
    balances_read_after(dep, moment)
    # Below its low mark (100 credits by default): one account.low_balance event, however often it is read.
    low = [e for e in events_since(dep, "0-0") if e["type"] == "account.low_balance" and e["account"] == "acct0"]
    assert len(low) == 1 and float(low[0]["balance"]) == 20 and float(low[0]["threshold"]) == 100
    jobs = [dep.producer.enqueue(f"a 720p clip {i}", resolution="720p") for i in range(3)]  # 27 credits each
    done = dep.wait_all(jobs, timeout=120)
    assert all(job.state is JobState.STORED and job.account == "acct1" for job in done)
    balances_read_after(dep, time.time())  # read again: still low, no second event
    low = [e for e in events_since(dep, "0-0") if e["type"] == "account.low_balance" and e["account"] == "acct0"]
    assert len(low) == 1
    assert dep.stats()["errors_by_code"].get("402", 0) == errors_before
    cheap = dep.wait_all([dep.producer.enqueue("an image", model="text-to-image")], timeout=60)[0]
    assert cheap.state is JobState.STORED  # 4 credits: either account may take it
    dep.sim_config(credits=100000)


def test_a_refill_resumes_an_account_that_could_not_pay(dep: Deployment):
    errors_before = dep.stats()["errors_by_code"].get("402", 0)
    moment = time.time()
    dep.sim_config(credits=1)
    balances_read_after(dep, moment)
    job = dep.producer.enqueue("waits for credits")
    checks = [dep.producer.keys.balance_check(name) for name in ("acct0", "acct1")]
    # A submitter met it, found no account that can pay it, and asked for the balances again: still queued.
    wait_until(lambda: bool(dep.producer.redis.exists(*checks)), 30, "a submitter to find it cannot be paid for")
    assert must(dep.producer.get(job.id)).state is JobState.QUEUED
    status = dep.cli("status", "--json", "--no-credits")
    accounts = json.loads(status.stdout)["accounts"]
    assert all(account["balance"]["credits"] == 1 for account in accounts)
    refilled = time.time()
    dep.sim_config(credits=100000)
    wait_until(lambda: must(dep.producer.get(job.id)).state is not JobState.QUEUED, 60, "the refill to resume work")
    assert time.time() - refilled < 60
    assert dep.producer.wait(job.id, timeout=60).state is JobState.STORED
    assert dep.stats()["errors_by_code"].get("402", 0) == errors_before  # it waited; it was never sent to fail


def test_a_batch_stops_at_its_budget_and_the_manifest_names_the_lines_over_it(dep: Deployment, tmp_path: Path):
    lines = [json.dumps({"batch": {"budget": 50}})]
    lines += [json.dumps({"id": f"clip-{i}", "prompt": f"budget clip {i}"}) for i in range(5)]
    lines.append(json.dumps({"id": "image", "model": "text-to-image", "prompt": "still fits"}))
    source = tmp_path / "budgeted.jsonl"
    source.write_text("\n".join(lines) + "\n")
    submitted = dep.cli("batch", "submit", str(source), "--wait", "--timeout", "120", "--json")
    status = json.loads(submitted.stdout)
    assert status["budget"] == 50 and status["over_budget"] == 2 and status["good"] == 4, submitted.stdout
    manifest = [json.loads(line) for line in (tmp_path / "budgeted.results.jsonl").read_text().splitlines()]
    states = {row["id"]: row["state"] for row in manifest}
    assert states == {
        "clip-0": "stored",
        "clip-1": "stored",
        "clip-2": "stored",
        "clip-3": "over_budget",
        "clip-4": "over_budget",
        "image": "stored",
    }
    assert "over budget batch: limit 50 credits" in next(r["error"] for r in manifest if r["id"] == "clip-3")
    shown = dep.cli("batch", "status", status["id"])  # as a person reads it
    assert shown.returncode == 0 and "2 (the batch's budget: 50 credits)" in shown.stdout
    spent = Ledger(dep.producer.redis, dep.producer.keys).batch(status["id"])
    assert spent.charged == pytest.approx(3 * CLIP + 4) and spent.reserved == 0


def test_a_charge_is_settled_on_the_upstream_figure_when_the_record_reports_one(dep: Deployment):
    # This producer prices clips at 2 credits a second: the upstream takes 2.4, and says so.
    cheap = {"text-to-video": ModelSettings(credits_per_second={"480p": 2.0, "720p": 4.0})}
    producer = producer_with(dep, models=cheap)
    dep.sim_config(report_credits=True)
    try:
        job = producer.enqueue("settled on the upstream's figure")
        assert job.estimate == 12.0
        done = producer.wait(job.id, timeout=60)
    finally:
        dep.sim_config(report_credits=False)
        producer.close()
    assert done.state is JobState.STORED and done.charged == CLIP and done.credits == "settled"


def test_http_refuses_past_a_budget_with_402_and_reports_costs_to_each_their_own(dep: Deployment, tmp_path: Path):
    web = services.start_web(dep.stack, dep.env)
    tenant = {"Authorization": f"Bearer {TENANT}"}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    priced = dep.producer.estimate([{"model": "upscale", "parent": dep.producer.enqueue("a parent").id}])
    assert priced.total == 30.0 and priced.items[0].model == "upscale"  # a video's upscale
    estimate = requests.post(
        f"{web.url}/v1/estimate", json=[{"prompt": "x"}, {"prompt": "y", "resolution": "720p"}], headers=tenant
    )
    assert estimate.status_code == 200 and estimate.json()["total"] == pytest.approx(CLIP + 27)
    bad = requests.post(f"{web.url}/v1/estimate", json={"prompt": "x", "duration": "7"}, headers=tenant)
    assert bad.status_code == 422 and "duration" in json.dumps(bad.json())
    made = [requests.post(f"{web.url}/v1/jobs", json={"prompt": f"tenant {i}"}, headers=tenant) for i in range(2)]
    assert [r.status_code for r in made] == [201, 201] and made[0].json()["estimate"] == CLIP
    refused = requests.post(f"{web.url}/v1/jobs", json={"prompt": "one too many"}, headers=tenant)
    assert refused.status_code == 402
    body = refused.json()
    assert body["error"] == "over_budget" and body["budget"] == "principal_day"
    assert body["limit"] == pytest.approx(2 * CLIP + 1) and body["charged"] + body["reserved"] == pytest.approx(
        2 * CLIP
    )
    operators = dep.producer.enqueue("the operator's own")  # a job of no principal: '-'
    dep.wait_all([must(dep.producer.get(r.json()["id"])) for r in made] + [operators], timeout=90)
    own = requests.get(f"{web.url}/v1/costs", params={"by": "model"}, headers=tenant).json()
    assert own["principal"] == "tenant" and own["charged"] == pytest.approx(2 * CLIP)
    assert [row["key"] for row in own["rows"]] == ["text-to-video"]
    assert requests.get(f"{web.url}/v1/costs", params={"principal": "ops"}, headers=tenant).status_code == 403
    balances_read_after(dep, 0.0)  # beat's first reading: the balance metrics exist from then on
    metrics = requests.get(f"{web.url}/metrics", headers={"Authorization": f"Bearer {OPS}"}, timeout=30).text
    assert 'imagineq_credits_charged_total{model="text-to-video"}' in metrics
    assert 'imagineq_account_available_credits{account="acct0"}' in metrics
    everyone = requests.get(f"{web.url}/v1/costs", params={"by": "principal"}, headers=admin).json()
    assert {"tenant", "-"} <= {row["key"] for row in everyone["rows"]}
    # The CLI's report and dry run read the same ledger.
    report = dep.cli("costs", "--by", "principal", "--json")
    assert report.returncode == 0 and json.loads(report.stdout)["charged"] == pytest.approx(everyone["charged"])
    batch = tmp_path / "priced.jsonl"
    batch.write_text('{"id": "a", "model": "text-to-image", "prompt": "p"}\n{"model": "upscale", "parent": "a"}\n')
    dry_run = dep.cli("estimate", str(batch), "--json")
    assert dry_run.returncode == 0 and json.loads(dry_run.stdout)["total"] == pytest.approx(4 + 10)


def test_a_budget_eighty_percent_full_sends_one_warning(dep: Deployment):
    producer = producer_with(dep, budgets={"principal_day": 5 * CLIP})
    owner = f"warned-{uuid.uuid4().hex[:8]}"
    newest = cast("list[tuple[Any, Any]]", dep.producer.redis.xrevrange(dep.producer.keys.events(), count=1))
    last = _text(newest[0][0]) if newest else "0-0"
    for _ in range(5):
        enqueue_as(producer, owner)
    seen = events_since(dep, last)
    mine = [event for event in seen if event.get("type") == "budget.warning" and event.get("owner") == owner]
    assert len(mine) == 1
    assert mine[0]["budget"] == "principal_day" and float(mine[0]["used"]) == pytest.approx(4 * CLIP)
    producer.close()


def events_since(dep: Deployment, after: str) -> list[dict[str, str]]:
    """The events stream's entries after ``after``, as text."""
    entries = cast(
        "list[tuple[Any, dict[Any, Any]]]", dep.producer.redis.xrange(dep.producer.keys.events(), min=f"({after}")
    )
    return [{_text(k): _text(v) for k, v in fields.items()} for _, fields in entries]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
