"""Derived jobs that wait for their parent, and workflows, with real workers on two accounts: each kind end to
end, every child on its parent's account and created only once its parent is stored, a failed or canceled
parent failing its children without a createTask, a submit worker killed mid-workflow, idempotent re-posts,
the web and the CLI."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import yaml

from core.errors import ValidationError
from core.jobs import Job, JobState
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until

pytestmark = pytest.mark.integration

TOKEN = "workflow-test-token-0123456789abcdef"
KEYS = ("wf-key-a", "wf-key-b")

LIGHTHOUSE = {
    "nodes": [
        {"name": "image", "model": "text-to-image", "prompt": "a lighthouse at night", "aspect_ratio": "16:9"},
        {"name": "first", "model": "image-to-video", "parent": "image", "index": 0, "duration": "10"},
        {"name": "fourth", "model": "image-to-video", "parent": "image", "index": 3, "resolution": "720p"},
        {"name": "longer", "model": "extend", "parent": "first", "extend_times": "6"},
    ]
}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    accounts = [{"name": f"acct{i}", "api_key": key, "base_url": "{simulator}"} for i, key in enumerate(KEYS)]
    with deployment(
        tmp_path_factory.mktemp("workflows"),
        simulator_args=(
            "--gen-time",
            "0.5:1.5",
            "--images-per-task",
            "4",
            "--video-bytes",
            "65536",
            "--time-scale",
            "1",
            *(arg for key in KEYS for arg in ("--api-key", key)),
        ),
        env={
            "IMAGINEQ_ACCOUNTS": json.dumps(accounts),
            "IMAGINEQ_INGRESS_TOKENS": json.dumps([TOKEN]),
        },
        workers={"submit": 2, "poll": 2, "store": 2},
    ) as deployed:
        yield deployed


def tasks_by_job(dep: Deployment) -> dict[str, list[dict[str, Any]]]:
    """The simulator's tasks, by the job whose task id the job record names (and by createTask order)."""
    tasks = dep.sim("tasks")["tasks"]
    by_task = {task["taskId"]: task for task in tasks}
    out: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        out.setdefault(task["taskId"], []).append(task)
    return {task_id: [by_task[task_id]] for task_id in out}


def wait_workflow(dep: Deployment, workflow_id: str, timeout: float = 120) -> dict[str, Any]:
    wait_until(lambda: dep.producer.workflow(workflow_id)["state"] != "running", timeout, "the workflow's end")  # type: ignore[index]
    return must(dep.producer.workflow(workflow_id))


def jobs_of(dep: Deployment, summary: dict[str, Any]) -> dict[str, Job]:
    return {node["name"]: must(dep.producer.get(node["job_id"])) for node in summary["nodes"]}


def test_a_workflow_runs_each_child_on_its_parents_account_once_the_parent_is_stored(dep: Deployment) -> None:
    # Given a workflow: an image, videos of images 0 and 3, the first extended.
    workflow, created = dep.producer.submit_workflow(LIGHTHOUSE)
    assert created
    children = [dep.producer.get(node.job_id) for node in workflow.nodes if node.parent]
    # Then the children wait for their parent at first (none has reached the upstream).
    assert {must(child).state for child in children} <= {JobState.WAITING, JobState.QUEUED, JobState.SUBMITTING}
    summary = wait_workflow(dep, workflow.id)
    assert summary["state"] == "completed", summary
    jobs = jobs_of(dep, summary)
    image, first, fourth, longer = jobs["image"], jobs["first"], jobs["fourth"], jobs["longer"]
    tasks = {task["taskId"]: task for task in dep.sim("tasks")["tasks"]}
    # Each child sent its parent's task id (and image index), on the parent's account...
    assert tasks[must(first.task_id)]["param"]["input"]["task_id"] == image.task_id
    assert tasks[must(first.task_id)]["param"]["input"]["index"] == 0
    assert tasks[must(fourth.task_id)]["param"]["input"]["index"] == 3
    assert tasks[must(longer.task_id)]["param"]["input"]["task_id"] == first.task_id
    assert first.account == fourth.account == image.account and longer.account == first.account
    assert {tasks[must(job.task_id)]["key_id"] for job in (image, first, fourth)} == {
        tasks[must(image.task_id)]["key_id"]
    }
    # ...and only once the parent was stored.
    for child, parent in ((first, image), (fourth, image), (longer, first)):
        created_s = tasks[must(child.task_id)]["createTime"] / 1000
        assert created_s >= parent.timestamps["stored"] - 0.01, (child.node, created_s, parent.timestamps)
    assert longer.outputs and first.outputs
    # And the workflow's end is one event, with its state.
    entries = cast("list[tuple[str, dict[str, str]]]", dep.producer.redis.xrange(dep.producer.keys.events()))
    ends = [fields for _, fields in entries if fields.get("workflow") == workflow.id]
    assert [(e["type"], e["state"]) for e in ends] == [("workflow.completed", "completed")]


