"""The Apikley market API: the client (:mod:`.client`) and how its answers are read (:mod:`.answers`)."""

from workers.upstream.client import (
    TaskRecord,
    TaskState,
    UpstreamClient,
    build_session,
)

__all__ = ["TaskRecord", "TaskState", "UpstreamClient", "build_session"]
