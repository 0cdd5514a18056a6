"""``GET /v1/events``: the events stream as server-sent events (bearer token required, as the jobs API).

A principal may hold ``max_event_streams`` streams open at once, across every web replica (429 past it).
A principal gets the events of its own jobs (an admin every event, ``batch.completed`` included),
filtered by ``batch`` and/or ``job``. Each event's SSE ``id`` is its stream id: a client that reconnects
with ``Last-Event-ID`` (browsers' EventSource does it by itself) or ``?after=`` gets every event after it,
and an ``events-lost`` event first if some were trimmed from the stream in between. Without either it
starts with the next event. A comment line is sent every few seconds while nothing happens, so proxies
keep the connection and a dead client is noticed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from core.clients import async_redis_client
from core.events import EVENT_ID_PATTERN, EVENTS_LOST, Event, older
from core.jobs import KEY_MAX_CHARS, Job
from producers.web.context import Caller, WebDep
from producers.web.models import AUTH_ERRORS, JobView, Problem
from producers.web.principals import StreamLeases

router = APIRouter()
#: How long one read waits for new entries before a keep-alive comment (and a look at the client).
BLOCK_MS = 5000
#: A stream's place among its principal's open streams lasts this long unless renewed (every read): a web
#: that died without closing its streams gives their places back within it.
STREAM_LEASE_S = 30.0


@router.get(
    "/v1/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"},
        **AUTH_ERRORS,
        429: {"model": Problem, "description": "The principal has max_event_streams streams open (Retry-After)"},
    },
    response_class=StreamingResponse,
    summary="The events of jobs that ended and batches done, as server-sent events",
)
async def events(
    request: Request,
    web: WebDep,
    caller: Caller,
    batch: Annotated[str | None, Query(min_length=1, max_length=KEY_MAX_CHARS)] = None,
    job: Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    after: Annotated[str | None, Query(pattern=EVENT_ID_PATTERN, description="resume after this event id")] = None,
    # A plain string (empty: none): a header is never null, so the schema must not offer null.
    last_event_id: Annotated[str, Header(alias="Last-Event-ID", max_length=42, pattern=EVENT_ID_PATTERN)] = "",
) -> StreamingResponse:
    start = last_event_id or after
    owner = None if caller.admin else caller.name
    client = async_redis_client(web.settings)
    key = web.keys.events()
    leases = StreamLeases(client, web.keys, ttl_s=STREAM_LEASE_S)
    stream_id = uuid.uuid4().hex
    try:
        await leases.open(caller, stream_id)  # a principal's open streams are capped (429 past it)
    except BaseException:
        await client.aclose()
        raise

    async def stream() -> AsyncIterator[str]:
        try:
            cursor = start
            if cursor is None:
                newest = await client.xrevrange(key, count=1)
                cursor = newest[0][0] if newest else "0-0"
            else:
                # Entries leave the stream only by trimming, once it is full: a cursor before the oldest
                # entry of a full stream may have missed some (Redis 6.2 does not say which were trimmed).
                oldest = await client.xrange(key, count=1)
                full = await client.xlen(key) >= web.settings.events_max_len
                if oldest and full and older(cursor, oldest[0][0]):
                    lost = {"after": cursor, "oldest_kept": oldest[0][0]}
                    yield f"event: {EVENTS_LOST}\ndata: {json.dumps(lost)}\n\n"
            yield "retry: 3000\n: connected\n\n"
            while not await request.is_disconnected():
                await leases.renew(caller, stream_id)
                reply = await client.xread({key: cursor}, count=200, block=BLOCK_MS)
                if not reply:
                    yield ": keep-alive\n\n"
                    continue
                for _, entries in reply:
                    for entry_id, fields in entries:
                        cursor = entry_id
                        event = Event.of(entry_id, fields)
                        if event.matches(batch=batch, job=job, owner=owner):
                            yield await _message(client, web.keys.job, event)
        finally:
            # A client that goes away cancels this generator: the cleanup must still run to its end.
            with anyio.CancelScope(shield=True):
                await leases.close(caller, stream_id)
                await client.aclose()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _message(client: aioredis.Redis, job_key: Any, event: Event) -> str:
    data = event.to_dict()
    if event.job_id is not None:
        record: dict[str, str] = await client.hgetall(job_key(event.job_id))  # type: ignore[misc]
        data["job"] = JobView.of(Job.from_hash(record)).model_dump(mode="json") if record else None
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
