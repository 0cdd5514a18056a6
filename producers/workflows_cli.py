"""``imagineq workflow submit|show|cancel``: workflows (:mod:`producers.workflows`) from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from producers.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def _read(path: Path) -> Any:
    """A workflow file: JSON, or YAML (``.yaml``/``.yml``, or anything JSON cannot read)."""
    import yaml

    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        return yaml.safe_load(text)
    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)


def _print(summary: dict[str, Any]) -> None:
    print(f"workflow {summary['id']}: {summary['state']}{' (canceled)' if summary.get('canceled') else ''}")
    for node in summary["nodes"]:
        parent = f" ← {node['parent']}" if node.get("parent") else ""
        reason = f" ({node['reason']})" if node.get("reason") else ""
        state = node["state"] or "gone"
        print(f"  {node['name']:<20} {node['model'] or '?':<15} {state:<12} {node['job_id']}{parent}{reason}")


def _cmd_submit(args: argparse.Namespace) -> int:
    from core.errors import ValidationError
    from producers.api import Producer

    try:
        body = _read(args.file)
    except (OSError, ValueError) as error:
        print(f"error: cannot read {args.file}: {error}", file=sys.stderr)
        return EXIT_USAGE
    producer = Producer()
    try:
        workflow, created = producer.submit_workflow(body)
    except ValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not created:
        print(f"workflow {workflow.id} already exists (same idempotency key): nothing created")
    summary = producer.workflow(workflow.id) or {}
    deadline = time.monotonic() + args.timeout
    while args.wait and summary.get("state") == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        summary = producer.workflow(workflow.id) or summary
    _print(summary)
    if args.wait and summary.get("state") != "completed":
        return EXIT_FAILED
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from producers.api import Producer

    summary = Producer().workflow(args.workflow_id)
    if summary is None:
        print(f"error: no workflow {args.workflow_id}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print(summary)
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    from producers.api import Producer

    producer = Producer()
    try:
        canceled = producer.cancel_workflow(args.workflow_id, by="from the command line")
    except KeyError:
        print(f"error: no workflow {args.workflow_id}", file=sys.stderr)
        return EXIT_FAILED
    print(f"workflow {args.workflow_id}: {len(canceled)} job(s) not yet submitted canceled")
    return EXIT_OK


def register(commands: Any) -> None:
    workflow = commands.add_parser("workflow", help="create, show or cancel a workflow (a graph of jobs)")
    sub = workflow.add_subparsers(dest="workflow_command", required=True)
    submit = sub.add_parser("submit", help="create the workflow a JSON or YAML file describes")
    submit.add_argument("file", type=Path, help='{"nodes": [{"name": ..., "model": ..., "parent": ...}, ...]}')
    submit.add_argument("--wait", action="store_true", help="wait for it to end (exit 1 unless it completed)")
    submit.add_argument("--timeout", type=float, default=600.0, help="longest wait in seconds (default 600)")
    submit.set_defaults(handler=_cmd_submit)
    show = sub.add_parser("show", help="a workflow's state and each node's")
    show.add_argument("workflow_id")
    show.add_argument("--json", action="store_true", help="as JSON")
    show.set_defaults(handler=_cmd_show)
    cancel = sub.add_parser("cancel", help="cancel every node not yet submitted")
    cancel.add_argument("workflow_id")
    cancel.set_defaults(handler=_cmd_cancel)
