"""Creating, reading and canceling workflows (:mod:`core.workflows`) for the Python API, the web and the CLI.

A workflow request is ``{"nodes": [...], "idempotency_key": ..., "priority": ..., "metadata": ...}``; each
node is a job request (any model's fields) with a ``name``, whose ``parent`` may name another node. Every
node is checked before anything is written (an error names ``nodes[i].<field>``); then all its jobs are
written in one call, all or none.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from config.settings import Settings
from core.catalog import DEFAULT_MODEL, Catalog, model_named
from core.errors import ValidationError
from core.jobs import Job, JobRequest, JobState, new_job_id
from core.jobstore import JobStore
from core.workflows import (
    PlannedNode,
    Workflow,
    WorkflowNode,
    WorkflowStore,
    node_job_id,
    node_key,
    plan,
)
from producers.rules import NotCancelable, check_notify_url_allowed
from workers.intake import Intake


class Producer(Protocol):
    """What workflows need of a producer (``producers.api.Producer`` has it)."""

    settings: Settings
    jobs: JobStore
    workflows: WorkflowStore
    catalog: Catalog

    @property
    def intake(self) -> Intake: ...

    def enqueue_prepared(
        self, requests: Sequence[JobRequest], *, job_ids: Sequence[str] | None = None
    ) -> list[tuple[Job, bool]]: ...

    def cancel(self, job_id: str, *, by: str) -> Job: ...


#: Fields of a workflow request besides its nodes.
WORKFLOW_FIELDS = frozenset({"nodes", "idempotency_key", "priority", "metadata", "notify_url"})
#: Fields a workflow gives each of its nodes unless the node gives its own.
_INHERITED = ("priority", "metadata", "notify_url")


@dataclass
class PreparedWorkflow:
    """A checked workflow ready to be written (``existing``: the one its idempotency key names instead)."""

    workflow: Workflow
    requests: list[JobRequest]
    existing: bool = False

    @property
    def job_ids(self) -> list[str]:
        return [node.job_id for node in self.workflow.nodes]


def submit_workflow(
    producer: Producer,
    body: Any,
    *,
    owner: str | None = None,
    files: Mapping[str, bytes] | None = None,
) -> tuple[Workflow, bool]:
    """The workflow ``body`` describes, and whether this call created it (False: its idempotency key named
    one already)."""
    prepared = prepare_workflow(producer, body, owner=owner, files=files)
    return write_workflow(producer, prepared), not prepared.existing


def prepare_workflow(
    producer: Producer,
    body: Any,
    *,
    owner: str | None = None,
    files: Mapping[str, bytes] | None = None,
) -> PreparedWorkflow:
    """Every node checked (a ValidationError names ``nodes[i].<field>``), nothing written but the claim of
    the idempotency key."""
    if not isinstance(body, Mapping):
        raise ValidationError("workflow", f"must be an object (got {type(body).__name__})")
    unknown = sorted(str(name) for name in body if name not in WORKFLOW_FIELDS)
    if unknown:
        raise ValidationError(unknown[0], f"is not a workflow field (known: {', '.join(sorted(WORKFLOW_FIELDS))})")
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
        raise ValidationError("idempotency_key", "must be a string of 1-200 characters")
    ordered = plan(body.get("nodes"), max_nodes=producer.settings.workflow_max_nodes)
    if key is not None:
        workflow_id = producer.workflows.claim(key, owner, new_job_id())
        existing = producer.workflows.get(workflow_id)
        if existing is not None:
            return PreparedWorkflow(existing, [], existing=True)
        ids = {node.name: node_job_id(workflow_id, node.name) for node in ordered}
    else:
        workflow_id = new_job_id()
        ids = {node.name: new_job_id() for node in ordered}
    made: dict[str, str] = {}  # what each node makes (parents come first)
    requests = []
    for node in ordered:
        try:
            request = _request(producer, node, body, ids, made, workflow_id, key, owner, files or {})
        except ValidationError as error:
            raise ValidationError(
                f"nodes[{node.index}].{error.field}", error.message, item=node.index, item_field=error.field
            ) from None
        made[node.name] = request.spec.output_of(request.parent_output)
        requests.append(request)
    workflow = Workflow(
        id=workflow_id,
        owner=owner,
        created_at=time.time(),
        nodes=[WorkflowNode(node.name, ids[node.name], node.parent_node) for node in ordered],
        idempotency_key=key,
    )
    return PreparedWorkflow(workflow, requests)


def write_workflow(producer: Producer, prepared: PreparedWorkflow) -> Workflow:
    """Write a prepared workflow's jobs (all or none) and then its record; the workflow as stored."""
    if prepared.existing:
        return prepared.workflow
    producer.enqueue_prepared(prepared.requests, job_ids=prepared.job_ids)
    producer.workflows.save(prepared.workflow)
    return producer.workflows.get(prepared.workflow.id) or prepared.workflow


