"""Workflows: a small graph of jobs created in one request, each node an ordinary job.

A workflow names its nodes; a node may take its ``parent`` from another node (by name) or from an existing
job (by id). :func:`plan` checks the graph (names, references, no cycle, at most ``max_nodes``) and orders it
parents first. The producer then writes every node's job in one all-or-nothing call: a node whose parent is
another node is created ``waiting`` and released by its parent's end (:mod:`core.release`).

With an idempotency key the workflow is created once: the key is claimed first (``SET NX``), and the
workflow's node jobs get ids and idempotency keys derived from the workflow id and their names, so a second
request, or one that finishes a first that died part-way, finds the same ids and creates no node twice.

The record (``Keys.workflow``) holds the owner, the nodes (name, job id, parent) and, once every node ended,
``completed_at`` and the final state, written with the ``workflow.completed`` event in one step
(``workflow_done.lua``). Its state is read from its jobs: ``running`` while any node has not ended, then
``completed`` (every node stored), ``partly_failed`` (some stored) or ``failed`` (none).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import redis

from core.errors import ValidationError
from core.jobs import Job, JobState
from core.jobstore_args import text
from core.keys import Keys
from core.lua_scripts import load_script

NODE_NAME_PATTERN: Final = r"^[A-Za-z0-9_-]{1,40}$"
_NODE_NAME: Final = re.compile(NODE_NAME_PATTERN)
#: Prefix of the idempotency keys of a keyed workflow's jobs (a producer's own keys may not use it).
NODE_KEY_PREFIX: Final = "workflow:"
WORKFLOW_STATES: Final = ("running", "completed", "partly_failed", "failed")


@dataclass(frozen=True)
class WorkflowNode:
    name: str
    job_id: str
    #: The parent node's name (None: no parent, or a job from outside the workflow).
    parent: str | None = None


@dataclass
class Workflow:
    id: str
    owner: str | None
    created_at: float
    nodes: list[WorkflowNode]
    idempotency_key: str | None = None
    completed_at: float | None = None
    #: The final state, once every node ended (else computed from the jobs: :meth:`state_of`).
    final_state: str | None = None
    canceled_at: float | None = None

    def state_of(self, jobs: Sequence[Job | None]) -> str:
        """The workflow's state given its nodes' jobs (in node order; None: a record that is gone)."""
        if self.final_state:
            return self.final_state
        return state_from([job.state if job is not None else None for job in jobs])

    def to_hash(self) -> dict[str, str]:
        nodes = [{"name": n.name, "job": n.job_id, **({"parent": n.parent} if n.parent else {})} for n in self.nodes]
        out = {"id": self.id, "created_at": repr(self.created_at), "nodes": json.dumps(nodes, separators=(",", ":"))}
        if self.owner:
            out["owner"] = self.owner
        if self.idempotency_key:
            out["idempotency_key"] = self.idempotency_key
        return out

    @classmethod
    def from_hash(cls, data: Mapping[Any, Any]) -> Workflow:
        row = {text(k): text(v) for k, v in data.items()}
        nodes = [WorkflowNode(n["name"], n["job"], n.get("parent")) for n in json.loads(row.get("nodes", "[]"))]
        return cls(
            id=row["id"],
            owner=row.get("owner") or None,
            created_at=float(row.get("created_at") or 0),
            nodes=nodes,
            idempotency_key=row.get("idempotency_key") or None,
            completed_at=float(row["completed_at"]) if row.get("completed_at") else None,
            final_state=row.get("state") or None,
            canceled_at=float(row["canceled_at"]) if row.get("canceled_at") else None,
        )


def state_from(states: Sequence[JobState | None]) -> str:
    """``running`` while a node has not ended; then ``completed``, ``partly_failed`` or ``failed``."""
    if any(state is not None and not state.terminal for state in states):
        return "running"
    stored = sum(1 for state in states if state is JobState.STORED)
    if stored == len(states):
        return "completed"
    return "partly_failed" if stored else "failed"


@dataclass
class PlannedNode:
    """A node of a checked graph: its name, its request fields (``parent`` still as given), and its
    parent node's name when the parent is another node."""

    name: str
    fields: dict[str, Any]
    #: Its place in the request (errors name ``nodes[index]``).
    index: int = 0
    parent_node: str | None = None
    children: list[str] = field(default_factory=list)


def plan(nodes: Any, *, max_nodes: int) -> list[PlannedNode]:
    """The nodes checked and ordered parents first; a ValidationError names ``nodes[i].<field>``."""
    if not isinstance(nodes, list) or not nodes:
        raise ValidationError("nodes", "must be a non-empty list of jobs")
    if len(nodes) > max_nodes:
        raise ValidationError("nodes", f"must hold at most {max_nodes} jobs (got {len(nodes)})")
    planned: dict[str, PlannedNode] = {}
    for index, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            raise ValidationError(f"nodes[{index}]", f"must be an object (got {type(node).__name__})")
        name = node.get("name", node.get("id"))
        if not isinstance(name, str) or not _NODE_NAME.match(name):
            raise ValidationError(f"nodes[{index}].name", "must be 1-40 letters, digits, '_' or '-'")
        if name in planned:
            raise ValidationError(f"nodes[{index}].name", f"{name!r} names two nodes")
        for forbidden in ("idempotency_key", "batch_id", "priority_level"):
            if forbidden in node:
                raise ValidationError(f"nodes[{index}].{forbidden}", "is not a node's to give (the workflow's is)")
        fields = {k: v for k, v in node.items() if k not in ("name", "id")}
        planned[name] = PlannedNode(name, fields, index)
    names = list(planned)
    for index, name in enumerate(names):
        parent = planned[name].fields.get("parent")
        if isinstance(parent, str) and parent in planned:
            if parent == name:
                raise ValidationError(f"nodes[{index}].parent", "a node cannot be its own parent")
            planned[name].parent_node = parent
            planned[parent].children.append(name)
    ordered: list[PlannedNode] = []
    todo = [planned[name] for name in names if planned[name].parent_node is None]
    while todo:
        node = todo.pop(0)
        ordered.append(node)
        todo.extend(planned[child] for child in node.children)
    if len(ordered) != len(planned):
        stuck = next(index for index, name in enumerate(names) if planned[name] not in ordered)
        raise ValidationError(f"nodes[{stuck}].parent", "the nodes' parents form a cycle")
    return ordered


