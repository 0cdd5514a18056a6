"""HTTP routes: the upstream API under /api/v1, result files under /files, controls under /__sim__."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from simulator.accounts import Account
from simulator.callbacks import CallbackSender
from simulator.clips import ClipCache, ClipKind, ImageKind
from simulator.errors import REASONS, ApiError
from simulator.files import CHUNK_BYTES, FILE_PATH_RE, expected_sha256, iter_chunks
from simulator.state import UPLOAD_MAX_BYTES, SimState
from simulator.tasks import Task

STATE: web.AppKey[SimState] = web.AppKey("state", SimState)
CALLBACKS: web.AppKey[CallbackSender] = web.AppKey("callbacks", CallbackSender)
CLIPS: web.AppKey[ClipCache] = web.AppKey("clips", ClipCache)

ApiHandler = Callable[[web.Request, SimState, Account], Awaitable[Any]]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def error_response(state: SimState, err: ApiError) -> web.Response:
    """The upstream's error answer in the configured style (``Retry-After`` on 429 in both)."""
    status, reason = 200, "OK"
    if state.options.error_style == "http" and err.code >= 400:
        status, reason = err.code, REASONS.get(err.code, "Error")
    headers = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(err.retry_after_s)
    return web.json_response(
        {"code": err.code, "msg": err.msg, "data": None},
        status=status,
        reason=reason,
        headers=headers,
        dumps=_dumps,
    )


async def _delay(state: SimState) -> None:
    if state.options.delay_s > 0:
        await asyncio.sleep(state.options.delay_s)