def test_every_child_follows_its_parent_to_whichever_account_it_ran_on(dep: Deployment) -> None:
    # Given eight workflows at once on two accounts (the parents spread over both).
    made = [dep.producer.submit_workflow(LIGHTHOUSE)[0] for _ in range(8)]
    summaries = [wait_workflow(dep, workflow.id, timeout=180) for workflow in made]
    assert [s["state"] for s in summaries] == ["completed"] * 8
    accounts: Counter[str] = Counter()
    for summary in summaries:
        jobs = jobs_of(dep, summary)
        # Then every child ran on its parent's account: never a wrong one.
        for name, parent in (("first", "image"), ("fourth", "image"), ("longer", "first")):
            assert jobs[name].account == jobs[parent].account, (summary["id"], name)
        accounts[must(jobs["image"].account)] += 1
    assert len(accounts) == 2, accounts  # both accounts had parents, so affinity was tested on each


def test_a_failed_parent_fails_its_children_without_a_create_task(dep: Deployment) -> None:
    before = dep.stats()["create_calls"]
    # Given a workflow whose image the upstream refuses (content moderation).
    body = json.loads(json.dumps(LIGHTHOUSE))
    body["nodes"][0]["prompt"] = "a forbidden lighthouse"
    workflow, _ = dep.producer.submit_workflow(body)
    summary = wait_workflow(dep, workflow.id)
    jobs = jobs_of(dep, summary)
    # Then the image failed, each child failed parent_failed (the grandchild too), and says why.
    assert jobs["image"].state is JobState.FAILED
    for name in ("first", "fourth", "longer"):
        assert jobs[name].state is JobState.FAILED and jobs[name].reason == "parent_failed", jobs[name]
        assert jobs[name].account is None and jobs[name].task_id is None
    assert "failed" in must(jobs["first"].error) and jobs["image"].id in must(jobs["first"].error)
    assert summary["state"] == "failed"
    # And only the image reached the upstream.
    assert dep.stats()["create_calls"] == before + 1


def test_a_waiting_child_and_a_workflow_can_be_canceled(dep: Deployment) -> None:
    dep.sim_config(gen_time=[3.0, 3.0])
    try:
        workflow, _ = dep.producer.submit_workflow(LIGHTHOUSE)
        first = must(dep.producer.get(workflow.nodes[1].job_id))
        assert first.state is JobState.WAITING
        # When one waiting child is canceled, then the rest of the workflow.
        assert dep.producer.cancel(first.id, by="test").state is JobState.CANCELED
        canceled = dep.producer.cancel_workflow(workflow.id, by="test")
        summary = wait_workflow(dep, workflow.id)
    finally:
        dep.sim_config(gen_time=[0.5, 1.5])
    jobs = jobs_of(dep, summary)
    # Then the canceled child's own child failed parent_canceled; the other child was canceled too.
    assert jobs["first"].state is JobState.CANCELED
    assert jobs["longer"].reason in ("parent_canceled", "canceled"), jobs["longer"]
    assert jobs["fourth"].state is JobState.CANCELED and jobs["fourth"].id in canceled
    assert summary["canceled"] is True and summary["state"] in ("partly_failed", "failed")