def node_job_id(workflow_id: str, name: str) -> str:
    """The job id of a keyed workflow's node: the same for every request that creates that workflow."""
    return hashlib.sha256(f"{workflow_id}\x00{name}".encode()).hexdigest()[:32]


def node_key(workflow_id: str, name: str) -> str:
    """The idempotency key of a keyed workflow's node job."""
    return f"{NODE_KEY_PREFIX}{workflow_id}:{name}"


class WorkflowStore:
    """Workflow records in Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, keys: Keys, *, ttl_s: int, events_max_len: int) -> None:
        self._redis = client
        self._keys = keys
        self._ttl_s = ttl_s
        self._events_max_len = events_max_len
        self._done = load_script(client, "workflow_done")

    def claim(self, key: str, owner: str | None, candidate: str) -> str:
        """The workflow id an idempotency key names: ``candidate`` when this call claimed it."""
        name = self._keys.workflow_idempotency(key, owner)
        self._redis.set(name, candidate, nx=True, ex=self._ttl_s)
        found = cast("str | bytes | None", self._redis.get(name))
        return text(found) if found is not None else candidate

    def save(self, workflow: Workflow) -> None:
        """Write the record (the same content for every request that creates it) and list it."""
        name = self._keys.workflow(workflow.id)
        with self._redis.pipeline(transaction=True) as pipe:
            for key, value in workflow.to_hash().items():
                pipe.hsetnx(name, key, value)
            pipe.zadd(self._keys.workflows(), {workflow.id: int(workflow.created_at * 1000)})
            pipe.execute()

    def get(self, workflow_id: str) -> Workflow | None:
        data = cast("dict[Any, Any]", self._redis.hgetall(self._keys.workflow(workflow_id)))
        return Workflow.from_hash(data) if data.get("id") or data.get(b"id") else None

    def recent(self, limit: int = 50) -> list[str]:
        """The newest workflows' ids (the listing is trimmed of expired records as it is read)."""
        ids = [text(i) for i in cast("list[Any]", self._redis.zrevrange(self._keys.workflows(), 0, limit - 1))]
        with self._redis.pipeline(transaction=False) as pipe:
            for workflow_id in ids:
                pipe.exists(self._keys.workflow(workflow_id))
            alive = pipe.execute()
        gone = [workflow_id for workflow_id, ok in zip(ids, alive, strict=True) if not ok]
        if gone:
            self._redis.zrem(self._keys.workflows(), *gone)
        return [workflow_id for workflow_id, ok in zip(ids, alive, strict=True) if ok]

    def mark_canceled(self, workflow_id: str, at: float) -> None:
        self._redis.hsetnx(self._keys.workflow(workflow_id), "canceled_at", repr(at))

    def finish_if_done(self, workflow_id: str) -> str | None:
        """When every node has ended: record it and its ``workflow.completed`` event (once); the final
        state when this call recorded it."""
        workflow = self.get(workflow_id)
        if workflow is None or workflow.completed_at is not None:
            return None
        with self._redis.pipeline(transaction=False) as pipe:
            for node in workflow.nodes:
                pipe.hget(self._keys.job(node.job_id), "state")
            states = [JobState(text(s)) if s is not None else None for s in pipe.execute()]
        state = state_from(states)
        if state == "running":
            return None
        keys = [self._keys.workflow(workflow_id), self._keys.events()]
        recorded = self._done(keys=keys, args=[workflow_id, state, self._events_max_len, self._ttl_s])
        return state if recorded else None


def workflow_summary(workflows: WorkflowStore, jobs: JobReader, workflow_id: str) -> dict[str, Any]:
    """A workflow as the API, webhooks and the dashboard show it: its state and each node's."""
    workflow = workflows.get(workflow_id)
    if workflow is None:
        return {"id": workflow_id, "state": None, "nodes": []}
    found = jobs.get_many([node.job_id for node in workflow.nodes])
    return {
        "id": workflow.id,
        "state": workflow.state_of(found),
        "created_at": workflow.created_at,
        "completed_at": workflow.completed_at,
        "canceled": workflow.canceled_at is not None,
        "nodes": [
            {
                "name": node.name,
                "job_id": node.job_id,
                "parent": node.parent,
                "model": job.model if job is not None else None,
                "state": job.state.value if job is not None else None,
                "reason": job.reason if job is not None else None,
                "outputs": len(job.outputs) if job is not None else 0,
            }
            for node, job in zip(workflow.nodes, found, strict=True)
        ],
    }


class JobReader(Protocol):
    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]: ...