def api(endpoint: str, handler: ApiHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap ``handler`` with the gates every API call goes through, in upstream order:
    forced fault → maintenance (455) → auth (401) → the handler (422/402/429/...) → delay.

    The ``delay_s`` fault slows the *answer*: the work is done first, so a client that times out
    has still created its task — exactly the unknown-outcome case clients must handle."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        if endpoint == "createTask":
            state.stats.create_calls += 1
        account: Account | None = None
        try:
            forced = state.faults.take(endpoint)
            if forced is not None:
                state.stats.forced_errors += 1
                raise ApiError(forced.code, forced.msg, forced.retry_after_s)
            state.check_maintenance()
            account = state.authenticate(request.headers.get("Authorization"))
            data = await handler(request, state, account)
        except ApiError as err:
            state.stats.error(err.code, account.key_id if account else None)
            await _delay(state)
            return error_response(state, err)
        await _delay(state)
        return web.json_response({"code": 200, "msg": "success", "data": data}, dumps=_dumps)

    return wrapped


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(422, "request body must be valid JSON") from e


async def create_task(request: web.Request, state: SimState, account: Account) -> Any:
    state.stats.key(account.key_id).create_calls += 1
    task = state.create_task(account, await _json_body(request))
    if task.callback_url is not None:
        request.app[CALLBACKS].schedule(task)
    return {"taskId": task.task_id}


async def record_info(request: web.Request, state: SimState, account: Account) -> Any:
    return state.record_info(account, request.query.get("taskId"))


async def download_url(request: web.Request, state: SimState, account: Account) -> Any:
    return state.download_url(account, await _json_body(request))


async def credit(request: web.Request, state: SimState, account: Account) -> Any:
    return state.credit(account)


async def serve_file(request: web.Request) -> web.StreamResponse:
    """Stream a result file chunk by chunk; HEAD answers the headers only."""
    state = request.app[STATE]
    task_id = request.match_info["task_id"]
    name = request.match_info["name"]
    try:
        if state.options.delay_s > 0:
            await asyncio.sleep(state.options.delay_s)
        forced = state.faults.take("files")
        if forced is not None:
            state.stats.forced_errors += 1
            raise ApiError(forced.code, forced.msg)
        match = FILE_PATH_RE.match(f"/files/{task_id}/{name}")
        if match is None:
            raise ApiError(404, "file not found")
        task = state.file_for(task_id, match["token"])
        index = int(match["index"] or 0)
        if index >= task.outputs or match["ext"] != task.extension:
            raise ApiError(404, "file not found")
    except ApiError as err:
        state.stats.error(err.code, None)
        return web.Response(status=err.code, reason=REASONS.get(err.code, "Error"), text=err.msg)
    resp = web.StreamResponse(headers={"Content-Type": task.content_type, "Accept-Ranges": "none"})
    clip = None if task.video_bytes else await request.app[CLIPS].get(file_kind(task, index))
    resp.content_length = len(clip.data) if clip else task.video_bytes
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    state.stats.downloads += 1
    chunks = _slices(clip.data, CHUNK_BYTES) if clip else iter_chunks(task.task_id, task.video_bytes, CHUNK_BYTES)
    for chunk in chunks:
        await resp.write(chunk)
        state.stats.bytes_served += len(chunk)
        if state.options.file_rate_bytes_per_s > 0:
            await asyncio.sleep(len(chunk) / state.options.file_rate_bytes_per_s)
    await resp.write_eof()
    return resp


def file_kind(task: Task, index: int) -> ClipKind | ImageKind:
    """What output ``index`` of ``task`` shows."""
    if task.kind == "video":
        words = " ".join(str((task.param.get("input") or {}).get("prompt") or "").split()[:6])
        label = f"{words[:48]}  ·  task {task.task_id[:8]}".strip(" ·")
        return ClipKind(task.aspect_ratio, task.mode, task.resolution, task.duration_s, task.colour, label)
    return ImageKind(task.aspect_ratio, task.resolution, task.image_format, index, task.colour)


# -- the file store (uploads for image inputs) ---------------------------------------------------


async def upload_stream(request: web.Request, state: SimState, account: Account) -> Any:
    """``POST /file-upload/api/file-stream-upload``: multipart ``file``, ``uploadPath``, ``fileName``."""
    try:
        form = await request.post()
    except ValueError as error:
        raise ApiError(400, f"multipart body expected: {error}") from None
    part = form.get("file")
    if not isinstance(part, web.FileField):
        raise ApiError(400, "file is required (a multipart file part)")
    data = part.file.read()
    file_name = str(form.get("fileName") or part.filename or "")
    mime = part.content_type or "application/octet-stream"
    return state.upload(account, data, str(form.get("uploadPath") or ""), file_name, mime)


async def upload_base64(request: web.Request, state: SimState, account: Account) -> Any:
    """``POST /file-upload/api/file-base64-upload``: ``base64Data`` (plain or a data URL), ``uploadPath``,
    ``fileName``."""
    body = await _json_body(request)
    raw = body.get("base64Data") if isinstance(body, dict) else None
    if not isinstance(raw, str) or not raw:
        raise ApiError(400, "base64Data is required")
    mime = "application/octet-stream"
    if raw.startswith("data:"):
        header, _, raw = raw.partition(",")
        mime = header.removeprefix("data:").split(";")[0] or mime
    try:
        data = base64.b64decode(raw, validate=True)
    except ValueError:
        raise ApiError(400, "base64Data is not valid base64") from None
    return state.upload(account, data, str(body.get("uploadPath") or ""), str(body.get("fileName") or ""), mime)


async def serve_upload(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        upload = state.uploaded_file(request.match_info["key_id"], request.match_info["path"])
    except ApiError as err:
        return web.Response(status=err.code, text=err.msg)
    return web.Response(body=upload.data, content_type=upload.mime_type)


# -- /__sim__ controls (no auth: local test tooling only) ------------------------------------


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot(), dumps=_dumps)


async def sim_tasks(request: web.Request) -> web.Response:
    return web.json_response({"tasks": request.app[STATE].task_list()}, dumps=_dumps)


async def sim_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return web.json_response({"ok": True, "config": state.effective_config()}, dumps=_dumps)


async def sim_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "GET":
        return web.json_response(state.effective_config(), dumps=_dumps)
    try:
        changes = json.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object")
        config = state.configure(changes)
    except ValueError as e:
        return web.json_response({"ok": False, "error": str(e)}, status=422, dumps=_dumps)
    return web.json_response(config, dumps=_dumps)


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    return (data[start : start + size] for start in range(0, len(data), size))


async def sim_file_sha256(request: web.Request) -> web.Response:
    state = request.app[STATE]
    task_id = request.match_info["task_id"]
    task = state.tasks.get(task_id)
    if task is not None and not task.video_bytes and "size" not in request.query:
        index = int(request.query.get("index", "0")) if request.query.get("index", "0").isdigit() else 0
        clip = await request.app[CLIPS].get(file_kind(task, index))
        return web.json_response({"taskId": task_id, "size": len(clip.data), "sha256": clip.sha256}, dumps=_dumps)
    try:
        size = int(request.query.get("size", task.video_bytes if task else state.options.video_bytes))
    except ValueError:
        return web.json_response({"ok": False, "error": "size must be an integer"}, status=422)
    return web.json_response({"taskId": task_id, "size": size, "sha256": expected_sha256(task_id, size)}, dumps=_dumps)


def build_app(state: SimState) -> web.Application:
    app = web.Application(client_max_size=UPLOAD_MAX_BYTES + 1024 * 1024)
    app[STATE] = state
    sender = CallbackSender(state)
    app[CALLBACKS] = sender
    app[CLIPS] = ClipCache()

    async def callbacks_ctx(_: web.Application) -> Any:
        await sender.start()
        yield
        await sender.close()

    app.cleanup_ctx.append(callbacks_ctx)
    app.router.add_post("/api/v1/jobs/createTask", api("createTask", create_task))
    app.router.add_get("/api/v1/jobs/recordInfo", api("recordInfo", record_info))
    app.router.add_post("/api/v1/common/download-url", api("download-url", download_url))
    app.router.add_get("/api/v1/chat/credit", api("credit", credit))
    app.router.add_get("/files/{task_id}/{name}", serve_file)
    app.router.add_post("/file-upload/api/file-stream-upload", api("upload", upload_stream))
    app.router.add_post("/file-upload/api/file-base64-upload", api("upload", upload_base64))
    app.router.add_get("/uploads/{key_id}/{path:.+}", serve_upload)
    if state.options.admin:  # the task list shows every callback URL, per-job secrets included
        app.router.add_get("/__sim__/stats", sim_stats)
        app.router.add_get("/__sim__/tasks", sim_tasks)
        app.router.add_post("/__sim__/reset", sim_reset)
        app.router.add_route("GET", "/__sim__/config", sim_config)
        app.router.add_route("POST", "/__sim__/config", sim_config)
        app.router.add_get("/__sim__/files/{task_id}/sha256", sim_file_sha256)
    return app