def test_a_reposted_workflow_with_its_idempotency_key_creates_nothing(dep: Deployment) -> None:
    body = {**LIGHTHOUSE, "idempotency_key": "lighthouse-2026-12-05"}
    first, created = dep.producer.submit_workflow(body)
    calls = dep.stats()["create_calls"]
    again, created_again = dep.producer.submit_workflow(body)
    assert created and not created_again and again.id == first.id
    assert [n.job_id for n in again.nodes] == [n.job_id for n in first.nodes]
    summary = wait_workflow(dep, first.id)
    assert summary["state"] == "completed"
    # Four nodes, four creations: the re-post added none.
    assert dep.stats()["create_calls"] - calls <= 4
    third, created_third = dep.producer.submit_workflow(body)
    assert not created_third and third.id == first.id


def test_a_derived_job_on_a_parent_still_running_waits_for_it(dep: Deployment) -> None:
    image = dep.producer.enqueue("a harbour", model="text-to-image")
    video = dep.producer.enqueue(model="image-to-video", parent=image.id, index=1)
    assert video.state is JobState.WAITING
    (image_done, video_done) = dep.wait_all([image, video], timeout=90)
    assert video_done.state is JobState.STORED and video_done.account == image_done.account
    with pytest.raises(ValidationError, match=r"parent: job .* is failed"):
        failed = dep.producer.enqueue("forbidden harbour", model="text-to-image")
        dep.wait_all([failed])
        dep.producer.enqueue(model="upscale", parent=failed.id)
    # An index the parent did not make fails the child when the parent is stored, with no createTask.
    image = dep.producer.enqueue("a harbour again", model="text-to-image")
    too_far = dep.producer.enqueue(model="image-to-video", parent=image.id, index=5)
    (_, too_far_done) = dep.wait_all([image, too_far], timeout=90)
    assert too_far_done.state is JobState.FAILED and too_far_done.reason == "parent_output_missing"


def test_bad_workflows_are_refused_naming_the_node_and_field(dep: Deployment) -> None:
    t2i = {"model": "text-to-image", "prompt": "x"}
    loop = [{"name": "a", "model": "upscale", "parent": "b"}, {"name": "b", "model": "upscale", "parent": "a"}]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"nodes": []}, "nodes"),
        ({"nodes": [{"name": "a", "prompt": "x"}, {"name": "a", "prompt": "y"}]}, r"nodes\[1\]\.name"),
        ({"nodes": loop}, "cycle"),
        (
            {"nodes": [{"name": "v", "model": "extend", "parent": "i"}, {"name": "i", **t2i}]},
            r"nodes\[0\]\.parent: node 'i' makes an image; extend takes a video job",
        ),
        ({"nodes": [{"name": "i", "prompt": "x", "idempotency_key": "k"}]}, r"nodes\[0\]\.idempotency_key"),
        ({"nodes": [{"name": "i", "prompt": "x", "duration": "7"}]}, r"nodes\[0\]\.duration"),
        ({"nodes": [{"name": "x" * 41, "prompt": "x"}]}, r"nodes\[0\]\.name"),
        ({"nodes": [{"name": "i", "prompt": "x"}], "colour": 1}, "colour"),
    ]
    before = int(cast(int, dep.producer.redis.dbsize()))
    for body, message in cases:
        with pytest.raises(ValidationError, match=message):
            dep.producer.submit_workflow(body)
    assert int(cast(int, dep.producer.redis.dbsize())) == before  # nothing written


