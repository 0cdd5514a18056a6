"""The Apikley market API: the client (:mod:`.client`), how its answers are read (:mod:`.answers`) and
what it says about a task (:mod:`.records`)."""

from workers.upstream.client import UpstreamClient, build_session
from workers.upstream.records import TaskRecord, TaskState

__all__ = ["TaskRecord", "TaskState", "UpstreamClient", "build_session"]
