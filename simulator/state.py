"""The simulator's logic, free of HTTP: accounts, tasks, quotas, credits and stats.

Every method takes the time from the injected ``clock`` (wall seconds) so unit tests can drive
it by hand. Errors are raised as :class:`ApiError`; the HTTP layer turns them into answers.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from simulator import introspection
from simulator.accounts import Account, Upload, key_id
from simulator.clips import PALETTE
from simulator.errors import ApiError
from simulator.faults import Faults, parse_force_status
from simulator.files import FILE_PATH_RE, UrlSigner
from simulator.models import MODELS, Parent, price
from simulator.options import (
    UNLIMITED_CREDITS,
    UNLIMITED_CREDITS_REPORTED,
    SimOptions,
    apply_overrides,
    validate_credits,
)
from simulator.quota import InProgressSet
from simulator.stats import Stats
from simulator.tasks import Task, TaskState
from simulator.validation import validate_create

#: Paths in the file store: plain segments only.
UPLOAD_PATH_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
#: The largest file the store takes.
UPLOAD_MAX_BYTES = 100 * 1024 * 1024

MODERATION_FAIL_CODE = "content_moderation"
INTERNAL_FAIL_CODE = "500"


class SimState:
    def __init__(self, options: SimOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self.rng = random.Random(options.seed)
        secret = self.rng.getrandbits(256).to_bytes(32, "big")
        self.signer = UrlSigner(secret)
        self.base_url = options.result_base_url or f"http://{options.host}:{options.port}"
        self.faults = Faults()
        self.accounts: dict[str, Account] = {}
        self.tasks: dict[str, Task] = {}
        self.stats = Stats()
        self.in_progress = InProgressSet()
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget tasks and stats, restore credits, clear fault rules."""
        self.tasks = {}
        self.stats = Stats()
        self.in_progress = InProgressSet()
        self.faults = Faults()
        self.accounts = {
            key: Account(key_id=key_id(key), credits=self.options.credits) for key in self.options.api_keys
        }
        for account in self.accounts.values():
            self.stats.key(account.key_id)

    def configure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply run-time changes atomically (all or none); raises ValueError on a bad field."""
        rules = parse_force_status(changes["force_status"]) if "force_status" in changes else None
        apply_overrides(self.options, changes)
        if "credits" in changes:
            credits = validate_credits(changes["credits"])
            if isinstance(credits, dict):
                by_id = {account.key_id: account for account in self.accounts.values()}
                unknown = sorted(set(credits) - set(by_id))
                if unknown:
                    raise ValueError(f"credits: no key with id {unknown[0]!r}")
                for key, balance in credits.items():
                    by_id[key].credits = balance
            else:
                self.options.credits = credits
                for account in self.accounts.values():
                    account.credits = credits
        if rules is not None:
            self.faults.rules = rules
        return self.effective_config()

    def effective_config(self) -> dict[str, Any]:
        out = self.options.public()
        out["force_status"] = [r.public() for r in self.faults.rules]
        out["credits_left"] = {a.key_id: a.credits for a in self.accounts.values()}
        return out

    # -- request gates -----------------------------------------------------------------------

    def check_maintenance(self) -> None:
        if self.options.maintenance:
            raise ApiError(455, "service is under maintenance, please try again later")

    def authenticate(self, authorization: str | None) -> Account:
        scheme, _, token = (authorization or "").partition(" ")
        account = self.accounts.get(token.strip()) if scheme.lower() == "bearer" else None
        if account is None:
            raise ApiError(401, "unauthorized: missing or invalid API key")
        return account

    # -- API operations ----------------------------------------------------------------------

    def create_task(self, account: Account, body: Any) -> Task:
        """Validate (422), charge (402), admit (429) and record a new task."""
        now = self.clock()
        opts = self.options
        if opts.create_rate > 0:
            # kie.ai's account-wide cap on new generation requests, counted as they arrive.
            rate_window = opts.wall(opts.create_rate_window_s)
            if account.create_requests.count(now, rate_window) >= opts.create_rate:
                wait = account.create_requests.seconds_until_free(now, rate_window)
                raise ApiError(
                    429,
                    f"rate limited: {opts.create_rate} generation requests per {opts.create_rate_window_s:g} s",
                    retry_after_s=_retry_after(wait),
                )
            account.create_requests.record(now)
        req = validate_create(body, self._parent_finder(account), self._image_checker(account))
        model, checked = req.model, req.checked
        cost = price(model.name, checked)
        if account.credits != UNLIMITED_CREDITS and account.credits < cost:
            raise ApiError(402, f"insufficient credits: this task costs {cost:g}, the balance is {account.credits:g}")
        pool = account.pools[model.pool]
        in_progress_limit, window_limit = self.limits(model.pool)
        window_wall = opts.wall(opts.window_s)
        if pool.in_progress.count(now) >= in_progress_limit:
            wait = pool.in_progress.seconds_until_free(now)
            raise ApiError(
                429,
                f"rate limited: too many {model.pool} tasks in progress (limit {in_progress_limit})",
                retry_after_s=_retry_after(wait),
            )
        if pool.window.count(now, window_wall) >= window_limit:
            wait = pool.window.seconds_until_free(now, window_wall)
            raise ApiError(
                429,
                f"rate limited: {window_limit} {model.pool} creations per {opts.window_s:g} s window",
                retry_after_s=_retry_after(wait),
            )

        lo, hi = opts.gen_times.get(model.pool, opts.gen_time if model.pool == "text-to-video" else model.gen_time)
        gen_s = self.rng.uniform(lo, hi)
        fails = self.rng.random() < opts.fail_rate
        task_id = f"{self.rng.getrandbits(128):032x}"
        while task_id in self.tasks:
            task_id = f"{self.rng.getrandbits(128):032x}"
        fail_code, fail_msg = "", ""
        lowered = req.prompt.lower()
        word = next((w for w in opts.moderation_words if w in lowered), None)
        if word is not None:
            fail_code = MODERATION_FAIL_CODE
            fail_msg = f"prompt rejected by content moderation (matched {word!r})"
        elif fails:
            fail_code, fail_msg = INTERNAL_FAIL_CODE, "internal error"

        parent = self.tasks.get(checked.parent.task_id) if checked.parent else None
        aspect_ratio = parent.aspect_ratio if parent is not None else checked.aspect_ratio
        images = opts.images_per_task if model.pool == "text-to-image" else 1
        task = Task(
            task_id=task_id,
            key_id=account.key_id,
            model=model.name,
            param=req.body,
            callback_url=req.callback_url,
            created_at=now,
            complete_at=now + opts.wall(gen_s),
            cost_ms=round(gen_s * 1000),
            credits=cost,
            report_credits=opts.report_credits,
            video_bytes=opts.video_bytes if checked.kind == "video" else 0,
            aspect_ratio=aspect_ratio,
            mode=checked.mode,
            pool=model.pool,
            kind=checked.kind,
            resolution=checked.resolution,
            duration_s=checked.duration_s + (parent.duration_s if model.pool == "extend" and parent else 0),
            outputs=images,
            image_format="jpeg" if model.pool == "image-to-image" else "png",
            colour=parent.colour if parent is not None else int(task_id[:8], 16) % len(PALETTE),
            url_ttl_wall_s=opts.wall(opts.url_ttl_s),
            fail_code=fail_code,
            fail_msg=fail_msg,
            callback_status="scheduled" if req.callback_url else "none",
        )
        self.tasks[task_id] = task
        if account.credits != UNLIMITED_CREDITS:
            account.credits = round(account.credits - cost, 2)
        spender = self.stats.key(account.key_id)
        spender.credits_spent = round(spender.credits_spent + cost, 2)
        pool.window.record(now)
        pool.in_progress.add(task.complete_at, task_id)
        self.in_progress.add(task.complete_at, task_id)

        ks = self.stats.key(account.key_id)
        ks.created += 1
        self.stats.created += 1
        ps = ks.pool(model.pool)
        ps.created += 1
        ps.peak_in_progress = max(ps.peak_in_progress, pool.in_progress.count(now))
        ps.max_creations_in_window = max(ps.max_creations_in_window, pool.window.count(now, window_wall))
        if opts.create_rate > 0:
            requests = account.create_requests.count(now, opts.wall(opts.create_rate_window_s))
            ks.max_create_requests_in_window = max(ks.max_create_requests_in_window, requests)
        if model.pool == "text-to-video":
            ks.peak_in_progress = max(ks.peak_in_progress, pool.in_progress.count(now))
            ks.max_creations_in_window = max(ks.max_creations_in_window, pool.window.count(now, window_wall))
        self.stats.peak_in_progress = max(self.stats.peak_in_progress, self.in_progress.count(now))
        return task

    def limits(self, pool: str) -> tuple[int, int]:
        """The pool's (in progress, creations per window) per key."""
        if pool == "text-to-video":
            return self.options.max_in_progress, self.options.max_per_window
        model = next(m for m in MODELS.values() if m.pool == pool)
        chosen = self.options.pool_limits.get(pool)
        return (chosen[0], chosen[1]) if chosen else (model.in_progress, model.per_window)

    def _parent_finder(self, account: Account) -> Callable[[str, str], Parent]:
        def find(field_name: str, task_id: str) -> Parent:
            task = self.tasks.get(task_id)
            if task is None or task.key_id != account.key_id:
                raise ApiError(422, f"{field_name}: no task {task_id} of this account")
            if task.state_at(self.clock()) is not TaskState.SUCCESS:
                raise ApiError(422, f"{field_name}: task {task_id} has not succeeded")
            kind: Literal["video", "image"] = "video" if task.kind == "video" else "image"
            return Parent(task_id=task_id, model=task.model, kind=kind, outputs=task.outputs)

        return find

    def _image_checker(self, account: Account) -> Callable[[str, str], None]:
        """Our own file store's URLs must name a file still there; other URLs are taken on trust."""

        def check(field_name: str, url: str) -> None:
            prefix = f"{self.base_url}/uploads/{account.key_id}/"
            if not url.startswith(prefix):
                return
            upload = account.uploads.get(url.removeprefix(prefix))
            if upload is None or self._upload_expired(upload):
                raise ApiError(422, f"{field_name}: the file could not be fetched (404: not found or expired)")
            if not upload.mime_type.startswith("image/"):
                raise ApiError(422, f"{field_name}: not an image ({upload.mime_type})")

        return check

    def _upload_expired(self, upload: Upload) -> bool:
        return self.clock() - upload.uploaded_at >= self.options.wall(self.options.upload_ttl_s)

    # -- the file store ---------------------------------------------------------------------------

    def upload(self, account: Account, data: bytes, upload_path: str, file_name: str, mime_type: str) -> dict[str, Any]:
        """Keep ``data`` as ``upload_path/file_name`` (the same name overwrites) for ``upload_ttl_s``."""
        path = "/".join(part for part in (upload_path.strip("/"), file_name) if part)
        if not path or ".." in path.split("/") or not UPLOAD_PATH_RE.match(path):
            raise ApiError(400, "uploadPath and fileName must be plain path segments ([A-Za-z0-9._-])")
        if len(data) > UPLOAD_MAX_BYTES:
            raise ApiError(400, f"file too large (at most {UPLOAD_MAX_BYTES} bytes)")
        now = self.clock()
        account.uploads[path] = Upload(data=data, mime_type=mime_type, uploaded_at=now)
        ks = self.stats.key(account.key_id)
        ks.uploads += 1
        self.stats.uploads += 1
        url = f"{self.base_url}/uploads/{account.key_id}/{path}"
        return {
            "fileName": file_name,
            "filePath": path,
            "downloadUrl": url,
            "fileSize": len(data),
            "mimeType": mime_type,
            "uploadedAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now)),
        }

    def uploaded_file(self, key_id: str, path: str) -> Upload:
        account = next((a for a in self.accounts.values() if a.key_id == key_id), None)
        upload = account.uploads.get(path) if account else None
        if upload is None or self._upload_expired(upload):
            raise ApiError(404, "file not found")
        return upload

    def record_info(self, account: Account, task_id: str | None) -> dict[str, Any]:
        if not task_id:
            raise ApiError(422, "taskId is required")
        self._admit_record_info(account)
        self.stats.record_info_calls += 1
        self.stats.key(account.key_id).record_info_calls += 1
        task = self.tasks.get(task_id)
        if task is None or task.key_id != account.key_id:
            raise ApiError(404, f"task not found: {task_id}")
        task.record_info_calls += 1
        self.stats.record_info_per_task[task_id] += 1
        now = self.clock()
        return task.record(now, self.result_urls(task, now))

    def _admit_record_info(self, account: Account) -> None:
        """The upstream's "10 recordInfo per second per key", counted over every rolling second."""
        now = self.clock()
        second = self.options.wall(1.0)
        ks = self.stats.key(account.key_id)
        account.record_info_arrived.record(now)
        ks.max_record_info_per_s = max(ks.max_record_info_per_s, account.record_info_arrived.count(now, second))
        limit = self.options.record_info_per_s
        if limit > 0 and account.record_info_answered.count(now, second) >= limit:
            ks.record_info_rate_limited += 1
            wait = account.record_info_answered.seconds_until_free(now, second)
            raise ApiError(
                429, f"rate limited: {limit:g} recordInfo calls per second", retry_after_s=_retry_after(wait)
            )
        account.record_info_answered.record(now)

    def result_urls(self, task: Task, now: float) -> list[str]:
        if task.state_at(now) is not TaskState.SUCCESS:
            return []
        return [
            self.base_url + self.signer.path(task.task_id, task.url_expires_at, index, task.extension)
            for index in range(task.outputs)
        ]

    def download_url(self, account: Account, body: Any) -> str:
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            raise ApiError(422, "url is required")
        match = FILE_PATH_RE.match(urlsplit(url).path)
        task = self.tasks.get(match["task_id"]) if match else None
        now = self.clock()
        if (
            match is None
            or task is None
            or task.key_id != account.key_id
            or task.state_at(now) is not TaskState.SUCCESS
            or self.signer.check(task.task_id, match["token"], now) == "invalid"
        ):
            raise ApiError(404, "file not found")
        self.stats.download_urls_issued += 1
        expires_at = now + self.options.wall(self.options.download_url_ttl_s)
        index = int(match["index"] or 0)
        return self.base_url + self.signer.path(task.task_id, expires_at, index, task.extension)

    def credit(self, account: Account) -> float:
        return UNLIMITED_CREDITS_REPORTED if account.credits == UNLIMITED_CREDITS else account.credits

    def file_for(self, task_id: str, token: str) -> Task:
        """The task whose result ``token`` grants; 404 unknown, 403 expired."""
        task = self.tasks.get(task_id)
        now = self.clock()
        if task is None or task.state_at(now) is not TaskState.SUCCESS:
            raise ApiError(404, "file not found")
        verdict = self.signer.check(task_id, token, now)
        if verdict == "invalid":
            raise ApiError(404, "file not found")
        if verdict == "expired":
            raise ApiError(403, "link expired")
        return task

    # -- introspection -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters, peaks and per-key state (``GET /__sim__/stats``)."""
        return introspection.snapshot(self)

    def task_list(self) -> list[dict[str, Any]]:
        """Every task with its state now (``GET /__sim__/tasks``)."""
        return introspection.task_list(self)


def _retry_after(wall_s: float) -> int:
    return max(1, math.ceil(wall_s))