def test_the_web_and_the_cli_create_and_show_workflows(dep: Deployment, tmp_path: Path) -> None:
    # Over HTTP: created once (201, then 200 for the same key), read, and a bad node named.
    web = services.start_web(dep.stack, dep.env)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {**LIGHTHOUSE, "idempotency_key": "web-lighthouse"}
    first = requests.post(f"{web.url}/v1/workflows", json=body, headers=auth, timeout=30)
    assert first.status_code == 201, first.text
    again = requests.post(f"{web.url}/v1/workflows", json=body, headers=auth, timeout=30)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert [n["name"] for n in first.json()["nodes"]] == ["image", "first", "fourth", "longer"]
    assert first.json()["nodes"][1]["state"] == "waiting"
    workflow_id = first.json()["id"]
    wait_until(
        lambda: (
            requests.get(f"{web.url}/v1/workflows/{workflow_id}", headers=auth, timeout=30).json()["state"] != "running"
        ),
        120,
        "the workflow's end over HTTP",
    )
    shown = requests.get(f"{web.url}/v1/workflows/{workflow_id}", headers=auth, timeout=30).json()
    assert shown["state"] == "completed" and all(n["outputs"] >= 1 for n in shown["nodes"])
    bad = {
        "nodes": [
            {"name": "i", "model": "text-to-image", "prompt": "x"},
            {"name": "v", "model": "extend", "parent": "i"},
        ]
    }
    refused = requests.post(f"{web.url}/v1/workflows", json=bad, headers=auth, timeout=30)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "nodes", 1, "parent"]
    assert requests.get(f"{web.url}/v1/workflows/{workflow_id}", timeout=30).status_code == 401

    # From the CLI: a YAML file, waited for; the same file again creates nothing.
    path = tmp_path / "lighthouse.yaml"
    path.write_text(yaml.safe_dump({**LIGHTHOUSE, "idempotency_key": "cli-lighthouse"}))
    out = dep.cli("workflow", "submit", str(path), "--wait", "--timeout", "120")
    assert out.returncode == 0 and ": completed" in out.stdout, (out.stdout, out.stderr)
    again_cli = dep.cli("workflow", "submit", str(path))
    assert again_cli.returncode == 0 and "already exists" in again_cli.stdout
    shown_cli = dep.cli("workflow", "show", out.stdout.split()[1].rstrip(":"), "--json")
    assert json.loads(shown_cli.stdout)["state"] == "completed"


THREE_LEVELS = {
    "nodes": [
        {"name": "image", "model": "text-to-image", "prompt": "a lighthouse in fog"},
        {"name": "video", "model": "image-to-video", "parent": "image", "index": 2},
        {"name": "longer", "model": "extend", "parent": "video", "extend_times": "6"},
    ]
}


def test_three_level_workflows_survive_a_killed_submit_worker_with_each_node_created_once(dep: Deployment) -> None:
    created_before = dep.stats()["created"]
    extra = [dep.start_worker("submit", concurrency=2) for _ in range(2)]
    dep.sim_config(gen_time=[2.0, 2.5])
    try:
        made = [dep.producer.submit_workflow(THREE_LEVELS)[0] for _ in range(6)]
        ids = [node.job_id for workflow in made for node in workflow.nodes]

        def level_busy(level: int) -> bool:
            # Every node of that level is at the upstream (no createTask in flight: the window where a
            # killed submitter leaves an unknown outcome is the chaos suite's), the next one waiting.
            jobs = [must(dep.producer.get(workflow.nodes[level].job_id)) for workflow in made]
            return all(job.state in (JobState.GENERATING, JobState.DOWNLOADING, JobState.STORED) for job in jobs)

        # When a submit worker (its pool and its release thread) is SIGKILLed while the images generate,
        # and another while the videos do.
        wait_until(lambda: level_busy(0), 60, "every image at the upstream")
        extra[0].kill()
        wait_until(lambda: level_busy(1), 90, "every video at the upstream")
        extra[1].kill()
        summaries = [wait_workflow(dep, workflow.id, timeout=180) for workflow in made]
    finally:
        dep.sim_config(gen_time=[0.5, 1.5])
    # Then every workflow completed, and the upstream made exactly one task per node.
    assert [s["state"] for s in summaries] == ["completed"] * 6
    jobs = [must(dep.producer.get(job_id)) for job_id in ids]
    assert len({job.task_id for job in jobs}) == len(ids) == 18
    assert dep.stats()["created"] - created_before == 18