def _request(
    producer: Producer,
    node: PlannedNode,
    body: Mapping[str, Any],
    ids: Mapping[str, str],
    made: Mapping[str, str],
    workflow_id: str,
    key: str | None,
    owner: str | None,
    files: Mapping[str, bytes],
) -> JobRequest:
    """A node's checked request: a node whose parent is another node waits for it (``waits``)."""
    fields = dict(node.fields)
    for name in _INHERITED:
        if name in body and name not in fields:
            fields[name] = body[name]
    if node.parent_node is not None:
        fields["parent"] = ids[node.parent_node]
    values = producer.intake.item(fields, owner=owner, files=files)
    if key is not None:
        values["idempotency_key"] = node_key(workflow_id, node.name)
    server: dict[str, Any] = {"workflow_id": workflow_id, "node": node.name}
    if owner is not None:
        server["owner"] = owner
    request = JobRequest.from_mapping(values, **server)
    if node.parent_node is None:
        request = producer.intake.with_parent(request)
    else:
        spec, parent_made = request.spec, made[node.parent_node]
        if spec.parent is None:
            raise ValidationError("parent", f"{spec.short} takes no parent job")
        if parent_made not in spec.parent.outputs:
            kinds = " or ".join(spec.parent.outputs)
            raise ValidationError(
                "parent", f"node {node.parent_node!r} makes {_a(parent_made)}; {spec.short} takes {_a(kinds)} job"
            )
        parent_model = _model_of(body, node.parent_node)
        if spec.short == "image-to-video" and parent_model != "text-to-image":
            raise ValidationError(
                "parent", f"node {node.parent_node!r} is {parent_model}; image-to-video takes a text-to-image job"
            )
        request = dataclasses.replace(request, waits=True, parent_output=parent_made)
    producer.catalog.spec(request.model)  # switched off on this deployment: refused by name
    check_notify_url_allowed(request, producer.settings)
    return request


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _model_of(body: Mapping[str, Any], name: str) -> str:
    for node in body.get("nodes") or []:
        if isinstance(node, Mapping) and node.get("name", node.get("id")) == name:
            return model_named(node.get("model") or DEFAULT_MODEL).short
    return DEFAULT_MODEL


def cancel_workflow(producer: Producer, workflow: Workflow, *, by: str) -> list[str]:
    """Cancel every node not yet submitted (queued or waiting); the ids canceled. Nodes already at the
    upstream run on; the children of a canceled node fail ``parent_canceled``."""
    producer.workflows.mark_canceled(workflow.id, time.time())
    canceled = []
    for node, job in zip(workflow.nodes, producer.jobs.get_many([n.job_id for n in workflow.nodes]), strict=True):
        if job is None or job.state not in (JobState.QUEUED, JobState.WAITING):
            continue
        try:
            producer.cancel(node.job_id, by=by)
            canceled.append(node.job_id)
        except (NotCancelable, KeyError):
            continue
    return canceled