def test_a_batch_line_may_take_an_earlier_lines_job_as_its_parent(dep: Deployment, tmp_path: Path) -> None:
    lines = [
        {"id": "img", "model": "text-to-image", "prompt": "a lighthouse on a cliff"},
        {"id": "vid", "model": "image-to-video", "parent": "img", "index": 1},
        {"id": "ext", "model": "extend", "parent": "vid", "extend_times": "6"},
        {"id": "bad", "model": "extend", "parent": "img"},  # an image: extend takes a video
    ]
    path = tmp_path / "derived.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = dep.cli("batch", "submit", str(path), "--wait", "--timeout", "120", "--json")
    assert out.returncode in (0, 1), out.stderr
    manifest = [json.loads(row) for row in (tmp_path / "derived.results.jsonl").read_text().splitlines()]
    rows = {row["id"]: row for row in manifest}
    assert [rows[name]["state"] for name in ("img", "vid", "ext")] == ["stored"] * 3, manifest
    assert "extend takes a video job" in rows["bad"]["error"]
    image, video, extended = (must(dep.producer.get(rows[name]["job_id"])) for name in ("img", "vid", "ext"))
    assert video.input["parent"] == image.id and extended.input["parent"] == video.id
    assert image.account == video.account == extended.account
    # The same file again is the same batch: nothing new reaches the upstream.
    created = dep.stats()["created"]
    again = dep.cli("batch", "submit", str(path), "--json")
    assert again.returncode in (0, 1) and json.loads(again.stdout)["id"] == json.loads(out.stdout)["id"]
    assert dep.stats()["created"] == created


def test_the_api_hands_over_our_copy_of_each_output_and_takes_an_id_prefix(dep: Deployment) -> None:
    web = services.start_web(dep.stack, dep.env)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    made = requests.post(
        f"{web.url}/v1/jobs", json={"model": "text-to-image", "prompt": "three kites"}, headers=auth, timeout=30
    ).json()
    done = dep.wait_all([must(dep.producer.get(made["id"]))])[0]
    assert done.state is JobState.STORED and len(done.outputs) == 4
    # A unique prefix of 8 characters names the job, as on the command line.
    shown = requests.get(f"{web.url}/v1/jobs/{done.id[:10]}", headers=auth, timeout=30)
    assert shown.status_code == 200 and shown.json()["id"] == done.id
    # Each output has a short-lived link to ImagineQ's own copy, whose bytes match its digest.
    outputs = shown.json()["outputs"]
    assert [o["index"] for o in outputs] == [0, 1, 2, 3] and shown.json()["video_url"] is None
    for output in outputs:
        body = requests.get(output["url"], timeout=30).content
        assert hashlib.sha256(body).hexdigest() == output["sha256"]
    # A video job's first output is its video_url; a list of jobs carries no links.
    clip = dep.wait_all([dep.producer.enqueue("a short clip")])[0]
    view = requests.get(f"{web.url}/v1/jobs/{clip.id}", headers=auth, timeout=30).json()
    assert hashlib.sha256(requests.get(view["video_url"], timeout=30).content).hexdigest() == clip.sha256
    listed = requests.get(f"{web.url}/v1/jobs", params={"state": "stored"}, headers=auth, timeout=30).json()
    assert all("url" not in o for job in listed["jobs"] for o in job["outputs"])
    assert requests.get(f"{web.url}/v1/jobs/{done.id[:7]}", headers=auth, timeout=30).status_code == 404
